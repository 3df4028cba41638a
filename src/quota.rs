//! Checking and charging a user's quota. Every write is one SQL statement whose row lock on
//! `user_quotas` serialises concurrent uploads of a user, and whose `WHERE` re-checks the limit
//! against the latest row, so no interleaving of calls can pass the limit.

use tokio_postgres::error::SqlState;

use crate::error::{QuotaError, QuotaShortfall, Result};
use crate::format::percent_used;
use crate::ids::{ProjectId, UserId};
use crate::pool::PgConnection;

/// A user's numbers at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
  pub used_bytes: i64,
  pub reserved_bytes: i64,
  pub limit_bytes: i64,
}

impl Usage {
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

  fn shortfall(&self, requested_bytes: i64) -> QuotaShortfall {
    QuotaShortfall {
      requested_bytes,
      used_bytes: self.used_bytes,
      reserved_bytes: self.reserved_bytes,
      limit_bytes: self.limit_bytes,
    }
  }
}

#[derive(Debug, Clone, Copy)]
pub struct QuotaCheck {
  pub allowed: bool,
  pub requested_bytes: i64,
  pub usage: Usage,
}

#[derive(Debug, Clone)]
pub struct RecordedUpload {
  pub upload_id: String,
  pub bytes: i64,
  /// The upload id was recorded before; nothing was charged this time.
  pub duplicate: bool,
  pub usage: Usage,
}

pub const SELECT_USAGE: &str =
  "SELECT used_bytes, reserved_bytes, limit_bytes FROM user_quotas WHERE user_id = $1";

pub const ENSURE_QUOTA_ROW_SQL: &str =
  "INSERT INTO user_quotas (user_id, limit_bytes) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING";

/// One round trip: charge the bytes and write the ledger entry, only if the upload id is new,
/// the project belongs to the user and the bytes fit. The outer SELECT reports which of those
/// failed. `prior` and `owner` come from the statement's snapshot; a concurrent insert of the
/// same upload id is caught by the ledger's unique key and retried.
const RECORD_UPLOAD: &str = "
WITH owner AS (
  SELECT p.user_id FROM projects p WHERE p.id = $2
), prior AS (
  SELECT l.bytes, l.project_id FROM quota_ledger l WHERE l.user_id = $1 AND l.idempotency_key = $3
), charged AS (
  UPDATE user_quotas q
     SET used_bytes = q.used_bytes + $4, updated_at = now()
   WHERE q.user_id = $1
     AND NOT EXISTS (SELECT 1 FROM prior)
     AND EXISTS (SELECT 1 FROM owner WHERE owner.user_id = $1)
     AND q.used_bytes + q.reserved_bytes + $4 <= q.limit_bytes
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
       c.used_bytes, c.reserved_bytes, c.limit_bytes
  FROM (SELECT 1) AS one LEFT JOIN charged c ON true";

async fn read_usage(conn: &mut PgConnection, user: &UserId) -> Result<Option<Usage>> {
  let statement = conn.prepared(SELECT_USAGE).await?;
  let row = conn.client.query_opt(&statement, &[&user.as_str()]).await?;
  Ok(row.map(|row| Usage {
    used_bytes: row.get(0),
    reserved_bytes: row.get(1),
    limit_bytes: row.get(2),
  }))
}

/// A user without a row has the default quota and nothing used.
pub async fn check_quota(
  conn: &mut PgConnection,
  user: &UserId,
  bytes: i64,
  default_limit: i64,
) -> Result<QuotaCheck> {
  let usage = read_usage(conn, user).await?.unwrap_or(Usage {
    used_bytes: 0,
    reserved_bytes: 0,
    limit_bytes: default_limit,
  });
  Ok(QuotaCheck {
    allowed: usage.fits(bytes),
    requested_bytes: bytes,
    usage,
  })
}

pub async fn ensure_quota_row(
  conn: &mut PgConnection,
  user: &UserId,
  default_limit: i64,
) -> Result<()> {
  let statement = conn.prepared(ENSURE_QUOTA_ROW_SQL).await?;
  conn
    .client
    .execute(&statement, &[&user.as_str(), &default_limit])
    .await?;
  Ok(())
}

/// Charges `bytes` for an upload to `project`, once per `upload_id`.
pub async fn record_upload(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
  bytes: i64,
  upload_id: &str,
  default_limit: i64,
) -> Result<RecordedUpload> {
  // Each retry follows a state change we cannot see from one snapshot: the quota row was just
  // created, a concurrent call inserted the same upload id, or usage shrank after a refusal.
  for _ in 0..4 {
    let statement = conn.prepared(RECORD_UPLOAD).await?;
    let result = conn
      .client
      .query_one(
        &statement,
        &[&user.as_str(), &project.uuid(), &upload_id, &bytes],
      )
      .await;
    let row = match result {
      Ok(row) => row,
      Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => continue,
      Err(error) => return Err(error.into()),
    };
    let owner: Option<String> = row.get("owner_id");
    let prior_bytes: Option<i64> = row.get("prior_bytes");
    let prior_project: Option<uuid::Uuid> = row.get("prior_project");
    let entries: i64 = row.get("entries");

    if let Some(prior_bytes) = prior_bytes {
      if prior_bytes != bytes || prior_project != Some(project.uuid()) {
        return Err(QuotaError::Conflict(format!(
          "uploadId {upload_id:?} was already recorded with {prior_bytes} bytes for another project or size; use a new uploadId for a new upload"
        )));
      }
      let usage = read_usage(conn, user)
        .await?
        .ok_or_else(|| QuotaError::Internal("quota row vanished after a recorded upload".into()))?;
      return Ok(RecordedUpload {
        upload_id: upload_id.to_owned(),
        bytes,
        duplicate: true,
        usage,
      });
    }
    match owner {
      None => {
        return Err(QuotaError::NotFound(format!(
          "project {project} does not exist"
        )))
      }
      Some(owner) if owner != user.as_str() => {
        return Err(QuotaError::Forbidden(format!(
          "project {project} belongs to another user"
        )))
      }
      Some(_) => {}
    }
    if entries == 1 {
      return Ok(RecordedUpload {
        upload_id: upload_id.to_owned(),
        bytes,
        duplicate: false,
        usage: Usage {
          used_bytes: row.get("used_bytes"),
          reserved_bytes: row.get("reserved_bytes"),
          limit_bytes: row.get("limit_bytes"),
        },
      });
    }
    // Not charged: either the user has no quota row yet, or the bytes do not fit. Read the
    // latest numbers (a fresh snapshot) to tell which, and to explain a refusal truthfully.
    match read_usage(conn, user).await? {
      None => ensure_quota_row(conn, user, default_limit).await?,
      Some(usage) if usage.fits(bytes) => continue,
      Some(usage) => return Err(QuotaError::QuotaExceeded(usage.shortfall(bytes))),
    }
  }
  Err(QuotaError::Db(
    "recordUpload could not settle after several attempts under heavy contention; retry with the same uploadId".into(),
  ))
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
  }
}
