//! Calls handed over together by the JS layer: the `checkQuota`, `recordUpload`, `reserveUpload`,
//! `commitUpload` or `recordDeletion` calls an app made in one turn of the event loop arrive as
//! one napi call (one hand-over to this runtime and one promise settled for all, instead of one
//! of each per call) and join the batches of
//! `batch::Batcher` together. Each call is still decided and answered on its own, exactly as
//! alone: the same arguments checks, the same batches, the same statements.

use super::*;
use crate::quota::deletions::Released;

/// One `reserveUpload` call (not presigned) of a batch handed over together.
pub struct ReserveCall {
  pub user_id: String,
  pub project_id: String,
  pub bytes: f64,
  pub ttl_ms: Option<f64>,
  pub reservation_id: Option<String>,
}

/// One `commitUpload` call of a batch handed over together.
pub struct CommitCall {
  pub user_id: String,
  pub reservation_id: String,
  pub actual_bytes: Option<f64>,
}

/// One `recordDeletion` call of a batch handed over together.
pub struct DeletionCall {
  pub user_id: String,
  pub project_id: String,
  pub bytes: Option<f64>,
  pub upload_id: Option<String>,
  pub deletion_id: Option<String>,
}

/// One `recordUpload` call of a batch handed over together.
pub struct RecordCall {
  pub user_id: String,
  pub project_id: String,
  pub bytes: f64,
  pub upload_id: Option<String>,
  pub replaces_bytes: Option<f64>,
}

impl Client {
  /// `check_quota` for several calls at once (the JS layer's batch of one event-loop turn): their
  /// usages read in one statement with any other reads queued, each answered on its own. A call
  /// whose arguments are bad gets its error and is not read.
  pub async fn check_quota_many(&self, calls: &[(String, Vec<f64>)]) -> Vec<Result<QuotaCheck>> {
    hand_over(
      calls,
      |(user_id, sizes)| {
        let checked = check_arguments(user_id, sizes)?;
        Ok(batching_enabled().then_some(checked))
      },
      |checks: Vec<(UserId, Vec<i64>)>| async move {
        let users = checks.iter().map(|(u, _)| u.as_str().to_owned()).collect();
        let read = self.read_usages_together(users).await?;
        Ok(
          read
            .into_iter()
            .zip(checks)
            .map(|(usage, (user, sizes))| usage.map(|usage| (usage, user, sizes)))
            .collect(),
        )
      },
      |_, answer| async move {
        let (usage, user, sizes) = answer?;
        let usage = match usage {
          Some(usage) => usage,
          None => self.unseeded_usage(&user).await?,
        };
        Ok(usage::decide_check(usage, &sizes, self.mode_for(&user)))
      },
      |(user_id, sizes)| self.check_quota(user_id, sizes),
    )
    .await
  }

  /// `record` for several calls at once (the JS layer's batch of one event-loop turn): plain
  /// uploads in enforce mode go to the upload batches together; the others (overwrites, `shadow`
  /// and `off` users) take their own path at the same time. One answer per call, in order.
  pub async fn record_many(&self, calls: &[RecordCall]) -> Vec<Result<Uploaded>> {
    hand_over(
      calls,
      |c| {
        if c.replaces_bytes.is_some() || !batching_enabled() {
          return Ok(None);
        }
        let upload = upload_of(&c.user_id, &c.project_id, c.bytes, c.upload_id.as_deref())?;
        Ok((self.mode_for(&upload.user) == Mode::Enforce).then_some(upload))
      },
      |uploads| self.uploads_together(uploads),
      |_, answer| async move { answer.map(Uploaded::from) },
      |c| {
        self.record(
          &c.user_id,
          &c.project_id,
          c.bytes,
          c.upload_id.as_deref(),
          c.replaces_bytes,
        )
      },
    )
    .await
  }

  /// `record_deletion` for several calls at once: they join the deletion batches together (every
  /// mode: releases are made in all of them). One answer per call, in order.
  pub async fn record_deletion_many(&self, calls: &[DeletionCall]) -> Vec<Result<Released>> {
    hand_over(
      calls,
      |c| {
        if !batching_enabled() {
          return Ok(None);
        }
        let deletion = lifecycle::deletion_of(
          &c.user_id,
          &c.project_id,
          c.bytes,
          c.upload_id.as_deref(),
          c.deletion_id.as_deref(),
        )?;
        Ok(Some(deletion))
      },
      |deletions| self.release_together(deletions),
      |_, answer| async move { answer },
      |c| {
        self.record_deletion(
          &c.user_id,
          &c.project_id,
          c.bytes,
          c.upload_id.as_deref(),
          c.deletion_id.as_deref(),
        )
      },
    )
    .await
  }

  /// `reserve_upload` for several calls at once, as `record_many`: enforce-mode reservations
  /// join the reservation batches together, the others take their own path.
  pub async fn reserve_many(&self, calls: &[ReserveCall]) -> Vec<Result<Reservation>> {
    hand_over(
      calls,
      |c| {
        if !batching_enabled() {
          return Ok(None);
        }
        let args = self.reserve_args(
          &c.user_id,
          &c.project_id,
          c.bytes,
          c.ttl_ms,
          c.reservation_id.as_deref(),
        )?;
        let enforce = self.mode_for(&args.user) == Mode::Enforce;
        Ok(enforce.then(|| args.batched()))
      },
      |reserves| self.reserves_together(reserves),
      |_, answer| async move { answer },
      |c| {
        self.reserve_upload(
          &c.user_id,
          &c.project_id,
          c.bytes,
          c.ttl_ms,
          c.reservation_id.as_deref(),
        )
      },
    )
    .await
  }

