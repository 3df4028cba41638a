//! Retention: settled reservations and old ledger entries are history the counters no longer
//! need. `pruneHistory` deletes settled reservations, and folds ledger entries, older than the
//! retention period (`historyRetentionDays`, default 90) — each project's old entries become one
//! `carry {project}` entry with their sum, so every sum (user, project) and every counter stays
//! the same. What goes with them: the memory of their idempotency keys (a retry older than the
//! retention period counts again) and `recordDeletion({ uploadId })` for those uploads.

use crate::db::pool::PgConnection;
use crate::error::Result;

pub const DEFAULT_RETENTION_DAYS: i64 = 90;

/// Most rows touched by one statement, so no prune holds locks for long.
const BATCH: i64 = 5_000;

const PRUNE_RESERVATIONS: &str = "
DELETE FROM quota_reservations WHERE ctid = ANY (ARRAY(
  SELECT ctid FROM quota_reservations
   WHERE status <> 'pending' AND settled_at < now() - make_interval(days => $1::int)
   LIMIT $2))";

const USERS_WITH_OLD_ENTRIES: &str = "
SELECT DISTINCT user_id FROM (
  SELECT user_id FROM quota_ledger
   WHERE created_at < now() - make_interval(days => $1::int) AND idempotency_key NOT LIKE 'carry %'
     AND baseline_projects IS NULL
   LIMIT $2) old";

/// One user's old entries folded into their carry entries, in one statement (a baseline entry
/// stays: it is one per user and keeps each project's share): the deleted
/// bytes and the carried bytes are the same rows' sum, so no total ever changes. Carry entries
/// are `adjustment`s the project counters skip (their bytes were counted when first written).
const FOLD_USER: &str = "
WITH old AS (
  DELETE FROM quota_ledger WHERE id = ANY (ARRAY(
    SELECT id FROM quota_ledger
     WHERE user_id = $1 AND created_at < now() - make_interval(days => $2::int)
       AND idempotency_key NOT LIKE 'carry %' AND baseline_projects IS NULL
     LIMIT $3))
  RETURNING project_id, bytes
), sums AS (
  SELECT project_id, sum(bytes)::bigint AS bytes, count(*) AS entries FROM old GROUP BY project_id
), carried AS (
  INSERT INTO quota_ledger AS l (user_id, project_id, idempotency_key, kind, bytes)
  SELECT $1, project_id, 'carry ' || coalesce(project_id::text, 'user'), 'adjustment', bytes FROM sums
  ON CONFLICT (user_id, idempotency_key) DO UPDATE SET bytes = l.bytes + EXCLUDED.bytes
  RETURNING l.id
)
SELECT coalesce((SELECT sum(entries) FROM sums), 0)::bigint, (SELECT count(*) FROM carried)";

#[derive(Debug, Clone, Copy, Default)]
pub struct Pruned {
  pub reservations: i64,
  pub ledger_entries: i64,
}

/// Applies the retention period (in days) to the whole database, in short batches.
pub async fn prune_history(conn: &mut PgConnection, days: i64) -> Result<Pruned> {
  let days = i32::try_from(days).unwrap_or(i32::MAX);
  let mut pruned = Pruned::default();
  loop {
    let n = conn.execute(PRUNE_RESERVATIONS, &[&days, &BATCH]).await?;
    pruned.reservations += n as i64;
    if (n as i64) < BATCH {
      break;
    }
  }
  loop {
    let users = conn.query(USERS_WITH_OLD_ENTRIES, &[&days, &BATCH]).await?;
    if users.is_empty() {
      return Ok(pruned);
    }
    for row in users {
      let user: String = row.get(0);
      loop {
        let folded: i64 = conn
          .query_one(FOLD_USER, &[&user, &days, &BATCH])
          .await?
          .get(0);
        pruned.ledger_entries += folded;
        if folded < BATCH {
          break;
        }
      }
    }
  }
}
