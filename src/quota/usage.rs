//! Checking and charging a user's quota. Every charge is one SQL statement whose row lock on
//! `user_quotas` serialises concurrent charges of a user, and whose `WHERE` re-checks the limit
//! against the latest row version, so no interleaving of calls can pass the limit.

use tokio_postgres::error::SqlState;

use crate::db::pool::PgConnection;
use crate::error::{ConflictReason, QuotaError, QuotaShortfall, Result};
use crate::format::percent_used;
use crate::ids::{ProjectId, UserId};
use crate::quota::app_table::AppTable;
use crate::quota::modes::{decide, Decision};
use crate::quota::owner::check_owner;
use crate::rollout::Mode;

/// A user's numbers at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
  pub used_bytes: i64,
  pub reserved_bytes: i64,
  pub limit_bytes: i64,
}

impl Usage {
  pub fn empty(limit_bytes: i64) -> Self {
    Usage {
      used_bytes: 0,
      reserved_bytes: 0,
      limit_bytes,
    }
  }

  pub fn remaining_bytes(&self) -> i64 {
    (self.limit_bytes - self.used_bytes - self.reserved_bytes).max(0)
  }

  /// Used plus reserved, as a share of the limit.
  pub fn percent_used(&self) -> f64 {
    percent_used(self.used_bytes + self.reserved_bytes, self.limit_bytes)
  }

  pub fn fits(&self, bytes: i64) -> bool {
    self.used_bytes + self.reserved_bytes + bytes <= self.limit_bytes
  }

  pub fn over_limit(&self) -> bool {
    self.used_bytes + self.reserved_bytes > self.limit_bytes
  }

  pub fn shortfall(&self, requested_bytes: i64) -> QuotaShortfall {
    QuotaShortfall {
      requested_bytes,
      used_bytes: self.used_bytes,
      reserved_bytes: self.reserved_bytes,
      limit_bytes: self.limit_bytes,
    }
  }

  pub fn from_row(row: &tokio_postgres::Row, offset: usize) -> Self {
    Usage {
      used_bytes: row.get(offset),
      reserved_bytes: row.get(offset + 1),
      limit_bytes: row.get(offset + 2),
    }
  }
}

#[derive(Debug, Clone)]
pub struct QuotaCheck {
  /// Whether the bytes may be added. In shadow and off modes always true.
  pub allowed: bool,
  /// Whether enforcement would refuse them (differs from `!allowed` in shadow/off mode).
  pub would_refuse: bool,
  pub requested_bytes: i64,
  pub usage: Usage,
  pub mode: Mode,
  /// For a list of sizes: whether each fits, taking them in order.
  pub fits: Vec<bool>,
}

impl QuotaCheck {
  /// How many bytes would have to be freed for the request to fit (0 when it fits).
  pub fn missing_bytes(&self) -> i64 {
    (self.requested_bytes - self.usage.remaining_bytes()).max(0)
  }
}

#[derive(Debug, Clone)]
pub struct RecordedUpload {
  pub upload_id: String,
  pub bytes: i64,
  /// The upload id was recorded before; nothing was charged this time.
  pub duplicate: bool,
  /// Whether the bytes were counted (false only in `off` mode).
  pub counted: bool,
  /// Enforcement would have refused this upload (only in shadow mode).
  pub would_refuse: bool,
  pub usage: Usage,
  pub mode: Mode,
}

/// Usage with reservations past their TTL no longer counted, even before they are swept. A user
/// holding nothing (`reserved_bytes` is the sum of their pending reservations, kept in the same
/// transactions) has none to look up: the CASE skips the lookup for them.
const SELECT_USAGE: &str = "
SELECT q.used_bytes,
       CASE WHEN q.reserved_bytes > 0
            THEN q.reserved_bytes - coalesce((SELECT sum(r.bytes) FROM quota_reservations r
                                               WHERE r.user_id = q.user_id AND r.status = 'pending'
                                                 AND r.expires_at <= now()), 0)::bigint
            ELSE q.reserved_bytes END,
       q.limit_bytes
  FROM user_quotas q WHERE q.user_id = $1";

pub const ENSURE_QUOTA_ROW_SQL: &str =
  "INSERT INTO user_quotas (user_id, limit_bytes) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING";

