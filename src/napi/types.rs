//! Argument and result shapes exchanged with JS. Their `///` docs flow into `binding.d.ts`.
//! Every result that changes or reports a user's quota carries the usage after it, flat:
//! `usedBytes`, `reservedBytes`, `limitBytes`, `remainingBytes`, `percentUsed`.

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
  /// Most connections this client opens. Default 10. Serverless functions: 1 or 2 (each
  /// instance is a process of its own); see docs/scaling.md.
  pub pool_size: Option<f64>,
  /// Connections kept open while idle, opened when the client is first used. Default 0: none
  /// until a call needs one, and none left behind by a function that went quiet.
  pub min_connections: Option<f64>,
  /// An idle connection is closed after this many ms; 0 keeps it. Default 30000.
  pub idle_timeout_ms: Option<f64>,
  /// A connection is closed after this many ms (when next idle); 0: no limit. Default 1800000.
  pub max_lifetime_ms: Option<f64>,
  /// `false` sends every statement unnamed (no prepared statements kept on a connection), sets
  /// `statement_timeout` per transaction instead of at login, and pipelines nothing across
  /// transactions: what a pooler in transaction mode (PgBouncer, Supavisor, Neon's pooled URL)
  /// needs. `?pgbouncer=true` in the URL does the same. Default `true` (direct connections).
  pub statement_cache: Option<bool>,
  /// Longest wait for a new connection, or for a free one from the pool, in ms. Default 5000.
  pub connect_timeout_ms: Option<f64>,
  /// PostgreSQL `statement_timeout` for this client's connections, in ms. Default 10000.
  pub statement_timeout_ms: Option<f64>,
  /// `application_name` shown in `pg_stat_activity`. Default `storage-quota`.
  pub application_name: Option<String>,
  /// `enforce` (default) refuses what does not fit; `shadow` counts everything and reports
  /// would-be refusals; `off` neither refuses nor counts new bytes. Default: `STORAGE_QUOTA_MODE`.
  #[napi(ts_type = "'enforce' | 'shadow' | 'off'")]
  pub mode: Option<String>,
  /// With `mode: 'enforce'`: the share of users (0–100, by a stable hash of their id) who are
  /// enforced; the others are shadowed. Default 100.
  pub rollout_percent: Option<u32>,
  /// How long a reservation holds its bytes unless committed or cancelled, in ms. Default 1 h.
  pub reservation_ttl_ms: Option<f64>,
  /// Days settled reservations and ledger entries are kept before `pruneHistory()` folds them
  /// away (idempotency keys are remembered that long). Default 90.
  pub history_retention_days: Option<f64>,
  /// Where project paths point. Default `{ backend: 'local' }` (directories under `storageRoot`).
  pub storage: Option<StorageOptions>,
  /// Where the app's projects are. Default: the table `projects(id, user_id)`.
  pub projects: Option<ProjectsOptions>,
}

