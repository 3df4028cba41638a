//! Moving a project between backends (local disk ⇄ object store): copy every file, verify the
//! sizes, flip the record in one transaction, then delete the source. Usage does not change:
//! the same bytes are stored elsewhere. Resumable: a second run skips files already copied
//! with the right size, and a run after the flip only deletes what the source still holds.

use std::collections::HashMap;

use super::Client;
use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::objects;
use crate::quota::projects::ProjectStoragePath;
use crate::storage::{StorageBackend, StoredFile};

#[derive(Debug, Clone)]
pub struct MovedProject {
  /// The record after the move.
  pub path: ProjectStoragePath,
  /// The backend the files came from.
  pub from: String,
  /// Files and bytes now in the target (all of the project's).
  pub files: i64,
  pub bytes: i64,
  /// Files copied by this call (fewer than `files` when resuming).
  pub copied_files: i64,
  /// The record was already on the target: only leftovers of the source were deleted.
  pub already_moved: bool,
}

impl Client {
  pub async fn move_project_storage(
    &self,
    user_id: &str,
    project_id: &str,
    to: &str,
  ) -> Result<MovedProject> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let other = match to {
      "s3" => "local",
      "local" => "s3",
      _ => {
        return Err(QuotaError::invalid(format!(
          "to must be 'local' or 's3', got {to:?}"
        )))
      }
    };
    let target = self.backend_named(to)?;
    let record = self
      .with_conn(async |conn| objects::project_record(&mut conn.0, &user, &project).await)
      .await?;
    if record.backend == to {
      // Already there (a finished move, or one interrupted after the flip): the other side
      // is not authoritative, so whatever it still holds goes.
      // (A local side that was never created holds nothing; do not create it now.)
      if other != "local" || self.config.storage_root.exists() {
        if let Ok(source) = self.backend_named(other) {
          source.remove_project(&user, &project).await?;
        }
      }
      let stored = target.list(&user, &project).await?;
      return Ok(moved(record, other, &stored, 0, true));
    }
    let source = self.backend_named(&record.backend)?;
    let here = source.locate(&user, &project)?;
    if here.path != record.path {
      return Err(QuotaError::Storage(format!(
        "project {project} is recorded at {}, not at {} where this client's {} storage puts it",
        record.path, here.path, record.backend
      )));
    }
    let destination = target.locate(&user, &project)?;
    let since = self
      .with_conn(async |conn| {
        objects::refuse_in_flight(&mut conn.0, &project).await?;
        Ok(conn.0.query_one("SELECT now()", &[]).await?.get(0))
      })
      .await?;

    target.prepare(&user, &project).await?;
    let files = source.list(&user, &project).await?;
    let copied = copy_files(&*source, &*target, &user, &project, &files).await?;
    // Verify: the target holds exactly the source's files with their sizes, and the source
    // did not change meanwhile.
    let stored = target.list(&user, &project).await?;
    if stored != files || source.list(&user, &project).await? != files {
      return Err(QuotaError::Storage(format!(
        "project {project}: the copy does not match the source (files changed during the move?); run it again"
      )));
    }
    let from = record.backend.clone();
    let flipped = self
      .with_conn(async |conn| {
        objects::flip_record(&mut conn.0, &user, &project, &from, &destination, since).await
      })
      .await?;
    source.remove_project(&user, &project).await?;
    Ok(moved(flipped, &from, &stored, copied, false))
  }
}

fn moved(
  path: ProjectStoragePath,
  from: &str,
  stored: &[StoredFile],
  copied_files: i64,
  already_moved: bool,
) -> MovedProject {
  MovedProject {
    path,
    from: from.to_owned(),
    files: stored.len() as i64,
    bytes: stored.iter().map(|f| f.bytes).sum(),
    copied_files,
    already_moved,
  }
}

/// Copies the files the target lacks (or holds with another size), and deletes from the target
/// what the source no longer has (leftovers of an earlier attempt). Returns the files copied.
async fn copy_files(
  source: &dyn StorageBackend,
  target: &dyn StorageBackend,
  user: &UserId,
  project: &ProjectId,
  files: &[StoredFile],
) -> Result<i64> {
  let present: HashMap<String, i64> = target
    .list(user, project)
    .await?
    .into_iter()
    .map(|f| (f.path, f.bytes))
    .collect();
  let mut copied = 0;
  for file in files {
    if present.get(&file.path) == Some(&file.bytes) {
      continue;
    }
    let body = source.read(user, project, &file.path).await?;
    let written = target.write(user, project, &file.path, body).await?;
    if written != file.bytes {
      return Err(QuotaError::Storage(format!(
        "{:?} was {} bytes but {written} were copied; run the move again",
        file.path, file.bytes
      )));
    }
    copied += 1;
  }
  for path in present.keys() {
    if !files.iter().any(|f| &f.path == path) {
      target.delete(user, project, path).await?;
    }
  }
  Ok(copied)
}
