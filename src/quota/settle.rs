//! Settling a reservation: commit turns its bytes into usage, cancel gives them back. Both lock
//! the reservation row first, then the quota row, like the sweep, `removeProject` and the
//! batched commit (`coalesce_commit`), so they cannot deadlock with each other and a reservation
//! settles exactly once; a retry answers the first outcome.

use crate::db::pool::PgConnection;
use crate::error::{ConflictReason, QuotaError, Result};
use crate::ids::UserId;
use crate::quota::usage::{read_usage, Usage};
use crate::rollout::Mode;

#[derive(Debug, Clone)]
pub struct Settled {
  pub reservation_id: uuid::Uuid,
  pub user_id: String,
  pub project_id: String,
  /// Bytes the reservation held.
  pub reserved_bytes: i64,
  /// The actual size committed (cancel: 0).
  pub committed_bytes: i64,
  /// `committed`, `cancelled` or `expired`.
  pub status: String,
  /// Settled before by the same request: this call changed nothing.
  pub duplicate: bool,
  pub would_refuse: bool,
  pub mode: Mode,
  pub usage: Usage,
}

/// `$1` id, `$2` actual bytes (NULL: the bytes asked for), `$3` the owner, `$4` the ledger key,
/// `$5` the ledger kind. `$counted` is what the commit counts as used, `$limit` the
/// enforcement clause (see the three statements below).
macro_rules! commit_sql {
  ($limit:literal, $counted:literal) => {
    concat!(
      "
WITH r AS (
  SELECT id, user_id, project_id, bytes, coalesce(requested_bytes, bytes) AS requested, status,
         committed_bytes, expires_at <= now() AS expired,
         coalesce($2, requested_bytes, bytes) AS actual, object_key IS NOT NULL AS presigned
    FROM quota_reservations WHERE user_id = $3 AND id = $1 FOR UPDATE
), charged AS (
  UPDATE user_quotas q
     SET reserved_bytes = q.reserved_bytes - r.bytes,
         used_bytes = q.used_bytes + ",
      $counted,
      ",
         updated_at = now()
    FROM r
   WHERE q.user_id = r.user_id AND r.status = 'pending' AND NOT r.expired
     AND ",
      $limit,
      "
  RETURNING q.used_bytes, q.reserved_bytes, q.limit_bytes
), settled AS (
  UPDATE quota_reservations s SET status = 'committed', committed_bytes = r.actual, settled_at = now()
    FROM r, charged WHERE s.user_id = $3 AND s.id = $1
  RETURNING s.id
), entry AS (
  INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes, requested_bytes)
  SELECT r.user_id, r.project_id, $4, $5, ",
      $counted,
      ", nullif(r.actual, ",
      $counted,
      ") FROM r, charged
  RETURNING id
)
SELECT r.user_id, r.project_id::text AS project_id, r.bytes, r.requested, r.status, r.committed_bytes AS prior_committed,
       r.expired, r.actual,
       (SELECT count(*) FROM settled) + (SELECT count(*) FROM entry) AS writes,
       c.used_bytes, c.reserved_bytes, c.limit_bytes, r.presigned
  FROM (SELECT 1) AS one LEFT JOIN r ON true LEFT JOIN charged c ON true"
    )
  };
}

/// A commit larger than the reservation needs room for the difference; a smaller one always fits.
const COMMIT: &str = commit_sql!(
  "(r.actual <= r.bytes OR q.used_bytes + q.reserved_bytes - r.bytes + r.actual <= q.limit_bytes)",
  "r.actual"
);
/// `COMMIT` that leaves a presigned upload's reservation alone: its commit must first ask the
/// store for the object's size (`client::direct`). Lets an ordinary commit in enforce mode go out
/// as this one statement, without reading the reservation first.
const COMMIT_UNLESS_PRESIGNED: &str = commit_sql!(
  "NOT r.presigned
     AND (r.actual <= r.bytes OR q.used_bytes + q.reserved_bytes - r.bytes + r.actual <= q.limit_bytes)",
  "r.actual"
);
const COMMIT_SHADOW: &str = commit_sql!(
  "set_config('storage_quota.allow_over_limit', 'on', true) = 'on'",
  "r.actual"
);
/// Off mode counts no new bytes: at most what the reservation held.
const COMMIT_OFF: &str = commit_sql!("true", "least(r.actual, r.bytes)");