/// The project source as the binding receives it (the JS layer turns `'standalone'` into
/// `{ standalone: true }`).
#[napi(object)]
#[derive(Default)]
pub struct ProjectsOptions {
  /// The package keeps its own registry of projects (`registerProject` adds to it).
  pub standalone: Option<bool>,
  /// The app's table, e.g. `invoices` or `app.invoices`.
  pub table: Option<String>,
  /// Its id column (uuid, text, varchar, integer or bigint). Default `id`.
  pub id: Option<String>,
  /// Its owner column (text, varchar or uuid: a user id or an organization id). Default `user_id`.
  pub owner: Option<String>,
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
  /// `http(s)://host:port` of an S3-compatible store, addressed path-style (s3 only). Default:
  /// `AWS_ENDPOINT_URL`, else AWS.
  pub endpoint: Option<String>,
  /// Region (s3 only). Default: `AWS_REGION`, else `us-east-1`.
  pub region: Option<String>,
  /// Default: `AWS_ACCESS_KEY_ID`.
  pub access_key_id: Option<String>,
  /// Default: `AWS_SECRET_ACCESS_KEY`. Never logged or shown in an error.
  pub secret_access_key: Option<String>,
  /// Default: `AWS_SESSION_TOKEN`. Never logged or shown in an error.
  pub session_token: Option<String>,
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
  /// True when the bytes may be added (always true in `shadow` and `off` mode).
  pub allowed: bool,
  /// True when enforcement would refuse them, whatever the mode.
  pub would_refuse: bool,
  /// The sum of the sizes asked about.
  pub requested_bytes: i64,
  /// Bytes beyond what is free: `max(requestedBytes − remainingBytes, 0)`.
  pub missing_bytes: i64,
  /// For each size asked about, in order: whether it fits after the ones before it that fit.
  pub fits: Vec<bool>,
  /// The mode that applied to this user: `enforce`, `shadow` or `off`.
  #[napi(ts_type = "'enforce' | 'shadow' | 'off'")]
  pub mode: String,
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
  /// False only in `off` mode, where nothing is counted.
  pub counted: bool,
  /// True when enforcement would have refused it (it was counted anyway: shadow mode).
  pub would_refuse: bool,
  /// For an overwrite (`replacesBytes`): the replaced bytes that were counted and given back.
  pub replaced_bytes: i64,
  /// What the quota was charged: `bytes − replacedBytes` (0 for a duplicate).
  pub net_bytes: i64,
  #[napi(ts_type = "'enforce' | 'shadow' | 'off'")]
  pub mode: String,
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
  /// The upload overwrites content of this many bytes: only the difference is charged.
  pub replaces_bytes: Option<f64>,
}

/// Bytes held for an upload in progress.
#[napi(object)]
pub struct Reservation {
  pub reservation_id: String,
  pub user_id: String,
  pub project_id: String,
  /// Bytes asked for; held too, except in `off` mode (which holds nothing: see `reservedBytes`).
  pub bytes: i64,
  /// After this, the reservation stops counting and cannot be committed.
  pub expires_at: DateTime<Utc>,
  /// This `reservationId` was used before for the same request: the same reservation,
  /// nothing more held.
  pub duplicate: bool,
  pub would_refuse: bool,
  #[napi(ts_type = "'enforce' | 'shadow' | 'off'")]
  pub mode: String,
  /// With `presign`: the URL to `PUT` the file's bytes to, valid until `expiresAt`.
  pub upload_url: Option<String>,
  /// With `presign`: the file's path inside the project.
  pub file_name: Option<String>,
  /// With `presign`: the object's `s3://` URL.
  pub object_path: Option<String>,
  pub used_bytes: i64,
  pub reserved_bytes: i64,
  pub limit_bytes: i64,
  pub remaining_bytes: i64,
  pub percent_used: f64,
}

/// One file of a project, from `listProjectFiles`.
#[napi(object)]
pub struct ProjectFile {
  /// Path relative to the project (`renders/a.png`).
  pub path: String,
  pub bytes: i64,
}

/// A project moved between backends by `moveProjectStorage`.
#[napi(object)]
pub struct MovedProject {
  /// The record after the move (`backend` and `path` changed, `key` the same).
  pub path: ProjectStoragePath,
  /// The backend the files came from.
  #[napi(ts_type = "'local' | 's3'")]
  pub from: String,
  /// Files and bytes the project now has in its new backend.
  pub files: i64,
  pub bytes: i64,
  /// Files copied by this call (fewer than `files` when it resumed an interrupted move).
  pub copied_files: i64,
  /// The project was already on the target backend; only the source's leftovers were deleted.
  pub already_moved: bool,
}

/// A reservation after `commitUpload` or `cancelUpload`.
#[napi(object)]
pub struct SettledReservation {
  pub reservation_id: String,
  pub user_id: String,
  pub project_id: String,
  /// `committed`, `cancelled` or `expired`.
  #[napi(ts_type = "'committed' | 'cancelled' | 'expired'")]
  pub status: String,
  /// Bytes the reservation held.
  pub held_bytes: i64,
  /// The actual size committed (0 when cancelled). In `off` mode at most `heldBytes` of it
  /// is counted.
  pub committed_bytes: i64,
  /// Settled before by the same request (a retry): the first outcome, nothing changed now.
  pub duplicate: bool,
  /// Enforcement would have refused this commit (shadow and off modes).
  pub would_refuse: bool,
  #[napi(ts_type = "'enforce' | 'shadow' | 'off'")]
  pub mode: String,
  pub used_bytes: i64,
  pub reserved_bytes: i64,
  pub limit_bytes: i64,
  pub remaining_bytes: i64,
  pub percent_used: f64,
}