/// Marks the user's expired reservations and gives their bytes back, in one statement so the
/// two can never disagree. Locks reservation rows before the quota row, like commit and cancel.
pub const SWEEP_USER_SQL: &str = "
WITH expired AS (
  UPDATE quota_reservations SET status = 'expired', settled_at = now()
   WHERE user_id = $1 AND status = 'pending' AND expires_at <= now()
  RETURNING bytes
), total AS (
  SELECT coalesce(sum(bytes), 0)::bigint AS bytes FROM expired
)
UPDATE user_quotas q SET reserved_bytes = q.reserved_bytes - total.bytes, updated_at = now()
  FROM total WHERE q.user_id = $1 AND total.bytes > 0";

/// Whether the user has a pending reservation past its TTL: one probe of the partial index
/// `quota_reservations_pending_user_idx`. Every charge statement (here and in `reservations`)
/// carries it literally (the bench reads the statements from these sources) and charges nothing
/// while it holds, since the quota row would count bytes that are free again; it says so in
/// `expired_pending`, and the caller then sends the sweep and the charge in one transaction
/// (`charge_query_one`). So a sweep goes out only when there is something to sweep, and never
/// as a transaction of its own.
pub const EXPIRED_PENDING: &str = "EXISTS (SELECT 1 FROM quota_reservations r \
  WHERE r.user_id = $1 AND r.status = 'pending' AND r.expires_at <= now())";

/// One round trip: charge the bytes and write the ledger entry, only if the upload id is new,
/// the project belongs to the user, no expired reservation is still counted and (when enforcing)
/// the bytes fit. The outer SELECT reports which of those failed. A concurrent insert of the same
/// upload id is caught by the ledger's unique key and retried. `$limit` is the enforcement clause
/// (see the two statements below).
macro_rules! record_upload_sql {
  ($limit:literal) => {
    concat!(
      "
WITH owner AS (
  SELECT p.user_id FROM storage_quota_project($2) p
), prior AS (
  SELECT coalesce(l.requested_bytes, l.bytes) AS bytes, l.project_id FROM quota_ledger l
   WHERE l.user_id = $1 AND l.idempotency_key = $3
), stale AS (
  SELECT EXISTS (SELECT 1 FROM quota_reservations r \
  WHERE r.user_id = $1 AND r.status = 'pending' AND r.expires_at <= now()) AS pending
), charged AS (
  UPDATE user_quotas q
     SET used_bytes = q.used_bytes + $4, updated_at = now()
   WHERE q.user_id = $1
     AND NOT EXISTS (SELECT 1 FROM prior)
     AND EXISTS (SELECT 1 FROM owner WHERE owner.user_id = $1)
     AND NOT (SELECT pending FROM stale)
     AND ",
      $limit,
      "
  RETURNING q.used_bytes, q.reserved_bytes, q.limit_bytes
), entry AS (
  INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
  SELECT $1, $2, $3, 'upload', $4 FROM charged
  RETURNING id
)
SELECT (SELECT user_id FROM owner) AS owner_id,
       (SELECT bytes FROM prior) AS prior_bytes,
       (SELECT project_id FROM prior) AS prior_project,
       (SELECT count(*) FROM entry) AS entries,
       (SELECT pending FROM stale) AS expired_pending,
       c.used_bytes, c.reserved_bytes, c.limit_bytes
  FROM (SELECT 1) AS one LEFT JOIN charged c ON true"
    )
  };
}

const RECORD_UPLOAD: &str =
  record_upload_sql!("q.used_bytes + q.reserved_bytes + $4 <= q.limit_bytes");
/// Shadow mode: counts past the limit, lifting the database guard for this statement only
/// (`set_config(…, true)` lasts until the end of the statement's own transaction).
const RECORD_UPLOAD_SHADOW: &str =
  record_upload_sql!("set_config('storage_quota.allow_over_limit', 'on', true) = 'on'");

pub async fn read_usage(conn: &mut PgConnection, user: &UserId) -> Result<Option<Usage>> {
  let row = conn.query_opt(SELECT_USAGE, &[&user.as_str()]).await?;
  Ok(row.map(|row| Usage::from_row(&row, 0)))
}