  /// `commit_upload` for several calls at once, as `record_many`: enforce-mode commits join the
  /// commit batches together; a presigned upload's commit (left by the batch) then takes its own
  /// path, as do `shadow` and `off` users' commits.
  pub async fn commit_many(&self, calls: &[CommitCall]) -> Vec<Result<Settled>> {
    hand_over(
      calls,
      |c| {
        if !batching_enabled() {
          return Ok(None);
        }
        let commit = lifecycle::commit_of(&c.user_id, &c.reservation_id, c.actual_bytes)?;
        let enforce = self.mode_for(&commit.owner) == Mode::Enforce;
        Ok(enforce.then_some(commit))
      },
      |commits| self.commits_together(commits),
      |c, answer| async move {
        match answer? {
          Some(settled) => Ok(settled),
          None => {
            self
              .commit_upload(&c.user_id, &c.reservation_id, c.actual_bytes)
              .await
          }
        }
      },
      |c| self.commit_upload(&c.user_id, &c.reservation_id, c.actual_bytes),
    )
    .await
  }
}

/// Hands a batch of calls of one kind over: `prepare` gives each call's batch request
/// (`Ok(None)`: the call takes its own path, `alone`; `Err`: its answer), `batch` sends the
/// requests together (one answer each, in order; `Err` answers them all), `finish` turns a batch
/// answer into the call's. The batch and the calls on their own paths run at the same time. One
/// answer per call, in order.
async fn hand_over<'a, C, Req, Resp, Out, B, BFut, F, FFut, A, AFut>(
  calls: &'a [C],
  prepare: impl Fn(&'a C) -> Result<Option<Req>>,
  batch: B,
  finish: F,
  alone: A,
) -> Vec<Result<Out>>
where
  B: FnOnce(Vec<Req>) -> BFut,
  BFut: std::future::Future<Output = Result<Vec<Result<Resp>>>>,
  F: Fn(&'a C, Result<Resp>) -> FFut,
  FFut: std::future::Future<Output = Result<Out>>,
  A: Fn(&'a C) -> AFut,
  AFut: std::future::Future<Output = Result<Out>>,
{
  let mut answers: Vec<Option<Result<Out>>> = Vec::with_capacity(calls.len());
  let (mut together, mut at, mut own) = (Vec::new(), Vec::new(), Vec::new());
  for (i, call) in calls.iter().enumerate() {
    answers.push(None);
    match prepare(call) {
      Ok(Some(request)) => {
        together.push(request);
        at.push(i);
      }
      Ok(None) => own.push(i),
      Err(error) => answers[i] = Some(Err(error)),
    }
  }
  let batched = async {
    if together.is_empty() {
      return Vec::new();
    }
    match batch(together).await {
      Ok(answers) => {
        let finished = at.iter().zip(answers).map(|(&i, a)| finish(&calls[i], a));
        futures::future::join_all(finished).await
      }
      // The batch could not be sent (the client is closed, say): each call on its own path
      // answers with its own error.
      Err(_) => futures::future::join_all(at.iter().map(|&i| alone(&calls[i]))).await,
    }
  };
  let singles = futures::future::join_all(own.iter().map(|&i| alone(&calls[i])));
  let (batched, singles) = tokio::join!(batched, singles);
  for (&i, answer) in at.iter().zip(batched) {
    answers[i] = Some(answer);
  }
  for (&i, answer) in own.iter().zip(singles) {
    answers[i] = Some(answer);
  }
  answers
    .into_iter()
    .map(|a| a.unwrap_or_else(|| Err(QuotaError::Internal("a call was left unanswered".into()))))
    .collect()
}

/// `checkQuota`'s arguments: the user, and 1 to 10,000 sizes adding up to at most 2^53 − 1.
pub(super) fn check_arguments(user_id: &str, sizes: &[f64]) -> Result<(UserId, Vec<i64>)> {
  let user = UserId::parse(user_id)?;
  // Same bounds as the JS schema (BytesListSchema): a direct caller's [] or a million sizes
  // must not reach SQL.
  if sizes.is_empty() || sizes.len() > 10_000 {
    return Err(QuotaError::invalid(format!(
      "bytes must list 1 to 10000 sizes, got {}",
      sizes.len()
    )));
  }
  let sizes = sizes
    .iter()
    .map(|&size| parse_bytes("bytes", size))
    .collect::<Result<Vec<_>>>()?;
  if sizes
    .iter()
    .try_fold(0i64, |sum, &s| sum.checked_add(s))
    .is_none_or(|sum| sum > crate::ids::MAX_BYTES)
  {
    return Err(QuotaError::invalid(
      "the sizes add up to more than 2^53 − 1 bytes",
    ));
  }
  Ok((user, sizes))
}