/// Bytes given back by `recordDeletion` or `removeProject`.
#[napi(object)]
pub struct Released {
  pub released_bytes: i64,
  /// The same deletion was recorded before: nothing was released this time.
  pub duplicate: bool,
  /// Pending reservations of the project that were cancelled (`removeProject`).
  pub cancelled_reservations: i64,
  pub used_bytes: i64,
  pub reserved_bytes: i64,
  pub limit_bytes: i64,
  pub remaining_bytes: i64,
  pub percent_used: f64,
}

/// A project registered by `registerProject`.
#[napi(object)]
pub struct RegisteredProject {
  pub path: ProjectStoragePath,
  /// Bytes counted for the project's initial content.
  pub counted_bytes: i64,
  pub used_bytes: i64,
  pub reserved_bytes: i64,
  pub limit_bytes: i64,
  pub remaining_bytes: i64,
  pub percent_used: f64,
}

/// A project copied by `copyProject`.
#[napi(object)]
pub struct CopiedProject {
  /// The new project's storage path.
  pub path: ProjectStoragePath,
  pub copied_bytes: i64,
  /// Regular files copied.
  pub files: i64,
  /// Symlinks, sockets, FIFOs and devices found in the source (at any depth): neither followed
  /// nor copied.
  pub skipped: i64,
  /// The copy had been made before (by this call's retry or a concurrent one): nothing was
  /// copied or charged this time; the numbers are that copy's.
  pub duplicate: bool,
  pub used_bytes: i64,
  pub reserved_bytes: i64,
  pub limit_bytes: i64,
  pub remaining_bytes: i64,
  pub percent_used: f64,
}

/// One project's counted bytes, for the UI.
#[napi(object)]
pub struct ProjectUsage {
  pub project_id: String,
  pub used_bytes: i64,
  /// `usedBytes` in words, e.g. `12.5 MB`.
  pub used_text: String,
}

/// A user's usage as the UI shows it.
#[napi(object)]
pub struct Usage {
  pub user_id: String,
  pub used_bytes: i64,
  pub reserved_bytes: i64,
  pub limit_bytes: i64,
  pub remaining_bytes: i64,
  pub percent_used: f64,
  /// `normal` below 75 %, `nearing` from 75 %, `critical` from 90 %, `exceeded` from 100 %.
  #[napi(ts_type = "'normal' | 'nearing' | 'critical' | 'exceeded'")]
  pub state: String,
  /// Used plus reserved, in words (`312 MB`).
  pub used_text: String,
  pub limit_text: String,
  pub remaining_text: String,
  /// `312 MB of 1 GB used (30.47 %)`.
  pub summary: String,
  /// Each project's counted bytes, with `{ projects: true }`.
  pub projects: Option<Vec<ProjectUsage>>,
}

/// One project in a reconciliation report.
#[napi(object)]
pub struct ProjectDrift {
  pub project_id: String,
  /// The project's usage counter, as it was (before any fix).
  pub used_bytes: i64,
  /// What the ledger counts for the project.
  pub ledger_bytes: i64,
  /// The project's local directory, if it has one.
  pub path: Option<String>,
  /// Bytes of regular files in it (with `{ disk: true }`).
  pub disk_bytes: Option<i64>,
  /// `diskBytes − ledgerBytes`.
  pub disk_drift_bytes: Option<i64>,
  /// The app's row is gone: the project was deleted without `removeProject`.
  pub deleted: bool,
  /// Bytes given back for the deleted project by this run (`fix`).
  pub released_bytes: i64,
  /// Its directory and path record were removed by this run (`fix`, local backend).
  pub removed: bool,
}