/// Whether each of `sizes` fits, in order, and whether all do. A user without a row has the
/// default quota and nothing used.
pub async fn check_quota(
  conn: &mut PgConnection,
  user: &UserId,
  sizes: &[i64],
  default_limit: i64,
  mode: Mode,
) -> Result<QuotaCheck> {
  let usage = read_usage_or_unseeded(conn, user, default_limit).await?;
  Ok(decide_check(usage, sizes, mode))
}

/// The answer of `checkQuota` for `sizes` against `usage`: each size in order, and all together.
pub fn decide_check(usage: Usage, sizes: &[i64], mode: Mode) -> QuotaCheck {
  let mut running = 0i64;
  let fits = sizes
    .iter()
    .map(|&size| {
      let fits = usage.fits(running + size);
      if fits {
        running += size;
      }
      fits
    })
    .collect();
  let requested_bytes: i64 = sizes.iter().sum();
  let would_refuse = !usage.fits(requested_bytes);
  QuotaCheck {
    allowed: decide(mode, !would_refuse) != Decision::Refuse,
    would_refuse,
    requested_bytes,
    usage,
    mode,
    fits,
  }
}

/// `SELECT_USAGE` for many users in one statement (see `batch`): one row per requested user, in
/// request order, NULLs for a user without a quota row.
const SELECT_USAGES: &str = "
SELECT q.used_bytes,
       CASE WHEN q.reserved_bytes > 0
            THEN q.reserved_bytes - coalesce((SELECT sum(r.bytes) FROM quota_reservations r
                                               WHERE r.user_id = q.user_id AND r.status = 'pending'
                                                 AND r.expires_at <= now()), 0)::bigint
            ELSE q.reserved_bytes END,
       q.limit_bytes
  FROM unnest($1::text[]) WITH ORDINALITY AS u(user_id, n)
  LEFT JOIN user_quotas q ON q.user_id = u.user_id
 ORDER BY u.n";

/// The usage of each of `users` (`None`: no quota row yet), in order, in one round trip. A
/// lone user takes the single-user statement: sent alone, the array statement cost the database
/// about 4× the CPU of `SELECT_USAGE` for the same index lookup (BENCHMARKS.md; most likely
/// because a prepared statement over an array keeps being planned anew).
pub async fn read_usages(
  conn: &mut PgConnection,
  users: &[String],
) -> Result<Vec<Result<Option<Usage>>>> {
  if let [user] = users {
    let row = conn.query_opt(SELECT_USAGE, &[user]).await?;
    return Ok(vec![Ok(row.map(|row| Usage::from_row(&row, 0)))]);
  }
  let rows = conn.query(SELECT_USAGES, &[&users]).await?;
  Ok(
    rows
      .iter()
      .map(|row| {
        let used: Option<i64> = row.get(0);
        Ok(used.map(|_| Usage::from_row(row, 0)))
      })
      .collect(),
  )
}

/// Creates the user's quota row if missing, seeded with their existing projects' baselines
/// (see `seed`): the one way a quota row comes into being for a charge or a project path.
pub async fn ensure_quota_row(
  conn: &mut PgConnection,
  user: &UserId,
  default_limit: i64,
) -> Result<()> {
  crate::quota::seed::ensure_seeded(conn, user, default_limit).await
}

/// The user's usage; for a user without a quota row, the default limit and the baselines their
/// projects will be seeded with. Reads only.
pub async fn read_usage_or_unseeded(
  conn: &mut PgConnection,
  user: &UserId,
  default_limit: i64,
) -> Result<Usage> {
  if let Some(usage) = read_usage(conn, user).await? {
    return Ok(usage);
  }
  unseeded_usage(conn, user, default_limit).await
}

/// The usage of a user already read to have no quota row: the default limit, and the
/// baselines their projects will be seeded with. Reads only.
pub async fn unseeded_usage(
  conn: &mut PgConnection,
  user: &UserId,
  default_limit: i64,
) -> Result<Usage> {
  // In a transaction: one server connection behind a transaction pooler.
  let tx = conn.transaction().await?;
  let app = AppTable::load(&tx).await?;
  let used = crate::quota::seed::unseeded_used_bytes(&tx, &app, user).await?;
  tx.commit().await?;
  Ok(Usage {
    used_bytes: used,
    ..Usage::empty(default_limit)
  })
}

