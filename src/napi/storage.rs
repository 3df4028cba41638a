//! The storage utilities of `NativeClient` (`projectPathFor`, `validatePath`, `diskUsage`):
//! a second `#[napi] impl` block, kept apart so the storage surface reads in one place.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::client::NativeClient;
use super::error::to_js_error;
use super::types::{DiskUsage, PathCheck, ProjectLocation};

#[napi]
impl NativeClient {
  /// Where the project lives (or would): backend, key and path. Touches neither the database
  /// nor the disk.
  #[napi(catch_unwind)]
  pub fn project_path_for(&self, user_id: String, project_id: String) -> Result<ProjectLocation> {
    let location = self
      .inner
      .project_path_for(&user_id, &project_id)
      .map_err(to_js_error)?;
    Ok(ProjectLocation {
      backend: location.backend.to_owned(),
      key: location.key,
      path: location.path,
    })
  }

  /// Whether `candidate` (relative to the project directory, or absolute) lies inside it.
  #[napi]
  pub async fn validate_path(
    &self,
    user_id: String,
    project_id: String,
    candidate: String,
  ) -> Result<PathCheck> {
    let check = self
      .inner
      .validate_path(&user_id, &project_id, &candidate)
      .await
      .map_err(to_js_error)?;
    Ok(PathCheck {
      inside: check.inside,
      path: check.path,
      relative_path: check.relative_path,
      reason: check.reason,
    })
  }

  /// The project's usage counted from its files on disk.
  #[napi]
  pub async fn disk_usage(&self, user_id: String, project_id: String) -> Result<DiskUsage> {
    let usage = self
      .inner
      .disk_usage(&user_id, &project_id)
      .await
      .map_err(to_js_error)?;
    Ok(DiskUsage {
      bytes: usage.bytes,
      allocated_bytes: usage.allocated_bytes,
      files: usage.files,
      directories: usage.directories,
      skipped: usage.skipped,
    })
  }
}
