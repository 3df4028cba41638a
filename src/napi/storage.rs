//! The storage utilities of `NativeClient` (`projectPathFor`, `validatePath`, `diskUsage`):
//! a second `#[napi] impl` block, kept apart so the storage surface reads in one place.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::client::NativeClient;
use super::error::{answer, js_error, Answer};
use super::types::{DiskUsage, PathCheck, ProjectLocation};

#[napi]
impl NativeClient {
  /// Where the project lives (or would): backend, key and path. Touches neither the database
  /// nor the disk.
  #[napi(catch_unwind)]
  pub fn project_path_for(
    &self,
    env: Env,
    user_id: String,
    project_id: String,
  ) -> Result<ProjectLocation> {
    let location = self
      .inner
      .project_path_for(&user_id, &project_id)
      .map_err(|error| js_error(&env, error))?;
    Ok(ProjectLocation {
      backend: location.backend.to_owned(),
      key: location.key,
      path: location.path,
    })
  }

  /// Whether `candidate` (relative to the project directory, or absolute) lies inside it.
  #[napi(ts_return_type = "Promise<PathCheck>")]
  pub async fn validate_path(
    &self,
    user_id: String,
    project_id: String,
    candidate: String,
  ) -> Result<Answer<PathCheck>> {
    answer(async {
      let check = self
        .inner
        .validate_path(&user_id, &project_id, &candidate)
        .await?;
      Ok(PathCheck {
        inside: check.inside,
        path: check.path,
        relative_path: check.relative_path,
        reason: check.reason,
      })
    })
    .await
  }

  /// The project's usage counted from its files on disk.
  #[napi(ts_return_type = "Promise<DiskUsage>")]
  pub async fn disk_usage(&self, user_id: String, project_id: String) -> Result<Answer<DiskUsage>> {
    answer(async {
      let usage = self.inner.disk_usage(&user_id, &project_id).await?;
      Ok(DiskUsage {
        bytes: usage.bytes,
        allocated_bytes: usage.allocated_bytes,
        files: usage.files,
        directories: usage.directories,
        skipped: usage.skipped,
      })
    })
    .await
  }
}
