//! Group commit for `recordUpload` in enforce mode, across users.
//!
//! Each charge holds its user's quota row until its commit is flushed to the WAL, so the flush
//! is what a charge costs the database. Through `batch::Batcher`, while a charge is in flight,
//! further `recordUpload` calls of any users queue in the process; when it ends they are charged
//! together in one transaction: one commit, one flush, for all of them. Each caller still gets
//! exactly its own answer, decided here in arrival order against its user's locked row, with the
//! same rules and in the same order as the single statement of `usage::record_upload` (key, then
//! owner, then limit). A lone call takes that single statement, so at concurrency 1 nothing
//! changes.
//!
//! Why a transaction of a few pipelined statements and not one statement or a plpgsql function:
//! a refused upload must not consume room for the next call of its user, which makes the
//! decisions a fold in arrival order, not a set operation; done here it is the same code for a
//! batch of 2 or 500, needs no migration, and the extra round trips are shared by the batch while
//! the commit (the expensive part) is still one.
//!
//! Users whose call the batch cannot decide exactly on its own — no quota row yet (the single
//! path seeds it) or expired reservations still counted (the single path sweeps them) — take the
//! single path after the batch commits, in arrival order; so the hot path never sends a sweep.

use std::collections::{HashMap, HashSet};

use tokio_postgres::types::ToSql;

use crate::db::pool::{PgConnection, Pool};
use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::batch::together_then_alone;
use crate::quota::owner::check_owner;
use crate::quota::usage::{self, RecordedUpload, Usage};
use crate::rollout::Mode;

/// Locks the batch's quota rows in one global order: ORDER BY is applied before the row locks,
/// so every batch takes them by ascending user_id, and single-row writers take one only, so no
/// two transactions can wait on each other in a cycle. Also says whether a user has expired
/// reservations still counted in `reserved_bytes` (looked up only for a user holding bytes, as in
/// `usage::SELECT_USAGE`).
pub(crate) const LOCK_QUOTAS: &str = "
SELECT q.user_id, q.used_bytes, q.reserved_bytes, q.limit_bytes,
       CASE WHEN q.reserved_bytes > 0
            THEN EXISTS (SELECT 1 FROM quota_reservations r
                          WHERE r.user_id = q.user_id AND r.status = 'pending' AND r.expires_at <= now())
            ELSE false END
  FROM user_quotas q WHERE q.user_id = ANY($1)
 ORDER BY q.user_id FOR NO KEY UPDATE OF q";
pub(crate) const OWNERS: &str =
  "SELECT p.id, p.user_id FROM unnest($1::text[]) AS x(id), storage_quota_project(x.id) p";
const PRIORS: &str = "
SELECT l.user_id, l.idempotency_key, coalesce(l.requested_bytes, l.bytes), l.project_id
  FROM unnest($1::text[], $2::text[]) AS k(user_id, key)
  JOIN quota_ledger l ON l.user_id = k.user_id AND l.idempotency_key = k.key";
/// The end of a batch's write statement whose CTE `$cte` updates the batch's quota rows
/// (`$1` their users, each `RETURNING … AS as_decided`). Each row is locked by the batch, so it
/// must come out exactly as decided; anything else raises an error here, before the `COMMIT`
/// pipelined behind the statement, which then rolls the whole batch back (and `Batcher` answers
/// each call alone). The error is a failed cast carrying the reason: plain SQL has no `RAISE`,
/// and the ELSE branch depends on the rows, so it is not folded at plan time.
macro_rules! unless_as_decided {
  ($cte:literal, $what:literal) => {
    concat!(
      "
SELECT CASE WHEN count(*) FILTER (WHERE as_decided) = cardinality($1::text[]) THEN count(*)
            ELSE ('quota rows changed under their locks during a batched ",
      $what,
      ": '
                  || count(*) FILTER (WHERE as_decided) || ' of ' || cardinality($1::text[])
                  || ' as decided')::bigint END
  FROM ",
      $cte
    )
  };
}
pub(crate) use unless_as_decided;

/// The batch's writes in one statement: the quota rows (per user, the batch's total, which each
/// must come out as, `$3`: see `unless_as_decided`), then the ledger entries.
const CHARGE: &str = concat!(
  "
WITH charged AS (
  UPDATE user_quotas q SET used_bytes = q.used_bytes + t.bytes, updated_at = now()
    FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(user_id, bytes, decided)
   WHERE q.user_id = t.user_id
  RETURNING q.used_bytes = t.decided AS as_decided
), entered AS (
  INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
  SELECT t.user_id, t.project_id, t.key, 'upload', t.bytes
    FROM unnest($4::text[], $5::text[], $6::text[], $7::bigint[]) AS t(user_id, project_id, key, bytes)
)",
  unless_as_decided!("charged", "upload")
);

#[derive(Debug, Clone)]
pub struct Upload {
  pub user: UserId,
  pub project: ProjectId,
  pub bytes: i64,
  pub upload_id: String,
}

/// Answers a batch of uploads (any users), one answer per upload in order. `Err` only when the
/// batch failed as a whole (nothing of it committed); `Batcher` then retries each alone.
pub async fn record_uploads(
  pool: &Pool,
  uploads: Vec<Upload>,
  default_limit: i64,
) -> Result<Vec<Result<RecordedUpload>>> {
  together_then_alone(
    pool,
    &uploads,
    |conn, uploads| Box::pin(charge_together(conn, uploads)),
    |conn, upload| Box::pin(record_alone(conn, upload, default_limit)),
  )
  .await
}

