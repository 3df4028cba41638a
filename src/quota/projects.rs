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
  pub project_id: String,
  pub user_id: String,
  pub backend: String,
  pub key: String,
  pub path: String,
  pub created_at: DateTime<Utc>,
}

/// The project's owner and, if it has one, its storage path: the fast path once allocated.
const FIND_PROJECT: &str = "
SELECT p.user_id AS owner_id, sp.id, sp.project_id, sp.user_id, sp.backend, sp.key, sp.path, sp.created_at
  FROM storage_quota_project($1) p LEFT JOIN project_storage_paths sp ON sp.project_id = p.id";

/// Inserts only while the app's row still names `$2` as the owner (there is no foreign key into
/// the app's table, which may be any table: see migration 0006). Concurrent callers for one
/// project race on two unique keys (`project_id`, and `(backend, key)` derived from it); an
/// arbiter-less `ON CONFLICT` turns a loss on either into "nothing inserted", and the caller
/// reads the winner's row.
const INSERT_PATH: &str = "
INSERT INTO project_storage_paths AS sp (project_id, user_id, quota_id, backend, key, path)
SELECT $1, $2, q.id, $5, $3, $4
  FROM user_quotas q, storage_quota_project($1) p
 WHERE q.user_id = $2 AND p.user_id = $2
ON CONFLICT DO NOTHING
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
  let row = conn.query_opt(FIND_PROJECT, &[&project.as_str()]).await?;
  let row = row.ok_or_else(|| QuotaError::NotFound(format!("project {project} does not exist")))?;
  check_owner(row.get(0), user, project)?;
  if row.get::<_, Option<uuid::Uuid>>(1).is_some() {
    return Ok((row_to_path(&row, 1), false));
  }

  // The quota row first, committed on its own, so the insert below never waits on another
  // caller's uncommitted quota row.
  crate::quota::usage::ensure_quota_row(conn, user, default_limit).await?;
  let created = conn
    .query_opt(
      INSERT_PATH,
      &[
        &project.as_str(),
        &user.as_str(),
        &location.key,
        &location.path,
        &location.backend,
      ],
    )
    .await?;
  if let Some(row) = created {
    return Ok((row_to_path(&row, 0), true));
  }
  // Another caller created it first (its row is committed: ON CONFLICT waited for it), or the
  // app's row changed owner or went away in between: read again and decide as above.
  let row = conn.query_opt(FIND_PROJECT, &[&project.as_str()]).await?;
  let row = row.ok_or_else(|| QuotaError::NotFound(format!("project {project} does not exist")))?;
  check_owner(row.get(0), user, project)?;
  if row.get::<_, Option<uuid::Uuid>>(1).is_some() {
    return Ok((row_to_path(&row, 1), false));
  }
  Err(QuotaError::Internal(format!(
    "the storage path of project {project} could neither be created nor found"
  )))
}

/// Standalone mode: claims `project` for `user` in the package's own registry. Registering it
/// again is harmless; another user's project stays theirs (the owner check after this says so).
pub async fn register_standalone(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
) -> Result<()> {
  conn
    .execute(
      "INSERT INTO storage_quota_projects (id, user_id) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
      &[&project.as_str(), &user.as_str()],
    )
    .await?;
  Ok(())
}

/// Standalone mode: forgets a removed project, and its path record with it.
pub async fn unregister_standalone(
  conn: &mut PgConnection,
  user: &UserId,
  project: &ProjectId,
) -> Result<()> {
  let tx = conn.transaction().await?;
  tx.execute(
    "DELETE FROM project_storage_paths WHERE project_id = $1 AND user_id = $2",
    &[&project.as_str(), &user.as_str()],
  )
  .await?;
  tx.execute(
    "DELETE FROM storage_quota_projects WHERE id = $1 AND user_id = $2",
    &[&project.as_str(), &user.as_str()],
  )
  .await?;
  tx.commit().await?;
  Ok(())
}
