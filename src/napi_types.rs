//! Argument and result shapes exchanged with JS. Their `///` docs flow into `binding.d.ts`.

use chrono::{DateTime, Utc};
use napi_derive::napi;

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
  /// Where project paths point. Default `{ backend: 'local' }` (directories under `storageRoot`).
  pub storage: Option<StorageOptions>,
}

/// The storage backend: `{ backend: 'local' }`, or `{ backend: 's3', bucket, prefix? }` for
/// keys under `s3://{bucket}/{prefix}/` (allocation then writes nothing anywhere).
#[napi(object)]
#[derive(Default)]
pub struct StorageOptions {
  /// `local` or `s3`.
  pub backend: String,
  /// S3 bucket name (s3 only).
  pub bucket: Option<String>,
  /// Key prefix inside the bucket, e.g. `projects` (s3 only). Default none.
  pub prefix: Option<String>,
}

/// Where a project lives (or would), computed without touching the database or disk.
#[napi(object)]
pub struct ProjectLocation {
  /// `local` or `s3`.
  pub backend: String,
  /// `{userId}/{projectId}/`, the same for every backend.
  pub key: String,
  /// `{storageRoot}/{userId}/{projectId}/`, or `s3://{bucket}/{prefix}/{userId}/{projectId}/`.
  pub path: String,
}

/// The answer of `validatePath`.
#[napi(object)]
pub struct PathCheck {
  /// True when the candidate lies inside the project's directory (and, on local disk, no
  /// symlink sits on the way).
  pub inside: bool,
  /// The candidate as an absolute path (or URL) inside the project; absent when refused.
  pub path: Option<String>,
  /// The candidate relative to the project directory, `''` for the directory itself.
  pub relative_path: Option<String>,
  /// Why the candidate was refused; absent when inside.
  pub reason: Option<String>,
}

/// A project's usage counted from the files on disk (symlinks are never followed).
#[napi(object)]
pub struct DiskUsage {
  /// Sum of the sizes of the regular files; a hard-linked file counts once.
  pub bytes: i64,
  /// Space taken on disk (`st_blocks` × 512) by the files and directories, as `du` counts.
  pub allocated_bytes: i64,
  pub files: i64,
  /// Directories below the project directory.
  pub directories: i64,
  /// Symlinks, sockets, FIFOs and devices: neither followed nor counted.
  pub skipped: i64,
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