/// One upload on its own: the single statement of `usage::record_upload`.
async fn record_alone(
  conn: &mut PgConnection,
  upload: &Upload,
  default_limit: i64,
) -> Result<RecordedUpload> {
  usage::record_upload(
    conn,
    &upload.user,
    &upload.project,
    upload.bytes,
    &upload.upload_id,
    default_limit,
    Mode::Enforce,
  )
  .await
}

/// Charges `uploads` in one transaction, deciding each in order against its user's locked row as
/// `usage::record_upload` would one after another. `None` for an upload of a user left to the
/// single path (see the module's notes).
async fn charge_together(
  conn: &mut PgConnection,
  uploads: &[Upload],
) -> Result<Vec<Option<Result<RecordedUpload>>>> {
  let users: Vec<&str> = uploads
    .iter()
    .map(|u| u.user.as_str())
    .collect::<HashSet<_>>()
    .into_iter()
    .collect();
  let projects: Vec<&str> = uploads
    .iter()
    .map(|u| u.project.as_str())
    .collect::<HashSet<_>>()
    .into_iter()
    .collect();
  let key_users: Vec<&str> = uploads.iter().map(|u| u.user.as_str()).collect();
  let keys: Vec<&str> = uploads.iter().map(|u| u.upload_id.as_str()).collect();

  let tx = conn.pipelined();
  // Pipelined behind the BEGIN; PostgreSQL runs them in order, so both reads see the state
  // after the locks.
  let lock_params: [&(dyn ToSql + Sync); 1] = [&users];
  let owner_params: [&(dyn ToSql + Sync); 1] = [&projects];
  let prior_params: [&(dyn ToSql + Sync); 2] = [&key_users, &keys];
  let (locked, owners, priors) = tokio::try_join!(
    tx.query(LOCK_QUOTAS, &lock_params),
    tx.query(OWNERS, &owner_params),
    tx.query(PRIORS, &prior_params),
  )?;

  let mut rows: HashMap<String, Usage> = HashMap::new();
  for row in &locked {
    let expired: bool = row.get(4);
    if !expired {
      rows.insert(row.get(0), Usage::from_row(row, 1));
    }
  }
  let owners: HashMap<String, String> = owners.iter().map(|r| (r.get(0), r.get(1))).collect();
  let mut recorded: HashMap<(String, String), (i64, Option<String>)> = priors
    .iter()
    .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
    .collect();

  let mut answers = Vec::with_capacity(uploads.len());
  let mut totals: HashMap<&str, i64> = HashMap::new();
  let (mut new_users, mut new_projects, mut new_keys, mut new_bytes) =
    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
  for upload in uploads {
    let Some(usage) = rows.get_mut(upload.user.as_str()) else {
      answers.push(None);
      continue;
    };
    let answer = decide(upload, &owners, &mut recorded, usage);
    if let Ok(recorded) = &answer {
      if !recorded.duplicate {
        *totals.entry(upload.user.as_str()).or_default() += upload.bytes;
        new_users.push(upload.user.as_str());
        new_projects.push(upload.project.as_str());
        new_keys.push(upload.upload_id.as_str());
        new_bytes.push(upload.bytes);
      }
    }
    answers.push(Some(answer));
  }

  let mut charged = (Vec::new(), Vec::new(), Vec::new());
  for (user, bytes) in totals {
    charged.0.push(user);
    charged.1.push(bytes);
    charged.2.push(rows[user].used_bytes);
  }
  let charge_params: [&(dyn ToSql + Sync); 7] = [
    &charged.0,
    &charged.1,
    &charged.2,
    &new_users,
    &new_projects,
    &new_keys,
    &new_bytes,
  ];
  if new_keys.is_empty() {
    // Nothing to write (duplicates and refusals only): the COMMIT alone ends the transaction.
    tx.commit_with(async { Ok(()) }).await?;
  } else {
    tx.commit_with(tx.query(CHARGE, &charge_params)).await?;
  }
  Ok(answers)
}

/// One upload's answer, as `usage::record_upload` decides it, against its user's usage so far.
fn decide(
  upload: &Upload,
  owners: &HashMap<String, String>,
  recorded: &mut HashMap<(String, String), (i64, Option<String>)>,
  usage: &mut Usage,
) -> Result<RecordedUpload> {
  let project = upload.project.as_str();
  let key = (upload.user.as_str().to_owned(), upload.upload_id.clone());
  if let Some((prior_bytes, prior_project)) = recorded.get(&key) {
    let prior_bytes = *prior_bytes;
    if prior_bytes != upload.bytes || prior_project.as_deref() != Some(project) {
      return Err(usage::key_reused(&upload.upload_id, prior_bytes));
    }
    return Ok(answer(upload, true, *usage));
  }
  check_owner(owners.get(project).cloned(), &upload.user, &upload.project)?;
  if !usage.fits(upload.bytes) {
    return Err(QuotaError::QuotaExceeded(usage.shortfall(upload.bytes)));
  }
  usage.used_bytes += upload.bytes;
  recorded.insert(key, (upload.bytes, Some(project.to_owned())));
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
