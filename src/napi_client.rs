//! The exported `NativeClient` class: converts arguments and results, delegates to
//! `client::Client`, and maps every error to JS in one place.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::error::QuotaError;
use crate::napi_types::*;
use crate::{client, config, migrate, quota};

/// Every error crosses into JS as a JSON payload (`code`, `message` and the numbers behind it)
/// in the message; the JS layer (`lib/errors.js`) decodes it once into a `StorageQuotaError`.
/// napi-rs keeps only its own status as `code` on async rejections, so the code travels here.
fn to_js_error(error: QuotaError) -> napi::Error {
  napi::Error::new(Status::GenericFailure, error.to_payload().to_string())
}

fn usage_fields(usage: &quota::Usage) -> (i64, i64, i64, i64, f64) {
  (
    usage.used_bytes,
    usage.reserved_bytes,
    usage.limit_bytes,
    usage.remaining_bytes(),
    usage.percent_used(),
  )
}

fn migration_info(m: migrate::AppliedMigration) -> MigrationInfo {
  MigrationInfo {
    version: m.version,
    name: m.name,
    applied_at: m.applied_at,
  }
}

/// A storage-quota client with its own PostgreSQL pool. Use `createClient()` from the package
/// rather than this class directly: it validates arguments and decodes errors.
#[napi]
pub struct NativeClient {
  inner: client::Client,
}

#[napi]
impl NativeClient {
  #[napi(constructor, catch_unwind)]
  pub fn new(options: Option<ClientOptions>) -> Result<Self> {
    let options = options.unwrap_or_default();
    let inner = client::Client::new(config::RawOptions {
      database_url: options.database_url,
      storage_root: options.storage_root,
      default_quota_bytes: options.default_quota_bytes,
      pool_size: options.pool_size,
      connect_timeout_ms: options.connect_timeout_ms,
      statement_timeout_ms: options.statement_timeout_ms,
      application_name: options.application_name,
      storage: options.storage.map(|s| config::RawStorage {
        backend: s.backend,
        bucket: s.bucket,
        prefix: s.prefix,
      }),
    })
    .map_err(to_js_error)?;
    Ok(NativeClient { inner })
  }

  /// Whether `bytes` more would fit in the user's quota. Never fails for "no room".
  #[napi]
  pub async fn check_quota(&self, user_id: String, bytes: f64) -> Result<QuotaCheck> {
    let check = self
      .inner
      .check_quota(&user_id, bytes)
      .await
      .map_err(to_js_error)?;
    let (used_bytes, reserved_bytes, limit_bytes, remaining_bytes, percent_used) =
      usage_fields(&check.usage);
    Ok(QuotaCheck {
      allowed: check.allowed,
      requested_bytes: check.requested_bytes,
      used_bytes,
      reserved_bytes,
      limit_bytes,
      remaining_bytes,
      percent_used,
    })
  }

  /// Charges an upload to the user's quota, atomically and at most once per upload id.
  #[napi]
  pub async fn record_upload(
    &self,
    user_id: String,
    project_id: String,
    bytes: f64,
    options: Option<RecordUploadOptions>,
  ) -> Result<RecordedUpload> {
    let upload_id = options.and_then(|o| o.upload_id);
    let recorded = self
      .inner
      .record_upload(&user_id, &project_id, bytes, upload_id.as_deref())
      .await
      .map_err(to_js_error)?;
    let (used_bytes, reserved_bytes, limit_bytes, remaining_bytes, percent_used) =
      usage_fields(&recorded.usage);
    Ok(RecordedUpload {
      upload_id: recorded.upload_id,
      bytes: recorded.bytes,
      duplicate: recorded.duplicate,
      used_bytes,
      reserved_bytes,
      limit_bytes,
      remaining_bytes,
      percent_used,
    })
  }

  /// The project's storage path, created (record and directory) on first call.
  #[napi]
  pub async fn allocate_project_path(
    &self,
    user_id: String,
    project_id: String,
  ) -> Result<ProjectStoragePath> {
    let record = self
      .inner
      .allocate_project_path(&user_id, &project_id)
      .await
      .map_err(to_js_error)?;
    Ok(ProjectStoragePath {
      id: record.id.to_string(),
      project_id: record.project_id.to_string(),
      user_id: record.user_id,
      backend: record.backend,
      key: record.key,
      path: record.path,
      created_at: record.created_at,
    })
  }

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

  /// Applies pending migrations; resolves to the versions applied by this call.
  #[napi]
  pub async fn migrate(&self) -> Result<Vec<i32>> {
    self.inner.migrate().await.map_err(to_js_error)
  }

  /// Reverts the `steps` most recent migrations; resolves to the versions reverted.
  #[napi]
  pub async fn rollback(&self, steps: u32) -> Result<Vec<i32>> {
    self.inner.rollback(steps).await.map_err(to_js_error)
  }

  #[napi]
  pub async fn migration_status(&self) -> Result<MigrationStatus> {
    let status = self.inner.migration_status().await.map_err(to_js_error)?;
    Ok(MigrationStatus {
      applied: status.applied.into_iter().map(migration_info).collect(),
      pending: status.pending.into_iter().map(migration_info).collect(),
    })
  }

  /// Stops handing out connections; calls in flight finish first.
  #[napi(catch_unwind)]
  pub fn close(&self) {
    self.inner.close();
  }
}
