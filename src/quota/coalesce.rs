//! Coalescing concurrent `recordUpload` calls of one user.
//!
//! Uploads of one user serialise on that user's quota row, and each holds the row lock until
//! its commit is flushed to the WAL, so one user's uploads run one flush at a time however many
//! arrive together. Here, while one call of a user is in flight, further calls of that user
//! queue in the process; when it ends they are charged together in one transaction (one lock,
//! one flush), and each still gets its own answer: decided in arrival order against the locked
//! row, exactly as if they had run one after another. Calls of different users never wait for
//! each other, and a call with nothing in flight for its user runs alone, as before. Only
//! `enforce` mode coalesces; shadow and off calls take the single statement.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;

use crate::db::pool::{PgConnection, Pool};
use crate::error::{QuotaError, QuotaShortfall, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::usage::{self, RecordedUpload, Usage, SWEEP_USER_SQL};
use crate::rollout::Mode;

/// Most uploads charged in one transaction; the rest wait for the next one.
const MAX_BATCH: usize = 256;

const LOCK_QUOTA: &str = "SELECT used_bytes, reserved_bytes, limit_bytes FROM user_quotas \
   WHERE user_id = $1 FOR NO KEY UPDATE";
const OWNERS: &str =
  "SELECT p.id, p.user_id FROM unnest($1::text[]) AS x(id), storage_quota_project(x.id) p";
const PRIORS: &str =
  "SELECT idempotency_key, coalesce(requested_bytes, bytes), project_id FROM quota_ledger \
   WHERE user_id = $1 AND idempotency_key = ANY($2)";
const CHARGE: &str = "UPDATE user_quotas SET used_bytes = used_bytes + $2, updated_at = now() \
   WHERE user_id = $1 RETURNING used_bytes, reserved_bytes, limit_bytes";
const LEDGER: &str =
  "INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes) \
   SELECT $1, t.project_id, t.key, 'upload', t.bytes \
     FROM unnest($2::text[], $3::text[], $4::bigint[]) AS t(project_id, key, bytes)";

pub struct Upload {
  pub user: UserId,
  pub project: ProjectId,
  pub bytes: i64,
  pub upload_id: String,
}

type Waiter = (Upload, oneshot::Sender<Result<RecordedUpload>>);

/// The uploads waiting per user. A user has an entry exactly while one of its calls (or a
/// batch of them) is in flight.
#[derive(Default)]
pub struct Coalescer {
  queues: Mutex<HashMap<String, Vec<Waiter>>>,
}

impl Coalescer {
  fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Waiter>>> {
    self.queues.lock().unwrap_or_else(|e| e.into_inner())
  }

  pub async fn record_upload(
    self: &Arc<Self>,
    pool: Arc<Pool>,
    upload: Upload,
    default_limit: i64,
  ) -> Result<RecordedUpload> {
    let user = upload.user.as_str().to_owned();
    if !Self::enabled() {
      return record_alone(&pool, &upload, default_limit).await;
    }
    let waiting = {
      let mut queues = self.queues();
      match queues.get_mut(&user) {
        Some(queue) => {
          let (sender, receiver) = oneshot::channel();
          queue.push((upload, sender));
          Err(receiver)
        }
        None => {
          queues.insert(user.clone(), Vec::new());
          Ok(upload)
        }
      }
    };
    let upload = match waiting {
      Err(receiver) => {
        return receiver.await.unwrap_or_else(|_| {
          Err(QuotaError::Internal(
            "a batched upload was dropped without an answer".into(),
          ))
        })
      }
      Ok(upload) => upload,
    };
    // Nothing in flight for this user: run alone. The guard hands whatever queued meanwhile
    // to a batch, even if this call fails or panics.
    let _hand_off = HandOff {
      coalescer: self.clone(),
      pool: pool.clone(),
      user,
      default_limit,
    };
    record_alone(&pool, &upload, default_limit).await
  }

  /// Only for A/B runs of bench/ (BENCHMARKS.md): `STORAGE_QUOTA_BENCH_COALESCE=0` turns it off.
  fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("STORAGE_QUOTA_BENCH_COALESCE").as_deref() != Ok("0"))
  }

  /// Takes the next batch of `user`, or ends the user's entry when nobody is waiting.
  fn next_batch(&self, user: &str) -> Option<Vec<Waiter>> {
    let mut queues = self.queues();
    let queue = queues.get_mut(user)?;
    if queue.is_empty() {
      queues.remove(user);
      return None;
    }
    let rest = queue.split_off(queue.len().min(MAX_BATCH));
    Some(std::mem::replace(queue, rest))
  }
}

