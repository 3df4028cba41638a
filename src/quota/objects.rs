//! The database side of objects the library handles itself: presigned uploads (which object a
//! reservation allowed, which ones the sweep must delete) and moving a project's record from
//! one backend to another.

use crate::db::pool::PgConnection;
use crate::error::{ConflictReason, QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::owner::check_owner;
use crate::quota::projects::ProjectStoragePath;

/// A reservation as commit needs it before settling: whose, which project, which object.
#[derive(Debug, Clone)]
pub struct ReservedObject {
  pub user_id: String,
  pub project_id: String,
  pub object_key: Option<String>,
  pub status: String,
  /// The project's storage record, when it has one.
  pub backend: Option<String>,
}

/// Remembers the object a presigned reservation may write. Idempotent for the same object; a
/// reservation already tied to another object is a `CONFLICT`.
pub async fn attach_object(
  conn: &mut PgConnection,
  user: &UserId,
  reservation: &uuid::Uuid,
  object_key: &str,
) -> Result<()> {
  let row = conn
    .query_one(
      "WITH set AS (
         UPDATE quota_reservations SET object_key = $2
          WHERE user_id = $3 AND id = $1 AND status = 'pending'
            AND (object_key IS NULL OR object_key = $2)
         RETURNING id)
       SELECT (SELECT count(*) FROM set) AS set_rows,
              (SELECT object_key FROM quota_reservations WHERE user_id = $3 AND id = $1) AS current",
      &[reservation, &object_key, &user.as_str()],
    )
    .await?;
  if row.get::<_, i64>(0) == 1 {
    return Ok(());
  }
  Err(QuotaError::conflict(
    ConflictReason::KeyReused,
    format!(
      "reservation {reservation} is settled or already presigned for {:?}; use a new reservationId",
      row.get::<_, Option<String>>(1).unwrap_or_default()
    ),
  ))
}

/// The owner's reservation `reservation` (ids are scoped to their user).
pub async fn reserved_object(
  conn: &mut PgConnection,
  owner: &UserId,
  reservation: &uuid::Uuid,
) -> Result<Option<ReservedObject>> {
  let row = conn
    .query_opt(
      "SELECT r.user_id, r.project_id, r.object_key, r.status, sp.backend
         FROM quota_reservations r
         LEFT JOIN project_storage_paths sp ON sp.project_id = r.project_id
        WHERE r.user_id = $2 AND r.id = $1",
      &[reservation, &owner.as_str()],
    )
    .await?;
  Ok(row.map(|row| ReservedObject {
    user_id: row.get(0),
    project_id: row.get(1),
    object_key: row.get(2),
    status: row.get(3),
    backend: row.get(4),
  }))
}

/// A presigned object whose reservation ended without a commit.
#[derive(Debug, Clone)]
pub struct AbandonedObject {
  pub reservation_id: uuid::Uuid,
  pub user_id: String,
  pub project_id: String,
  pub object_key: String,
  pub backend: Option<String>,
  /// False when a later upload of the same object committed (or is still in flight): the
  /// object is that upload's now and must stay.
  pub delete: bool,
}

/// Presigned objects of expired or cancelled reservations, a page at a time.
const ABANDONED: &str = "
SELECT r.id, r.user_id, r.project_id, r.object_key, sp.backend,
       NOT EXISTS (
         SELECT 1 FROM quota_reservations o
          WHERE o.project_id = r.project_id AND o.object_key = r.object_key AND o.id <> r.id
            AND ((o.status = 'committed' AND o.settled_at >= r.created_at)
                 OR (o.status = 'pending' AND o.expires_at > now()))) AS delete
  FROM quota_reservations r
  LEFT JOIN project_storage_paths sp ON sp.project_id = r.project_id
 WHERE r.object_key IS NOT NULL
   AND (r.status IN ('expired', 'cancelled') OR (r.status = 'pending' AND r.expires_at <= now()))
   AND ($1::uuid IS NULL OR (r.id = $1 AND r.user_id = $2))
 LIMIT 500";

/// `only`: one user's reservation (ids are scoped to their user).
pub async fn abandoned_objects(
  conn: &mut PgConnection,
  only: Option<(&UserId, &uuid::Uuid)>,
) -> Result<Vec<AbandonedObject>> {
  let (id, user) = (only.map(|o| *o.1), only.map(|o| o.0.as_str()));
  let rows = conn.query(ABANDONED, &[&id, &user]).await?;
  Ok(
    rows
      .iter()
      .map(|row| AbandonedObject {
        reservation_id: row.get(0),
        user_id: row.get(1),
        project_id: row.get(2),
        object_key: row.get(3),
        backend: row.get(4),
        delete: row.get(5),
      })
      .collect(),
  )
}