/// `$2` the owner. Cancelling a pending reservation (expired or not) gives its bytes back once.
const CANCEL: &str = "
WITH r AS (
  SELECT id, user_id, project_id, bytes, status FROM quota_reservations
   WHERE user_id = $2 AND id = $1 FOR UPDATE
), released AS (
  UPDATE user_quotas q SET reserved_bytes = q.reserved_bytes - r.bytes, updated_at = now()
    FROM r
   WHERE q.user_id = r.user_id AND r.status = 'pending'
  RETURNING q.used_bytes, q.reserved_bytes, q.limit_bytes
), settled AS (
  UPDATE quota_reservations s SET status = 'cancelled', settled_at = now()
    FROM released WHERE s.user_id = $2 AND s.id = $1
  RETURNING s.id
)
SELECT r.user_id, r.project_id::text AS project_id, r.bytes, r.status, (SELECT count(*) FROM settled) AS writes,
       c.used_bytes, c.reserved_bytes, c.limit_bytes
  FROM (SELECT 1) AS one LEFT JOIN r ON true LEFT JOIN released c ON true";

/// Where the committed bytes go in the ledger: an upload (the default) or a project copy.
pub struct LedgerEntry<'a> {
  pub key: &'a str,
  pub kind: &'a str,
}

pub(crate) fn settled_error(id: &uuid::Uuid, status: &str) -> QuotaError {
  QuotaError::conflict(
    ConflictReason::AlreadySettled,
    format!("reservation {id} is already {status}; it cannot be settled another way"),
  )
}

pub(crate) fn not_found(id: &uuid::Uuid) -> QuotaError {
  // The same words whether the id is unknown or another user's: nothing about their keys leaks.
  QuotaError::NotFound(format!("reservation {id} does not exist"))
}

/// Turns the owner's reservation into usage: `actual_bytes` (default: the bytes asked for).
/// Retried with the same size it answers the first outcome again (`duplicate`).
pub async fn commit(
  conn: &mut PgConnection,
  owner: &UserId,
  id: &uuid::Uuid,
  actual_bytes: Option<i64>,
  mode: Mode,
  entry: Option<LedgerEntry<'_>>,
) -> Result<Settled> {
  let sql = match mode {
    Mode::Enforce => COMMIT,
    Mode::Shadow => COMMIT_SHADOW,
    Mode::Off => COMMIT_OFF,
  };
  commit_with(conn, owner, id, actual_bytes, mode, entry, (sql, false))
    .await?
    .ok_or_else(|| QuotaError::Internal("a commit was left to the presigned path".into()))
}

/// [`commit`] in enforce mode of a reservation that may be a presigned upload's: `None` (nothing
/// written) when it is one still pending, whose commit must first learn the object's size.
pub async fn commit_unless_presigned(
  conn: &mut PgConnection,
  owner: &UserId,
  id: &uuid::Uuid,
  actual_bytes: Option<i64>,
) -> Result<Option<Settled>> {
  let sql = (COMMIT_UNLESS_PRESIGNED, true);
  commit_with(conn, owner, id, actual_bytes, Mode::Enforce, None, sql).await
}

