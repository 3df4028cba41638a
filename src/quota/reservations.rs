//! Reservations: bytes held for an upload whose bytes arrive later. Reserving counts them at
//! once (`reserved_bytes`); committing turns them into usage, cancelling or expiry gives them
//! back (`settle.rs`, re-exported here).

use chrono::{DateTime, Utc};

use crate::db::pool::PgConnection;
use crate::error::{ConflictReason, QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::owner::check_owner;
use crate::quota::usage::{
  after_uncharged, charge_query_one, contention_error, read_usage, Usage, CHARGE_ATTEMPTS,
};
use crate::rollout::Mode;

pub use crate::quota::settle::{cancel, commit, commit_unless_presigned, LedgerEntry, Settled};

#[derive(Debug, Clone)]
pub struct Reservation {
  pub reservation_id: uuid::Uuid,
  pub user_id: String,
  pub project_id: String,
  /// Bytes asked for (held too, except in `off` mode, which holds nothing).
  pub bytes: i64,
  pub expires_at: DateTime<Utc>,
  /// The reservation id was used before for this same request; nothing more was held.
  pub duplicate: bool,
  pub would_refuse: bool,
  pub usage: Usage,
  pub mode: Mode,
}

/// `$3` the bytes asked for; `$held` what is held (the same, or 0 in `off` mode); `$limit` the
/// enforcement clause. Holds nothing while the user has expired reservations still counted
/// (`usage::EXPIRED_PENDING`: the caller sweeps them with the next attempt). A reservation id is the user's own key (the primary key is
/// `(user_id, id)`), so another user's ids are never seen.
macro_rules! reserve_sql {
  ($limit:literal, $held:literal) => {
    concat!(
      "
WITH owner AS (
  SELECT p.user_id FROM storage_quota_project($2) p
), prior AS (
  SELECT r.project_id, coalesce(r.requested_bytes, r.bytes) AS bytes, r.status, r.expires_at
    FROM quota_reservations r WHERE r.user_id = $1 AND r.id = $4
), stale AS (
  SELECT EXISTS (SELECT 1 FROM quota_reservations r \
  WHERE r.user_id = $1 AND r.status = 'pending' AND r.expires_at <= now()) AS pending
), charged AS (
  UPDATE user_quotas q SET reserved_bytes = q.reserved_bytes + ",
      $held,
      ", updated_at = now()
   WHERE q.user_id = $1
     AND NOT EXISTS (SELECT 1 FROM prior)
     AND EXISTS (SELECT 1 FROM owner WHERE owner.user_id = $1)
     AND NOT (SELECT pending FROM stale)
     AND ",
      $limit,
      "
  RETURNING q.used_bytes, q.reserved_bytes, q.limit_bytes
), held AS (
  INSERT INTO quota_reservations (id, user_id, project_id, bytes, requested_bytes, expires_at)
  SELECT $4, $1, $2, ",
      $held,
      ", nullif($3::bigint, ",
      $held,
      "), now() + make_interval(secs => $5::float8 / 1000) FROM charged
  RETURNING expires_at
)
SELECT (SELECT user_id FROM owner) AS owner_id, (SELECT expires_at FROM held) AS expires_at,
       c.used_bytes, c.reserved_bytes, c.limit_bytes,
       p.project_id::text AS prior_project, p.bytes AS prior_bytes,
       p.status AS prior_status, p.expires_at AS prior_expires_at,
       (SELECT pending FROM stale) AS expired_pending
  FROM (SELECT 1) AS one LEFT JOIN charged c ON true LEFT JOIN prior p ON true"
    )
  };
}

const RESERVE: &str = reserve_sql!(
  "q.used_bytes + q.reserved_bytes + $3 <= q.limit_bytes",
  "$3"
);
/// Shadow mode: holds past the limit, lifting the database guard for this statement only.
const RESERVE_SHADOW: &str = reserve_sql!(
  "set_config('storage_quota.allow_over_limit', 'on', true) = 'on'",
  "$3"
);
/// Off mode: records the reservation (so commit and cancel work as always) but holds nothing.
const RESERVE_OFF: &str = reserve_sql!("true", "0");

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
  let sql = match mode {
    Mode::Enforce => RESERVE,
    Mode::Shadow => RESERVE_SHADOW,
    Mode::Off => RESERVE_OFF,
  };
  // The sweep goes with the charge only when the charge found expired reservations to sweep.
  let mut sweep = false;
  for _ in 0..CHARGE_ATTEMPTS {
    let ttl = ttl_ms as f64;
    let project_id = project.as_str();
    let row = charge_query_one(
      conn,
      user,
      std::mem::take(&mut sweep),
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
    if let Some(prior_project) = row.get::<_, Option<String>>("prior_project") {
      let prior_bytes: i64 = row.get("prior_bytes");
      if prior_project != project.as_str() || prior_bytes != bytes {
        return Err(key_reused(&reservation_id));
      }
      let usage = read_usage(conn, user)
        .await?
        .ok_or_else(|| QuotaError::Internal("quota row missing for a reservation".into()))?;
      return Ok(Reservation {
        reservation_id,
        user_id: user.as_str().to_owned(),
        project_id: project.to_string(),
        bytes,
        expires_at: row.get("prior_expires_at"),
        duplicate: true,
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
    if let Some(expires_at) = row.get::<_, Option<DateTime<Utc>>>("expires_at") {
      let usage = Usage::from_row(&row, 2);
      return Ok(Reservation {
        reservation_id,
        user_id: user.as_str().to_owned(),
        project_id: project.to_string(),
        bytes,
        expires_at,
        duplicate: false,
        would_refuse: match mode {
          Mode::Off => !usage.fits(bytes),
          _ => usage.over_limit(),
        },
        usage,
        mode,
      });
    }
    match after_uncharged(conn, user, bytes, default_limit).await {
      // The statement's snapshot may predate a concurrent call's reservation under this id (its
      // row lock then showed that call's bytes, not its id): the id decides first, so look again.
      Err(QuotaError::QuotaExceeded(_))
        if reservation_made(conn, user, &reservation_id).await? =>
      {
        continue
      }
      other => other?,
    }
  }
  Err(contention_error("reserveUpload"))
}

async fn reservation_made(conn: &mut PgConnection, user: &UserId, id: &uuid::Uuid) -> Result<bool> {
  let row = conn
    .query_one(
      "SELECT EXISTS (SELECT 1 FROM quota_reservations WHERE user_id = $1 AND id = $2)",
      &[&user.as_str(), id],
    )
    .await?;
  Ok(row.get(0))
}

/// A reservation id used before for another project or size.
pub fn key_reused(id: &uuid::Uuid) -> QuotaError {
  QuotaError::conflict(
    ConflictReason::KeyReused,
    format!(
      "reservation {id} was made before for another project or size; use a new reservationId"
    ),
  )
}

/// Gives back every expired reservation, user by user. Returns how many users were swept.
pub async fn sweep_all(conn: &mut PgConnection) -> Result<u64> {
  let mut swept = 0;
  loop {
    let users = conn.query(USERS_WITH_EXPIRED, &[]).await?;
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

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn every_reserve_statement_refuses_while_expired_reservations_are_counted() {
    for sql in [RESERVE, RESERVE_SHADOW, RESERVE_OFF] {
      assert!(sql.contains(crate::quota::usage::EXPIRED_PENDING), "{sql}");
      assert!(sql.contains("AND NOT (SELECT pending FROM stale)"), "{sql}");
    }
  }
}
