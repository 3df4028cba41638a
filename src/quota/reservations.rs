//! Reservations: bytes held for an upload whose bytes arrive later. Reserving counts them at
//! once (`reserved_bytes`); committing turns them into usage, cancelling or expiry gives them
//! back. Commit and cancel lock the reservation row first, then the quota row, like the sweep,
//! so they cannot deadlock with each other and a reservation settles exactly once.

use chrono::{DateTime, Utc};

use crate::db::pool::PgConnection;
use crate::error::{ConflictReason, QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::owner::check_owner;
use crate::quota::usage::{
  after_uncharged, contention_error, read_usage, swept_query_one, Usage, CHARGE_ATTEMPTS,
};
use crate::rollout::Mode;

#[derive(Debug, Clone)]
pub struct Reservation {
  pub reservation_id: uuid::Uuid,
  pub user_id: String,
  pub project_id: String,
  pub bytes: i64,
  pub expires_at: DateTime<Utc>,
  pub would_refuse: bool,
  pub usage: Usage,
  pub mode: Mode,
}

#[derive(Debug, Clone)]
pub struct Settled {
  pub reservation_id: uuid::Uuid,
  pub user_id: String,
  pub project_id: String,
  /// Bytes the reservation held.
  pub reserved_bytes: i64,
  /// Bytes now counted as used (commit) or 0 (cancel).
  pub committed_bytes: i64,
  /// `committed`, `cancelled` or `expired`.
  pub status: String,
  pub usage: Usage,
}

macro_rules! reserve_sql {
  ($limit:literal) => {
    concat!(
      "
WITH owner AS (
  SELECT p.user_id FROM storage_quota_project($2) p
), prior AS (
  SELECT r.user_id, r.project_id, r.bytes, r.status, r.expires_at FROM quota_reservations r WHERE r.id = $4
), charged AS (
  UPDATE user_quotas q SET reserved_bytes = q.reserved_bytes + $3, updated_at = now()
   WHERE q.user_id = $1
     AND NOT EXISTS (SELECT 1 FROM prior)
     AND EXISTS (SELECT 1 FROM owner WHERE owner.user_id = $1)
     AND ",
      $limit,
      "
  RETURNING q.used_bytes, q.reserved_bytes, q.limit_bytes
), held AS (
  INSERT INTO quota_reservations (id, user_id, project_id, bytes, expires_at)
  SELECT $4, $1, $2, $3, now() + make_interval(secs => $5::float8 / 1000) FROM charged
  RETURNING expires_at
)
SELECT (SELECT user_id FROM owner) AS owner_id, (SELECT expires_at FROM held) AS expires_at,
       c.used_bytes, c.reserved_bytes, c.limit_bytes,
       p.user_id AS prior_user, p.project_id AS prior_project, p.bytes AS prior_bytes,
       p.status AS prior_status, p.expires_at AS prior_expires_at
  FROM (SELECT 1) AS one LEFT JOIN charged c ON true LEFT JOIN prior p ON true"
    )
  };
}

const RESERVE: &str = reserve_sql!("q.used_bytes + q.reserved_bytes + $3 <= q.limit_bytes");
const RESERVE_SHADOW: &str =
  reserve_sql!("set_config('storage_quota.allow_over_limit', 'on', true) = 'on'");

/// `$2` actual bytes (NULL: the reserved amount), `$3` the caller's user id or NULL, `$4` the
/// ledger key, `$5` the ledger kind. A commit larger than the reservation needs room for the
/// difference; a smaller one always succeeds.
const COMMIT: &str = "
WITH r AS (
  SELECT id, user_id, project_id, bytes, status, expires_at <= now() AS expired
    FROM quota_reservations WHERE id = $1 FOR UPDATE
), charged AS (
  UPDATE user_quotas q
     SET reserved_bytes = q.reserved_bytes - r.bytes,
         used_bytes = q.used_bytes + coalesce($2, r.bytes),
         updated_at = now()
    FROM r
   WHERE q.user_id = r.user_id AND r.status = 'pending' AND NOT r.expired
     AND ($3::text IS NULL OR r.user_id = $3)
     AND (coalesce($2, r.bytes) <= r.bytes
          OR q.used_bytes + q.reserved_bytes - r.bytes + $2 <= q.limit_bytes)
  RETURNING q.used_bytes, q.reserved_bytes, q.limit_bytes
), settled AS (
  UPDATE quota_reservations s SET status = 'committed', committed_bytes = coalesce($2, s.bytes), settled_at = now()
    FROM charged WHERE s.id = $1
  RETURNING s.id
), entry AS (
  INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
  SELECT r.user_id, r.project_id, $4, $5, coalesce($2, r.bytes) FROM r, charged
  RETURNING id
)
SELECT r.user_id, r.project_id, r.bytes, r.status, r.expired,
       (SELECT count(*) FROM settled) + (SELECT count(*) FROM entry) AS writes,
       c.used_bytes, c.reserved_bytes, c.limit_bytes
  FROM (SELECT 1) AS one LEFT JOIN r ON true LEFT JOIN charged c ON true";

/// `$2` the caller's user id or NULL. Cancelling a pending reservation (expired or not) gives
/// its bytes back once; cancelling a settled one changes nothing.
const CANCEL: &str = "
WITH r AS (
  SELECT id, user_id, project_id, bytes, status FROM quota_reservations WHERE id = $1 FOR UPDATE
), released AS (
  UPDATE user_quotas q SET reserved_bytes = q.reserved_bytes - r.bytes, updated_at = now()
    FROM r
   WHERE q.user_id = r.user_id AND r.status = 'pending' AND ($2::text IS NULL OR r.user_id = $2)
  RETURNING q.used_bytes, q.reserved_bytes, q.limit_bytes
), settled AS (
  UPDATE quota_reservations s SET status = 'cancelled', settled_at = now()
    FROM released WHERE s.id = $1
  RETURNING s.id
)
SELECT r.user_id, r.project_id, r.bytes, r.status, (SELECT count(*) FROM settled) AS writes,
       c.used_bytes, c.reserved_bytes, c.limit_bytes
  FROM (SELECT 1) AS one LEFT JOIN r ON true LEFT JOIN released c ON true";

const USERS_WITH_EXPIRED: &str = "
SELECT DISTINCT user_id FROM quota_reservations
 WHERE status = 'pending' AND expires_at <= now() LIMIT 1000";

/// Holds `bytes` for an upload to `project` for `ttl_ms`. With a caller-chosen `id`, a retry
/// after a lost reply finds the reservation already made and holds nothing more.
#[allow(clippy::too_many_arguments)]
pub async fn reserve(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
  bytes: i64,
  ttl_ms: i64,
  default_limit: i64,
  mode: Mode,
  id: Option<uuid::Uuid>,
) -> Result<Reservation> {
  let reservation_id = id.unwrap_or_else(uuid::Uuid::new_v4);
  let sql = if mode == Mode::Enforce {
    RESERVE
  } else {
    RESERVE_SHADOW
  };
  for _ in 0..CHARGE_ATTEMPTS {
    let ttl = ttl_ms as f64;
    let project_id = project.as_str();
    let row = swept_query_one(
      conn,
      user,
      sql,
      &[&user.as_str(), &project_id, &bytes, &reservation_id, &ttl],
    )
    .await;
    let row = match row {
      Ok(row) => row,
      // A concurrent call with the same reservation id inserted it first: read it next time.
      Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
        continue
      }
      Err(error) => return Err(error.into()),
    };
    if let Some(prior_user) = row.get::<_, Option<String>>("prior_user") {
      let same = prior_user == user.as_str()
        && row.get::<_, &str>("prior_project") == project.as_str()
        && row.get::<_, i64>("prior_bytes") == bytes;
      let status: String = row.get("prior_status");
      if !same || status != "pending" {
        return Err(QuotaError::conflict(
          ConflictReason::KeyReused,
          format!(
          "reservation {reservation_id} already exists ({status}) for another user, project or size; use a new reservationId"
        )));
      }
      let usage = read_usage(conn, user)
        .await?
        .ok_or_else(|| QuotaError::Internal("quota row missing for a reservation".into()))?;
      return Ok(Reservation {
        reservation_id,
        user_id: prior_user,
        project_id: project.to_string(),
        bytes,
        expires_at: row.get("prior_expires_at"),
        would_refuse: false,
        usage,
        mode,
      });
    }
    check_owner(row.get("owner_id"), user, project)?;
    if let Some(expires_at) = row.get::<_, Option<DateTime<Utc>>>("expires_at") {
      let usage = Usage {
        used_bytes: row.get("used_bytes"),
        reserved_bytes: row.get("reserved_bytes"),
        limit_bytes: row.get("limit_bytes"),
      };
      return Ok(Reservation {
        reservation_id,
        user_id: user.as_str().to_owned(),
        project_id: project.to_string(),
        bytes,
        expires_at,
        would_refuse: usage.over_limit(),
        usage,
        mode,
      });
    }
    after_uncharged(conn, user, bytes, default_limit).await?;
  }
  Err(contention_error("reserveUpload"))
}