async fn commit_with(
  conn: &mut PgConnection,
  owner: &UserId,
  id: &uuid::Uuid,
  actual_bytes: Option<i64>,
  mode: Mode,
  entry: Option<LedgerEntry<'_>>,
  (sql, leave_presigned): (&str, bool),
) -> Result<Option<Settled>> {
  let default_key = format!("reservation {id}");
  let entry = entry.unwrap_or(LedgerEntry {
    key: &default_key,
    kind: "upload",
  });
  let row = conn
    .query_one(
      sql,
      &[id, &actual_bytes, &owner.as_str(), &entry.key, &entry.kind],
    )
    .await?;
  if row.get::<_, Option<String>>("user_id").is_none() {
    return Err(not_found(id));
  }
  let status: String = row.get("status");
  let held: i64 = row.get("bytes");
  let actual: i64 = row.get("actual");
  let settled = |status: &str, duplicate, would_refuse, usage| Settled {
    reservation_id: *id,
    user_id: owner.as_str().to_owned(),
    project_id: row.get("project_id"),
    reserved_bytes: held,
    committed_bytes: actual,
    status: status.to_owned(),
    duplicate,
    would_refuse,
    mode,
    usage,
  };
  if row.get::<_, i64>("writes") == 2 {
    let usage = Usage::from_row(&row, 9);
    // What enforcement would have said, from the numbers before this commit.
    let counted = if mode == Mode::Off {
      actual.min(held)
    } else {
      actual
    };
    let before = usage.used_bytes + usage.reserved_bytes - counted + held;
    let would_refuse = actual > held && before - held + actual > usage.limit_bytes;
    return Ok(Some(settled("committed", false, would_refuse, usage)));
  }
  match status.as_str() {
    "committed" if row.get::<_, Option<i64>>("prior_committed") == Some(actual) => {
      let usage = read_usage(conn, owner)
        .await?
        .ok_or_else(|| QuotaError::Internal("quota row missing for a reservation".into()))?;
      return Ok(Some(settled("committed", true, false, usage)));
    }
    "committed" => {
      return Err(committed_with_another_size(
        id,
        row
          .get::<_, Option<i64>>("prior_committed")
          .unwrap_or_default(),
      ))
    }
    "expired" => return Err(expired_error(id)),
    "pending" => {}
    other => return Err(settled_error(id, other)),
  }
  if leave_presigned && row.get::<_, bool>("presigned") {
    return Ok(None);
  }
  if row.get::<_, bool>("expired") {
    // Give the expired bytes back now rather than at the next charge.
    crate::quota::usage::sweep_user(conn, owner).await?;
    return Err(expired_error(id));
  }
  if mode != Mode::Enforce {
    return Err(QuotaError::Internal(format!(
      "reservation {id} is pending but its commit changed nothing"
    )));
  }
  // Pending and live, yet not charged: the larger actual size does not fit.
  let usage = read_usage(conn, owner)
    .await?
    .ok_or_else(|| QuotaError::Internal("quota row missing for a reservation".into()))?;
  Err(QuotaError::QuotaExceeded(usage.shortfall(actual - held)))
}

/// A retried commit with another size than the first.
pub(crate) fn committed_with_another_size(id: &uuid::Uuid, prior: i64) -> QuotaError {
  QuotaError::conflict(
    ConflictReason::KeyReused,
    format!(
      "reservation {id} was committed with {prior} bytes; a commit with another size is a new upload"
    ),
  )
}

pub(crate) fn expired_error(id: &uuid::Uuid) -> QuotaError {
  QuotaError::ReservationExpired(format!(
    "reservation {id} expired before it was committed; its bytes were given back. Reserve again."
  ))
}

/// Gives the owner's pending reservation's bytes back. Cancelling it again answers the first
/// outcome (`duplicate`); one that expired changes nothing and says so; a committed one is a
/// `CONFLICT` (`ALREADY_SETTLED`).
pub async fn cancel(
  conn: &mut PgConnection,
  owner: &UserId,
  id: &uuid::Uuid,
  mode: Mode,
) -> Result<Settled> {
  let row = conn.query_one(CANCEL, &[id, &owner.as_str()]).await?;
  if row.get::<_, Option<String>>("user_id").is_none() {
    return Err(not_found(id));
  }
  let status: String = row.get("status");
  if status == "committed" {
    return Err(settled_error(id, &status));
  }
  let released = row.get::<_, i64>("writes") == 1;
  let usage = if released {
    Usage::from_row(&row, 5)
  } else {
    read_usage(conn, owner)
      .await?
      .ok_or_else(|| QuotaError::Internal("quota row missing for a reservation".into()))?
  };
  Ok(Settled {
    reservation_id: *id,
    user_id: owner.as_str().to_owned(),
    project_id: row.get("project_id"),
    reserved_bytes: row.get("bytes"),
    committed_bytes: 0,
    duplicate: !released && status == "cancelled",
    status: if released { "cancelled".into() } else { status },
    would_refuse: false,
    mode,
    usage,
  })
}