struct HandOff {
  coalescer: Arc<Coalescer>,
  pool: Arc<Pool>,
  user: String,
  default_limit: i64,
}

impl Drop for HandOff {
  fn drop(&mut self) {
    let Some(first) = self.coalescer.next_batch(&self.user) else {
      return;
    };
    let drain = Drain {
      coalescer: self.coalescer.clone(),
      user: std::mem::take(&mut self.user),
    };
    let (pool, default_limit) = (self.pool.clone(), self.default_limit);
    tokio::spawn(async move {
      let mut batch = first;
      loop {
        run_batch(&pool, batch, default_limit).await;
        match drain.coalescer.next_batch(&drain.user) {
          Some(next) => batch = next,
          None => break,
        }
      }
      std::mem::forget(drain);
    });
  }
}

/// Removes the user's entry if a drain task dies early, so later calls do not queue forever;
/// the calls still queued then get an `INTERNAL` error.
struct Drain {
  coalescer: Arc<Coalescer>,
  user: String,
}

impl Drop for Drain {
  fn drop(&mut self) {
    self.coalescer.queues().remove(&self.user);
  }
}

/// One upload on its own: the single-statement path of `usage::record_upload`.
async fn record_alone(pool: &Pool, upload: &Upload, default_limit: i64) -> Result<RecordedUpload> {
  let mut conn = pool.get().await?;
  usage::record_upload(
    &mut conn.0,
    &upload.user,
    &upload.project,
    upload.bytes,
    &upload.upload_id,
    default_limit,
    Mode::Enforce,
  )
  .await
}

async fn run_batch(pool: &Pool, batch: Vec<Waiter>, default_limit: i64) {
  if batch.len() > 1 {
    let uploads: Vec<&Upload> = batch.iter().map(|(upload, _)| upload).collect();
    let charged = match pool.get().await {
      Ok(mut conn) => charge_together(&mut conn.0, &uploads).await,
      Err(_) => Ok(None),
    };
    if let Ok(Some(answers)) = charged {
      for ((_, sender), answer) in batch.into_iter().zip(answers) {
        let _ = sender.send(answer);
      }
      return;
    }
  }
  // One upload, a user without a quota row yet, or the batch failed: each on its own, in
  // order, which gives each its own exact answer or error.
  for (upload, sender) in batch {
    let _ = sender.send(record_alone(pool, &upload, default_limit).await);
  }
}

