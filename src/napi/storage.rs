//! The storage surface of `NativeClient` (`projectPathFor`, `validatePath`, `diskUsage`,
//! presigned uploads, a project's files, moves between backends): a second `#[napi] impl`
//! block, kept apart so the storage surface reads in one place.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::client::NativeClient;
use super::convert::{path_to_js, released_to_js, reservation_to_js};
use super::error::{answer, js_error, Answer};
use super::types::{
  DiskUsage, MovedProject, PathCheck, ProjectFile, ProjectLocation, Released, Reservation,
};

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

  /// Holds `bytes` and presigns a `PUT` of `fileName` in the project (s3 backend) that
  /// expires with the reservation; commit then charges the object's real size.
  #[napi(ts_return_type = "Promise<Reservation>")]
  pub async fn reserve_presigned_upload(
    &self,
    user_id: String,
    project_id: String,
    file_name: String,
    bytes: f64,
    ttl_ms: Option<f64>,
    reservation_id: Option<String>,
  ) -> Result<Answer<Reservation>> {
    answer(async {
      let p = self
        .inner
        .reserve_presigned_upload(
          &user_id,
          &project_id,
          &file_name,
          bytes,
          ttl_ms,
          reservation_id.as_deref(),
        )
        .await?;
      Ok(reservation_to_js(
        p.reservation,
        Some((p.upload_url, p.file, p.path)),
      ))
    })
    .await
  }

  /// The project's files with their sizes, from its backend (directory or bucket).
  #[napi(ts_return_type = "Promise<ProjectFile[]>")]
  pub async fn list_project_files(
    &self,
    user_id: String,
    project_id: String,
  ) -> Result<Answer<Vec<ProjectFile>>> {
    answer(async {
      let files = self.inner.list_project_files(&user_id, &project_id).await?;
      Ok(
        files
          .into_iter()
          .map(|f| ProjectFile {
            path: f.path,
            bytes: f.bytes,
          })
          .collect(),
      )
    })
    .await
  }

  /// Deletes one file of the project and gives back its measured bytes.
  #[napi(ts_return_type = "Promise<Released>")]
  pub async fn delete_project_file(
    &self,
    user_id: String,
    project_id: String,
    file_name: String,
    deletion_id: Option<String>,
  ) -> Result<Answer<Released>> {
    answer(async {
      let r = self
        .inner
        .delete_project_file(&user_id, &project_id, &file_name, deletion_id.as_deref())
        .await?;
      Ok(released_to_js(r))
    })
    .await
  }

  /// Moves a project's files to the other backend and flips its record.
  #[napi(ts_return_type = "Promise<MovedProject>")]
  pub async fn move_project_storage(
    &self,
    user_id: String,
    project_id: String,
    to: String,
  ) -> Result<Answer<MovedProject>> {
    answer(async {
      let m = self
        .inner
        .move_project_storage(&user_id, &project_id, &to)
        .await?;
      Ok(MovedProject {
        path: path_to_js(m.path),
        from: m.from,
        files: m.files,
        bytes: m.bytes,
        copied_files: m.copied_files,
        already_moved: m.already_moved,
      })
    })
    .await
  }
}