/// Where the committed bytes go in the ledger: an upload (the default) or a project copy.
pub struct LedgerEntry<'a> {
  pub key: &'a str,
  pub kind: &'a str,
}

fn settled_error(id: &uuid::Uuid, status: &str) -> QuotaError {
  QuotaError::conflict(
    ConflictReason::AlreadySettled,
    format!("reservation {id} is already {status}; it cannot be settled again"),
  )
}

/// Turns a reservation into usage: `actual_bytes` (default: the reserved amount).
pub async fn commit(
  conn: &mut PgConnection,
  id: &uuid::Uuid,
  actual_bytes: Option<i64>,
  caller: Option<&UserId>,
  entry: Option<LedgerEntry<'_>>,
) -> Result<Settled> {
  let default_key = format!("reservation {id}");
  let entry = entry.unwrap_or(LedgerEntry {
    key: &default_key,
    kind: "upload",
  });
  let statement = conn.prepared(COMMIT).await?;
  let caller_id = caller.map(|u| u.as_str());
  let row = conn
    .client
    .query_one(
      &statement,
      &[id, &actual_bytes, &caller_id, &entry.key, &entry.kind],
    )
    .await?;
  let owner = reservation_owner(&row, id, caller)?;
  let status: String = row.get("status");
  let reserved_bytes: i64 = row.get("bytes");
  let project_id: String = row.get("project_id");
  if row.get::<_, i64>("writes") == 2 {
    return Ok(Settled {
      reservation_id: *id,
      user_id: owner,
      project_id,
      reserved_bytes,
      committed_bytes: actual_bytes.unwrap_or(reserved_bytes),
      status: "committed".into(),
      usage: Usage::from_row(&row, 6),
    });
  }
  if status != "pending" {
    return Err(if status == "expired" {
      expired_error(id)
    } else {
      settled_error(id, &status)
    });
  }
  if row.get::<_, bool>("expired") {
    // Give the expired bytes back now rather than at the next charge.
    let user = UserId::parse(&owner)?;
    crate::quota::usage::sweep_user(conn, &user).await?;
    return Err(expired_error(id));
  }
  // Pending and live, yet not charged: the larger actual size does not fit.
  let user = UserId::parse(&owner)?;
  let usage = read_usage(conn, &user)
    .await?
    .ok_or_else(|| QuotaError::Internal("quota row missing for a reservation".into()))?;
  let extra = actual_bytes.unwrap_or(reserved_bytes) - reserved_bytes;
  Err(QuotaError::QuotaExceeded(usage.shortfall(extra)))
}