/// Charges `uploads` (all of one user) in one transaction, deciding each in order against the
/// locked quota row as `usage::record_upload` would one after another. `None` when the user has
/// no quota row yet (the single path creates it).
async fn charge_together(
  conn: &mut PgConnection,
  uploads: &[&Upload],
) -> Result<Option<Vec<Result<RecordedUpload>>>> {
  let user = &uploads[0].user;
  let projects: Vec<&str> = uploads
    .iter()
    .map(|u| u.project.as_str())
    .collect::<HashSet<_>>()
    .into_iter()
    .collect();
  let keys: Vec<&str> = uploads.iter().map(|u| u.upload_id.as_str()).collect();
  let (client, statements) = conn.parts();
  let tx = client.transaction().await?;
  let sweep = PgConnection::statement(statements, &tx, SWEEP_USER_SQL).await?;
  let lock = PgConnection::statement(statements, &tx, LOCK_QUOTA).await?;
  let owners = PgConnection::statement(statements, &tx, OWNERS).await?;
  let priors = PgConnection::statement(statements, &tx, PRIORS).await?;
  // Pipelined: PostgreSQL runs them in order, so both reads see the state after the lock.
  let user_id = user.as_str();
  let lock_params: [&(dyn ToSql + Sync); 1] = [&user_id];
  let owner_params: [&(dyn ToSql + Sync); 1] = [&projects];
  let prior_params: [&(dyn ToSql + Sync); 2] = [&user_id, &keys];
  // Expired reservations are given back first, in the order every writer locks: reservation
  // rows, then the quota row.
  let (_, row, owners, priors) = tokio::try_join!(
    tx.execute(&sweep, &lock_params),
    tx.query_opt(&lock, &lock_params),
    tx.query(&owners, &owner_params),
    tx.query(&priors, &prior_params),
  )?;
  let Some(row) = row else {
    return Ok(None);
  };
  let mut usage = Usage {
    used_bytes: row.get(0),
    reserved_bytes: row.get(1),
    limit_bytes: row.get(2),
  };
  let owners: HashMap<String, String> = owners.iter().map(|r| (r.get(0), r.get(1))).collect();
  let mut recorded: HashMap<String, (i64, Option<String>)> = priors
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect();

  let mut answers = Vec::with_capacity(uploads.len());
  let (mut new_projects, mut new_keys, mut new_bytes) = (Vec::new(), Vec::new(), Vec::new());
  for upload in uploads {
    answers.push(decide(upload, &owners, &mut recorded, &mut usage));
    if let Some(Ok(answer)) = answers.last() {
      if !answer.duplicate {
        new_projects.push(upload.project.as_str());
        new_keys.push(upload.upload_id.as_str());
        new_bytes.push(upload.bytes);
      }
    }
  }
  if !new_keys.is_empty() {
    let total: i64 = new_bytes.iter().sum();
    let charge = PgConnection::statement(statements, &tx, CHARGE).await?;
    let ledger = PgConnection::statement(statements, &tx, LEDGER).await?;
    let charge_params: [&(dyn ToSql + Sync); 2] = [&user_id, &total];
    let ledger_params: [&(dyn ToSql + Sync); 4] = [&user_id, &new_projects, &new_keys, &new_bytes];
    let (after, _) = tokio::try_join!(
      tx.query_one(&charge, &charge_params),
      tx.execute(&ledger, &ledger_params),
    )?;
    let used: i64 = after.get(0);
    if used != usage.used_bytes {
      return Err(QuotaError::Internal(
        "quota row changed under its lock during a batched upload".into(),
      ));
    }
  }
  tx.commit().await?;
  Ok(Some(answers))
}

/// One upload's answer, as `usage::record_upload` decides it, against the usage so far.
fn decide(
  upload: &Upload,
  owners: &HashMap<String, String>,
  recorded: &mut HashMap<String, (i64, Option<String>)>,
  usage: &mut Usage,
) -> Result<RecordedUpload> {
  let project = upload.project.as_str();
  if let Some((prior_bytes, prior_project)) = recorded.get(&upload.upload_id) {
    let prior_bytes = *prior_bytes;
    if prior_bytes != upload.bytes || prior_project.as_deref() != Some(project) {
      return Err(usage::key_reused(&upload.upload_id, prior_bytes));
    }
    return Ok(answer(upload, true, *usage));
  }
  match owners.get(project) {
    None => {
      return Err(QuotaError::NotFound(format!(
        "project {} does not exist",
        upload.project
      )))
    }
    Some(owner) if owner != upload.user.as_str() => {
      return Err(QuotaError::Forbidden(format!(
        "project {} belongs to another user",
        upload.project
      )))
    }
    Some(_) => {}
  }
  if !usage.fits(upload.bytes) {
    return Err(QuotaError::QuotaExceeded(QuotaShortfall {
      requested_bytes: upload.bytes,
      used_bytes: usage.used_bytes,
      reserved_bytes: usage.reserved_bytes,
      limit_bytes: usage.limit_bytes,
    }));
  }
  usage.used_bytes += upload.bytes;
  recorded.insert(
    upload.upload_id.clone(),
    (upload.bytes, Some(project.to_owned())),
  );
  Ok(answer(upload, false, *usage))
}

fn answer(upload: &Upload, duplicate: bool, usage: Usage) -> RecordedUpload {
  RecordedUpload {
    upload_id: upload.upload_id.clone(),
    bytes: upload.bytes,
    duplicate,
    counted: true,
    would_refuse: false,
    usage,
    mode: Mode::Enforce,
  }
}