/// One user in a reconciliation report.
#[napi(object)]
pub struct UserDrift {
  pub user_id: String,
  /// The counter before any fix.
  pub used_bytes: i64,
  pub ledger_bytes: i64,
  /// `usedBytes − ledgerBytes`.
  pub drift_bytes: i64,
  pub reserved_bytes: i64,
  /// Bytes of live reservations.
  pub pending_reserved_bytes: i64,
  pub reserved_drift_bytes: i64,
  /// The counters were set from the ledger.
  pub fixed: bool,
  pub projects: Vec<ProjectDrift>,
}

#[napi(object)]
pub struct ReconcileReport {
  pub checked_users: i64,
  pub drifted_users: i64,
  pub fixed_users: i64,
  /// Projects found deleted behind the package's back (their app row is gone).
  pub deleted_projects: i64,
  /// Users with drift or deleted projects (all checked users when one was named or `disk` was asked for).
  pub users: Vec<UserDrift>,
}

/// Where a project's files live.
#[napi(object)]
pub struct ProjectStoragePath {
  pub id: String,
  pub project_id: String,
  pub user_id: String,
  /// Storage backend of the record: `local` for the filesystem.
  #[napi(ts_type = "'local' | 's3'")]
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

/// What `pruneHistory()` removed.
#[napi(object)]
pub struct PrunedHistory {
  /// Settled reservations deleted.
  pub reservations: i64,
  /// Ledger entries folded into their project's `carry` entry.
  pub ledger_entries: i64,
}

/// An owner whose id cannot be used in paths, with how many projects the backfill skipped.
#[napi(object)]
pub struct SkippedOwner {
  pub owner: String,
  pub projects: i64,
}

/// Where the backfill of existing projects is (see `storage-quota backfill`).
#[napi(object)]
pub struct BackfillProgress {
  /// `scan` (projects by owner), `validate` (foreign keys), `done`; `catchup` only in a state left by an earlier version.
  #[napi(ts_type = "'scan' | 'catchup' | 'validate' | 'done'")]
  pub phase: String,
  pub done: bool,
  pub scanned: i64,
  /// Projects in the app table when the backfill started (absent before its first step).
  pub total_projects: Option<i64>,
  /// Path records written by the backfill: 0 since paths come on first use (kept for callers
  /// that read it; earlier versions recorded one per project).
  pub paths_created: i64,
  /// Projects whose size was counted as part of their owner's baseline.
  pub baselines: i64,
  pub users_seeded: i64,
  pub skipped_projects: i64,
  /// The owners with the most skipped projects (at most 50), and how many such owners in all.
  pub skipped_owners: Vec<SkippedOwner>,
  pub skipped_owner_count: i64,
  /// The storage root recorded in every path (fixed by the first step).
  pub storage_root: Option<String>,
  /// Lock waits given up on and retried during this call.
  pub lock_retries: u32,
  /// What this call did that an operator should know (e.g. an index it created).
  pub notes: Vec<String>,
  pub started_at: Option<DateTime<Utc>>,
  pub finished_at: Option<DateTime<Utc>>,
}

/// Where the online preparation of big tables for pending migrations is (an upgrade from
/// 0.1.0 whose own tables hold more than 10,000 rows; `storage-quota migrate` runs it).
#[napi(object)]
pub struct MigrationPreparation {
  /// Nothing left to prepare: `migrate()` applies the migrations in milliseconds.
  pub done: bool,
  /// The tables prepared (big, or their preparation had begun).
  pub tables: Vec<String>,
  pub tasks_done: u32,
  pub tasks_total: u32,
  /// What the next step does (absent when done).
  pub next: Option<String>,
  /// Rows done, and in all (the planner's estimate), of the fill in progress.
  pub rows_done: i64,
  pub rows_total: Option<i64>,
  /// Steps given up on a lock the app held during this call (nothing changed; tried again).
  pub lock_retries: u32,
}

/// What `migrate` did.
#[napi(object)]
pub struct MigrateResult {
  pub applied: Vec<i32>,
  /// Tries given up on a short lock timeout and repeated.
  pub lock_retries: u32,
  pub backfill: BackfillProgress,
}