/// Gives back the user's expired reservations.
pub async fn sweep_user(conn: &mut PgConnection, user: &UserId) -> Result<u64> {
  Ok(conn.execute(SWEEP_USER_SQL, &[&user.as_str()]).await?)
}

/// Sends a charge statement (`sql`, whose `$1` is the user). With `sweep`, the user's sweep goes
/// first in the same transaction, pipelined (one round trip besides `BEGIN` and `COMMIT`): the
/// charge's snapshot then sees the expired bytes given back. Without it, the statement alone.
pub async fn charge_query_one(
  conn: &mut PgConnection,
  user: &UserId,
  sweep: bool,
  sql: &'static str,
  params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> std::result::Result<tokio_postgres::Row, tokio_postgres::Error> {
  if !sweep {
    return conn.query_one(sql, params).await;
  }
  let user_id = user.as_str();
  let sweep_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&user_id];
  let tx = conn.transaction().await?;
  let (_, row) = tokio::try_join!(
    tx.execute(SWEEP_USER_SQL, &sweep_params),
    tx.query_one(sql, params)
  )?;
  tx.commit().await?;
  Ok(row)
}

/// After a charge statement charged nothing for a known owner: `Ok(())` means "try again" (the
/// quota row was missing and now exists, or room appeared), otherwise the refusal, explained
/// with the latest numbers (a fresh snapshot, so never "needs 5 MB but 9 MB is free").
pub async fn after_uncharged(
  conn: &mut PgConnection,
  user: &UserId,
  bytes: i64,
  default_limit: i64,
) -> Result<()> {
  match read_usage(conn, user).await? {
    None => ensure_quota_row(conn, user, default_limit).await,
    Some(usage) if usage.fits(bytes) => Ok(()),
    Some(usage) => Err(QuotaError::QuotaExceeded(usage.shortfall(bytes))),
  }
}

/// How often a charge is retried after a state change one snapshot cannot see.
pub const CHARGE_ATTEMPTS: usize = 4;

pub fn contention_error(operation: &str) -> QuotaError {
  QuotaError::db(format!(
    "{operation} could not settle after {CHARGE_ATTEMPTS} attempts under heavy contention; retry it"
  ))
}

/// `off` mode writes nothing but still answers for the project's owner and the upload id.
const OFF_CHECKS: &str = "
SELECT (SELECT p.user_id FROM storage_quota_project($2) p) AS owner_id,
       l.project_id AS prior_project, coalesce(l.requested_bytes, l.bytes) AS prior_bytes
  FROM (SELECT 1) AS one
  LEFT JOIN quota_ledger l ON l.user_id = $1 AND l.idempotency_key = $3";

pub fn key_reused(upload_id: &str, prior_bytes: i64) -> QuotaError {
  QuotaError::conflict(
    ConflictReason::KeyReused,
    format!(
      "uploadId {upload_id:?} was already recorded with {prior_bytes} bytes for another project or size; use a new uploadId for a new upload"
    ),
  )
}

const KEY_RECORDED: &str =
  "SELECT EXISTS (SELECT 1 FROM quota_ledger WHERE user_id = $1 AND idempotency_key = $2)";

async fn key_recorded(conn: &mut PgConnection, user: &UserId, upload_id: &str) -> Result<bool> {
  let row = conn
    .query_one(KEY_RECORDED, &[&user.as_str(), &upload_id])
    .await?;
  Ok(row.get(0))
}

