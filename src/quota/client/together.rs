//! Calls handed over together by the JS layer: the `checkQuota` or `recordUpload` calls an app
//! made in one turn of the event loop arrive as one napi call (one hand-over to this runtime and
//! one promise settled for all, instead of one of each per call) and join the batches of
//! `batch::Batcher` together. Each call is still decided and answered on its own, exactly as
//! alone: the same arguments checks, the same batches, the same statements.

use super::*;

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
    let mut answers: Vec<Option<Result<QuotaCheck>>> = Vec::with_capacity(calls.len());
    let mut wanted = Vec::new();
    for (user_id, sizes) in calls {
      match check_arguments(user_id, sizes) {
        Ok((user, sizes)) => {
          wanted.push((answers.len(), user, sizes));
          answers.push(None);
        }
        Err(error) => answers.push(Some(Err(error))),
      }
    }
    if !wanted.is_empty() {
      let users: Vec<String> = wanted
        .iter()
        .map(|(_, u, _)| u.as_str().to_owned())
        .collect();
      let read = match self.pool() {
        Ok(pool) if batching_enabled() => {
          self
            .reads
            .call_many(users, move |users| {
              let pool = pool.clone();
              async move {
                let mut conn = pool.get().await?;
                usage::read_usages(&mut conn.0, &users).await
              }
            })
            .await
        }
        _ => {
          let mut one_by_one = Vec::with_capacity(users.len());
          for (_, user, _) in &wanted {
            one_by_one.push(self.read_usage_batched(user).await);
          }
          one_by_one
        }
      };
      for ((at, user, sizes), usage) in wanted.into_iter().zip(read) {
        let usage = match usage {
          Ok(Some(usage)) => Ok(usage),
          Ok(None) => {
            let limit = self.default_limit();
            self
              .with_conn(async |conn| usage::unseeded_usage(&mut conn.0, &user, limit).await)
              .await
          }
          Err(error) => Err(error),
        };
        let mode = self.mode_for(&user);
        answers[at] = Some(usage.map(|usage| usage::decide_check(usage, &sizes, mode)));
      }
    }
    answers
      .into_iter()
      .map(|a| a.unwrap_or_else(|| Err(QuotaError::Internal("a check was left unanswered".into()))))
      .collect()
  }

  /// `record` for several calls at once (the JS layer's batch of one event-loop turn): plain
  /// uploads in enforce mode go to the upload batches together; the others (overwrites, `shadow`
  /// and `off` users) take their own path at the same time. One answer per call, in order.
  pub async fn record_many(&self, calls: &[RecordCall]) -> Vec<Result<Uploaded>> {
    let mut answers: Vec<Option<Result<Uploaded>>> = Vec::with_capacity(calls.len());
    let (mut together, mut at) = (Vec::new(), Vec::new());
    let mut alone = Vec::new();
    let limit = self.default_limit();
    for (i, call) in calls.iter().enumerate() {
      answers.push(None);
      if call.replaces_bytes.is_some() || !batching_enabled() {
        alone.push(i);
        continue;
      }
      match upload_of(call) {
        Ok(upload) if self.mode_for(&upload.user) == Mode::Enforce => {
          together.push(upload);
          at.push(i);
        }
        Ok(_) => alone.push(i),
        Err(error) => answers[i] = Some(Err(error)),
      }
    }
    let batch = async {
      if together.is_empty() {
        return Vec::new();
      }
      match self.pool() {
        Ok(pool) => {
          self
            .uploads
            .call_many(together, move |uploads| {
              let pool = pool.clone();
              async move { coalesce::record_uploads(&pool, uploads, limit).await }
            })
            .await
        }
        // The client is closed (or its pool cannot open): each call gets that error of its own.
        Err(error) => std::iter::once(Err(error))
          .chain((1..together.len()).map(|_| {
            Err(self.pool().err().unwrap_or_else(|| {
              QuotaError::Internal("the pool opened while a batch was refused".into())
            }))
          }))
          .collect(),
      }
    };
    let singles = futures::future::join_all(alone.iter().map(|&i| {
      let c = &calls[i];
      self.record(
        &c.user_id,
        &c.project_id,
        c.bytes,
        c.upload_id.as_deref(),
        c.replaces_bytes,
      )
    }));
    let (batched, singles) = tokio::join!(batch, singles);
    for (i, answer) in at.into_iter().zip(batched) {
      answers[i] = Some(answer.map(Uploaded::from));
    }
    for (i, answer) in alone.into_iter().zip(singles) {
      answers[i] = Some(answer);
    }
    answers
      .into_iter()
      .map(|a| {
        a.unwrap_or_else(|| Err(QuotaError::Internal("an upload was left unanswered".into())))
      })
      .collect()
  }
}

/// A plain upload's arguments, checked as `record_upload` checks them.
fn upload_of(call: &RecordCall) -> Result<coalesce::Upload> {
  Ok(coalesce::Upload {
    user: UserId::parse(&call.user_id)?,
    project: ProjectId::parse(&call.project_id)?,
    bytes: parse_bytes("bytes", call.bytes)?,
    upload_id: upload_key_or_new(call.upload_id.as_deref())?,
  })
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
