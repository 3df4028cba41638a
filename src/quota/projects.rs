//! Giving a project its storage path: one row per project, created once, whoever asks first.

use chrono::{DateTime, Utc};

use crate::db::pool::PgConnection;
use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::owner::check_owner;
use crate::storage::Location;

#[derive(Debug, Clone)]
pub struct ProjectStoragePath {
  pub id: uuid::Uuid,
  pub project_id: uuid::Uuid,
  pub user_id: String,
  pub backend: String,
  pub key: String,
  pub path: String,
  pub created_at: DateTime<Utc>,
}

const PATH_COLUMNS: &str =
  "sp.id, sp.project_id, sp.user_id, sp.backend, sp.key, sp.path, sp.created_at";

/// The project's owner and, if it has one, its storage path: the fast path once allocated.
const FIND_PROJECT: &str = "
SELECT p.user_id AS owner_id, sp.id, sp.project_id, sp.user_id, sp.backend, sp.key, sp.path, sp.created_at
  FROM projects p LEFT JOIN project_storage_paths sp ON sp.project_id = p.id
 WHERE p.id = $1";

const INSERT_PATH: &str = "
INSERT INTO project_storage_paths AS sp (project_id, user_id, quota_id, backend, key, path)
SELECT $1, $2, q.id, $5, $3, $4 FROM user_quotas q WHERE q.user_id = $2
ON CONFLICT (project_id) DO NOTHING
RETURNING sp.id, sp.project_id, sp.user_id, sp.backend, sp.key, sp.path, sp.created_at";

fn row_to_path(row: &tokio_postgres::Row, offset: usize) -> ProjectStoragePath {
  ProjectStoragePath {
    id: row.get(offset),
    project_id: row.get(offset + 1),
    user_id: row.get(offset + 2),
    backend: row.get(offset + 3),
    key: row.get(offset + 4),
    path: row.get(offset + 5),
    created_at: row.get(offset + 6),
  }
}

/// Finds or creates the storage path record of `project` for `user` at `location`. Safe to call
/// from many processes at once: the unique key on `project_id` leaves exactly one row.
pub async fn find_or_create_path(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
  location: &Location,
  default_limit: i64,
) -> Result<ProjectStoragePath> {
  Ok(
    find_or_create(conn, user, project, location, default_limit)
      .await?
      .0,
  )
}

/// [`find_or_create_path`], also saying whether this call created the record (a copy that is
/// undone removes only a record it created).
pub async fn find_or_create(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
  location: &Location,
  default_limit: i64,
) -> Result<(ProjectStoragePath, bool)> {
  let find = conn.prepared(FIND_PROJECT).await?;
  let row = conn.client.query_opt(&find, &[&project.uuid()]).await?;
  let row = row.ok_or_else(|| QuotaError::NotFound(format!("project {project} does not exist")))?;
  check_owner(row.get(0), user, project)?;
  if row.get::<_, Option<uuid::Uuid>>(1).is_some() {
    return Ok((row_to_path(&row, 1), false));
  }

  // The quota row first, committed on its own: inside the transaction below, a second caller
  // waiting on our uncommitted quota row while we wait on its project row lock would deadlock.
  crate::quota::usage::ensure_quota_row(conn, user, default_limit).await?;
  let (client, statements) = conn.parts();
  let tx = client.transaction().await?;
  // Lock the project row in the mode the UPDATE below needs, so concurrent allocations of one
  // project queue here instead of deadlocking on a lock upgrade, and the owner cannot change
  // between the check and the insert.
  let owner: Option<String> = tx
    .query_opt(
      "SELECT user_id FROM projects WHERE id = $1 FOR NO KEY UPDATE",
      &[&project.uuid()],
    )
    .await?
    .map(|row| row.get(0));
  check_owner(owner, user, project)?;
  let insert = PgConnection::statement(statements, &tx, INSERT_PATH).await?;
  let created_row = tx
    .query_opt(
      &insert,
      &[
        &project.uuid(),
        &user.as_str(),
        &location.key,
        &location.path,
        &location.backend,
      ],
    )
    .await?;
  let created = created_row.is_some();
  let record = match created_row {
    Some(row) => row_to_path(&row, 0),
    None => {
      // Another caller created it first; its transaction has committed, so we see its row.
      let sql =
        format!("SELECT {PATH_COLUMNS} FROM project_storage_paths sp WHERE sp.project_id = $1");
      let row = tx.query_one(&sql, &[&project.uuid()]).await?;
      row_to_path(&row, 0)
    }
  };
  tx.execute(
    "UPDATE projects SET storage_path_id = $1 WHERE id = $2 AND storage_path_id IS DISTINCT FROM $1",
    &[&record.id, &project.uuid()],
  )
  .await?;
  tx.commit().await?;
  Ok((record, created))
}