/// The reservation's owner from a commit/cancel row: `NOT_FOUND` when there is no such
/// reservation, `FORBIDDEN` when the caller named another user.
fn reservation_owner(
  row: &tokio_postgres::Row,
  id: &uuid::Uuid,
  caller: Option<&UserId>,
) -> Result<String> {
  let Some(owner) = row.get::<_, Option<String>>("user_id") else {
    return Err(QuotaError::NotFound(format!(
      "reservation {id} does not exist"
    )));
  };
  if caller.is_some_and(|c| c.as_str() != owner) {
    return Err(QuotaError::Forbidden(format!(
      "reservation {id} belongs to another user"
    )));
  }
  Ok(owner)
}

fn expired_error(id: &uuid::Uuid) -> QuotaError {
  QuotaError::ReservationExpired(format!(
    "reservation {id} expired before it was committed; its bytes were given back. Reserve again."
  ))
}

/// Gives a pending reservation's bytes back. Cancelling one that was already cancelled or
/// expired changes nothing and says so; cancelling a committed one is a `CONFLICT`.
pub async fn cancel(
  conn: &mut PgConnection,
  id: &uuid::Uuid,
  caller: Option<&UserId>,
) -> Result<Settled> {
  let statement = conn.prepared(CANCEL).await?;
  let caller_id = caller.map(|u| u.as_str());
  let row = conn.client.query_one(&statement, &[id, &caller_id]).await?;
  let owner = reservation_owner(&row, id, caller)?;
  let status: String = row.get("status");
  if status == "committed" {
    return Err(settled_error(id, &status));
  }
  let released = row.get::<_, i64>("writes") == 1;
  let usage = if released {
    Usage::from_row(&row, 5)
  } else {
    read_usage(conn, &UserId::parse(&owner)?)
      .await?
      .ok_or_else(|| QuotaError::Internal("quota row missing for a reservation".into()))?
  };
  Ok(Settled {
    reservation_id: *id,
    user_id: owner,
    project_id: row.get("project_id"),
    reserved_bytes: row.get("bytes"),
    committed_bytes: 0,
    status: if released { "cancelled".into() } else { status },
    usage,
  })
}

/// Gives back every expired reservation, user by user. Returns how many users were swept.
pub async fn sweep_all(conn: &mut PgConnection) -> Result<u64> {
  let mut swept = 0;
  loop {
    let users = conn.client.query(USERS_WITH_EXPIRED, &[]).await?;
    if users.is_empty() {
      return Ok(swept);
    }
    for row in users {
      let user = UserId::parse(row.get::<_, &str>(0))?;
      crate::quota::usage::sweep_user(conn, &user).await?;
      swept += 1;
    }
  }
}
