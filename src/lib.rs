#![deny(clippy::all)]
//! storage-quota: per-user storage quotas and safe per-project storage paths, enforced in
//! PostgreSQL, for Node.js. This file is the thin N-API surface: argument and result shapes
//! (their `///` docs become the generated typings) and the one place errors become JS errors.
//! The work happens in the plain Rust modules below.

pub mod client;
pub mod config;
pub mod error;
pub mod format;
pub mod ids;
mod log;
pub mod migrate;
pub mod paths;
pub mod pool;
pub mod projects;
pub mod quota;

use chrono::{DateTime, Utc};
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::error::QuotaError;

/// Every error crosses into JS as a JSON payload (`code`, `message` and the numbers behind it)
/// in the message; the JS layer (`lib/errors.js`) decodes it once into a `StorageQuotaError`.
/// napi-rs keeps only its own status as `code` on async rejections, so the code travels here.
fn to_js_error(error: QuotaError) -> napi::Error {
  napi::Error::new(Status::GenericFailure, error.to_payload().to_string())
}

/// Options for `createClient`. Every one is optional.
#[napi(object)]
#[derive(Default)]
pub struct ClientOptions {
  /// PostgreSQL URL, e.g. `postgres://user:password@host:5432/app`. Default: `DATABASE_URL`,
  /// then `POSTGRES_URL` (read by the JS layer).
  pub database_url: Option<String>,
  /// Directory under which project directories are created. Default `./storage`.
  pub storage_root: Option<String>,
  /// Quota of a user who has no quota row yet, in bytes. Default 1 GiB (1073741824).
  pub default_quota_bytes: Option<f64>,
  /// Most connections this client opens. Default 10.
  pub pool_size: Option<u32>,
  /// Longest wait for a new connection, or for a free one from the pool, in ms. Default 5000.
  pub connect_timeout_ms: Option<u32>,
  /// PostgreSQL `statement_timeout` for this client's connections, in ms. Default 10000.
  pub statement_timeout_ms: Option<u32>,
  /// `application_name` shown in `pg_stat_activity`. Default `storage-quota`.
  pub application_name: Option<String>,
}

/// The answer of `checkQuota`: whether `requestedBytes` more would fit, and the numbers.
#[napi(object)]
pub struct QuotaCheck {
  /// True when the bytes fit in what is left of the quota.
  pub allowed: bool,
  pub requested_bytes: i64,
  /// Bytes counted against the quota.
  pub used_bytes: i64,
  /// Bytes held by uploads in progress (counted against the quota too).
  pub reserved_bytes: i64,
  pub limit_bytes: i64,
  /// `limitBytes − usedBytes − reservedBytes`, never below 0.
  pub remaining_bytes: i64,
  /// `(usedBytes + reservedBytes) / limitBytes` in percent, two decimals; may exceed 100.
  pub percent_used: f64,
}

/// The result of `recordUpload`: the upload and the user's usage after it.
#[napi(object)]
pub struct RecordedUpload {
  /// The idempotency key: the one passed in, or a generated UUID.
  pub upload_id: String,
  pub bytes: i64,
  /// True when this upload id had been recorded before: nothing was charged this time.
  pub duplicate: bool,
  pub used_bytes: i64,
  pub reserved_bytes: i64,
  pub limit_bytes: i64,
  pub remaining_bytes: i64,
  pub percent_used: f64,
}

/// Options of `recordUpload`.
#[napi(object)]
pub struct RecordUploadOptions {
  /// Idempotency key: recording the same id again counts the upload once.
  pub upload_id: Option<String>,
}

/// Where a project's files live.
#[napi(object)]
pub struct ProjectStoragePath {
  pub id: String,
  pub project_id: String,
  pub user_id: String,
  /// Storage backend of the record: `local` for the filesystem.
  pub backend: String,
  /// Path relative to the storage root: `{userId}/{projectId}/`.
  pub key: String,
  /// Absolute path with a trailing slash: `{storageRoot}/{userId}/{projectId}/`.
  pub path: String,
  pub created_at: DateTime<Utc>,
}

/// One migration, applied or pending.
#[napi(object)]
pub struct MigrationInfo {
  pub version: i32,
  pub name: String,
  /// When it was applied; absent while pending.
  pub applied_at: Option<DateTime<Utc>>,
}

#[napi(object)]
pub struct MigrationStatus {
  pub applied: Vec<MigrationInfo>,
  pub pending: Vec<MigrationInfo>,
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
