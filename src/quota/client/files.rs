//! A project's files through its backend, whichever it is: listing them for a UI, and deleting
//! one with its bytes given back. Apps on s3 need these (there is no directory to read); apps on
//! local disk get the same symlink-safe walk.

use super::Client;
use crate::error::{QuotaError, Result};
use crate::ids::{upload_key_or_new, ProjectId, UserId};
use crate::quota::coalesce_deletion::Deletion;
use crate::quota::deletions::{DeletionTarget, Released};
use crate::quota::objects;
use crate::storage::candidate::file_name;
use crate::storage::StoredFile;

impl Client {
  /// Every file of the project with its size, sorted by path, from where its record says the
  /// files are.
  pub async fn list_project_files(
    &self,
    user_id: &str,
    project_id: &str,
  ) -> Result<Vec<StoredFile>> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let record = self
      .with_conn(async |conn| objects::project_record(&mut conn.0, &user, &project).await)
      .await?;
    self
      .backend_named(&record.backend)?
      .list(&user, &project)
      .await
  }

  /// Deletes one file and gives its bytes back (measured, not declared). The file goes first:
  /// a failure in between leaves bytes counted for a missing file (reconcile shows it), never
  /// a file that no longer counts. `deletion_id` makes a retry release once.
  pub async fn delete_project_file(
    &self,
    user_id: &str,
    project_id: &str,
    file: &str,
    deletion_id: Option<&str>,
  ) -> Result<Released> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let file = file_name(file)?;
    let deletion_id = upload_key_or_new(deletion_id)?;
    let record = self
      .with_conn(async |conn| objects::project_record(&mut conn.0, &user, &project).await)
      .await?;
    let backend = self.backend_named(&record.backend)?;
    let bytes = backend
      .file_size(&user, &project, &file)
      .await?
      .ok_or_else(|| QuotaError::NotFound(format!("project {project} has no file {file:?}")))?;
    backend.delete(&user, &project, &file).await?;
    let target = DeletionTarget::Bytes { bytes, deletion_id };
    self
      .release(Deletion {
        user,
        project,
        target,
      })
      .await
  }
}