/// Charges `bytes` for an upload to `project`, once per `upload_id`.
pub async fn record_upload(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
  bytes: i64,
  upload_id: &str,
  default_limit: i64,
  mode: Mode,
) -> Result<RecordedUpload> {
  if mode == Mode::Off {
    // Nothing is written, but the same owner and key rules apply as in the other modes.
    let row = conn
      .query_one(OFF_CHECKS, &[&user.as_str(), &project.as_str(), &upload_id])
      .await?;
    let prior: Option<i64> = row.get("prior_bytes");
    if let Some(prior_bytes) = prior {
      if prior_bytes != bytes
        || row.get::<_, Option<String>>("prior_project").as_deref() != Some(project.as_str())
      {
        return Err(key_reused(upload_id, prior_bytes));
      }
    } else {
      check_owner(row.get("owner_id"), user, project)?;
    }
    let usage = read_usage_or_unseeded(conn, user, default_limit).await?;
    return Ok(RecordedUpload {
      upload_id: upload_id.to_owned(),
      bytes,
      duplicate: prior.is_some(),
      counted: prior.is_some(),
      would_refuse: prior.is_none() && !usage.fits(bytes),
      usage,
      mode,
    });
  }
  let sql = if mode == Mode::Shadow {
    RECORD_UPLOAD_SHADOW
  } else {
    RECORD_UPLOAD
  };
  let mut sweep = false;
  for _ in 0..CHARGE_ATTEMPTS {
    let project_id = project.as_str();
    let result = charge_query_one(
      conn,
      user,
      std::mem::take(&mut sweep),
      sql,
      &[&user.as_str(), &project_id, &upload_id, &bytes],
    )
    .await;
    let row = match result {
      Ok(row) => row,
      Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => continue,
      Err(error) => return Err(error.into()),
    };
    let prior_bytes: Option<i64> = row.get("prior_bytes");
    if let Some(prior_bytes) = prior_bytes {
      let prior_project: Option<String> = row.get("prior_project");
      if prior_bytes != bytes || prior_project.as_deref() != Some(project.as_str()) {
        return Err(key_reused(upload_id, prior_bytes));
      }
      let usage = read_usage(conn, user)
        .await?
        .ok_or_else(|| QuotaError::Internal("quota row vanished after a recorded upload".into()))?;
      return Ok(RecordedUpload {
        upload_id: upload_id.to_owned(),
        bytes,
        duplicate: true,
        counted: true,
        would_refuse: false,
        usage,
        mode,
      });
    }
    check_owner(row.get("owner_id"), user, project)?;
    if row.get::<_, bool>("expired_pending") {
      sweep = true;
      continue;
    }
    if row.get::<_, i64>("entries") == 1 {
      let usage = Usage {
        used_bytes: row.get("used_bytes"),
        reserved_bytes: row.get("reserved_bytes"),
        limit_bytes: row.get("limit_bytes"),
      };
      return Ok(RecordedUpload {
        upload_id: upload_id.to_owned(),
        bytes,
        duplicate: false,
        counted: true,
        would_refuse: usage.over_limit(),
        usage,
        mode,
      });
    }
    match after_uncharged(conn, user, bytes, default_limit).await {
      // The statement's snapshot may predate a concurrent call's entry for this key (its row
      // lock then showed that call's bytes, not its key): the key decides first, so look again.
      Err(QuotaError::QuotaExceeded(_)) if key_recorded(conn, user, upload_id).await? => continue,
      other => other?,
    }
  }
  Err(contention_error("recordUpload"))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn usage_arithmetic() {
    let usage = Usage {
      used_bytes: 600,
      reserved_bytes: 300,
      limit_bytes: 1000,
    };
    assert_eq!(usage.remaining_bytes(), 100);
    assert!(usage.fits(100));
    assert!(!usage.fits(101));
    assert_eq!(usage.percent_used(), 90.0);
    let over = Usage {
      used_bytes: 1500,
      reserved_bytes: 0,
      limit_bytes: 1000,
    };
    assert_eq!(over.remaining_bytes(), 0);
    assert!(!over.fits(0));
    assert!(over.over_limit());
  }

  #[test]
  fn both_statements_differ_only_in_the_limit_clause() {
    assert!(RECORD_UPLOAD.contains("<= q.limit_bytes"));
    assert!(!RECORD_UPLOAD_SHADOW.contains("<= q.limit_bytes"));
    assert!(RECORD_UPLOAD_SHADOW.contains("allow_over_limit"));
  }

  #[test]
  fn every_charge_statement_refuses_while_expired_reservations_are_counted() {
    for sql in [RECORD_UPLOAD, RECORD_UPLOAD_SHADOW] {
      assert!(sql.contains(EXPIRED_PENDING), "{sql}");
      assert!(sql.contains("AND NOT (SELECT pending FROM stale)"), "{sql}");
    }
  }
}