/// The object is gone (or not ours to delete): the reservation no longer points at it.
pub async fn forget_object(
  conn: &mut PgConnection,
  user_id: &str,
  reservation: &uuid::Uuid,
) -> Result<()> {
  conn
    .execute(
      "UPDATE quota_reservations SET object_key = NULL
        WHERE user_id = $2 AND id = $1 AND status <> 'committed'",
      &[reservation, &user_id],
    )
    .await?;
  Ok(())
}

/// Reservations of the project still able to write to it (pending and not expired).
const IN_FLIGHT: &str = "
SELECT count(*) FROM quota_reservations
 WHERE project_id = $1 AND status = 'pending' AND expires_at > now()";

/// The project's record, checking the owner; `NOT_FOUND` without one.
pub async fn project_record(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
) -> Result<ProjectStoragePath> {
  let row = conn
    .query_opt(
      "SELECT p.user_id, sp.id, sp.project_id, sp.user_id, sp.backend, sp.key, sp.path, sp.created_at
         FROM storage_quota_project($1) p LEFT JOIN project_storage_paths sp ON sp.project_id = p.id",
      &[&project.as_str()],
    )
    .await?
    .ok_or_else(|| QuotaError::NotFound(format!("project {project} does not exist")))?;
  check_owner(row.get(0), user, project)?;
  if row.get::<_, Option<uuid::Uuid>>(1).is_none() {
    return Err(QuotaError::NotFound(format!(
      "project {project} has no storage path yet; allocate it first"
    )));
  }
  Ok(ProjectStoragePath {
    id: row.get(1),
    project_id: row.get(2),
    user_id: row.get(3),
    backend: row.get(4),
    key: row.get(5),
    path: row.get(6),
    created_at: row.get(7),
  })
}

/// `CONFLICT` (`UPLOAD_IN_FLIGHT`) when an upload to the project holds a live reservation.
pub async fn refuse_in_flight(conn: &mut PgConnection, project: &ProjectId) -> Result<()> {
  let pending: i64 = conn
    .query_one(IN_FLIGHT, &[&project.as_str()])
    .await?
    .get(0);
  if pending > 0 {
    return Err(in_flight(project, pending));
  }
  Ok(())
}

fn in_flight(project: &ProjectId, pending: i64) -> QuotaError {
  QuotaError::conflict(
    ConflictReason::UploadInFlight,
    format!(
      "project {project} has {pending} upload(s) in flight; commit or cancel them (or let them expire) before moving it"
    ),
  )
}

/// Flips the record to `to` in one transaction, after checking under the locks that no upload
/// started or was recorded for the project since `since` and the record is still at `from`.
pub async fn flip_record(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
  from: &str,
  to: &crate::storage::Location,
  since: chrono::DateTime<chrono::Utc>,
) -> Result<ProjectStoragePath> {
  let tx = conn.transaction().await?;
  // The quota row first, like every charge: no upload of this user settles meanwhile.
  tx.execute(
    "SELECT 1 FROM user_quotas WHERE user_id = $1 FOR UPDATE",
    &[&user.as_str()],
  )
  .await?;
  let pending: i64 = tx.query_one(IN_FLIGHT, &[&project.as_str()]).await?.get(0);
  if pending > 0 {
    return Err(in_flight(project, pending));
  }
  let recorded: i64 = tx
    .query_one(
      "SELECT (SELECT count(*) FROM quota_ledger WHERE project_id = $1 AND created_at >= $2)
            + (SELECT count(*) FROM quota_reservations WHERE project_id = $1 AND created_at >= $2)",
      &[&project.as_str(), &since],
    )
    .await?
    .get(0);
  if recorded > 0 {
    return Err(QuotaError::conflict(
      ConflictReason::UploadInFlight,
      format!("project {project} changed while its files were copied; run the move again"),
    ));
  }
  let row = tx
    .query_opt(
      "UPDATE project_storage_paths SET backend = $3, path = $4
        WHERE project_id = $1 AND user_id = $2 AND backend = $5 AND key = $6
        RETURNING id, project_id, user_id, backend, key, path, created_at",
      &[
        &project.as_str(),
        &user.as_str(),
        &to.backend,
        &to.path,
        &from,
        &to.key,
      ],
    )
    .await?
    .ok_or_else(|| {
      QuotaError::conflict(
        ConflictReason::Mismatch,
        format!("project {project}'s record changed during the move; run it again"),
      )
    })?;
  tx.commit().await?;
  Ok(ProjectStoragePath {
    id: row.get(0),
    project_id: row.get(1),
    user_id: row.get(2),
    backend: row.get(3),
    key: row.get(4),
    path: row.get(5),
    created_at: row.get(6),
  })
}
