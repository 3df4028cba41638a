//! Where a project's files live, behind one small trait so the records (`backend` + relative
//! `key`) stay the same whichever backend serves them. Two backends: the local filesystem
//! (`local/`) and an object store addressed by key prefix (`object_store.rs`), whose
//! allocation writes nothing anywhere: object stores have no directories to create.

pub mod candidate;
pub mod local;
pub mod object_store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};

/// The backend a client was configured with, validated but not yet opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
  /// Directories under `root` (absolute; made canonical when first used).
  Local { root: PathBuf },
  /// Keys under `s3://{bucket}/{prefix}/` of an S3-compatible store.
  S3(S3Config),
}

/// An S3-compatible bucket. Whatever is not given here comes from the usual AWS environment
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`), read when the client is built.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct S3Config {
  pub bucket: String,
  /// No leading or trailing slash; may be empty.
  pub prefix: String,
  /// `http(s)://host:port` of an S3-compatible store (path-style requests); AWS when absent.
  pub endpoint: Option<String>,
  pub region: Option<String>,
  pub access_key_id: Option<String>,
  pub secret_access_key: Option<Secret>,
  pub session_token: Option<Secret>,
}

/// A credential: compared and cloned like a string, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("Secret(***)")
  }
}

/// A project's place in a backend, computed without touching anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
  /// The value stored in `project_storage_paths.backend`.
  pub backend: &'static str,
  /// `{userId}/{projectId}/`, the same for every backend.
  pub key: String,
  /// Absolute directory (local) or URL (object store), with a trailing slash.
  pub path: String,
}

/// The answer of `validatePath`: whether a candidate path lies inside a project's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCheck {
  pub inside: bool,
  /// The candidate as an absolute path (or URL) inside the project, when `inside`.
  pub path: Option<String>,
  /// The candidate relative to the project directory (`""` for the directory itself).
  pub relative_path: Option<String>,
  /// Why the candidate is refused, when not `inside`.
  pub reason: Option<String>,
}

impl PathCheck {
  pub fn refused(reason: impl Into<String>) -> Self {
    PathCheck {
      inside: false,
      path: None,
      relative_path: None,
      reason: Some(reason.into()),
    }
  }
}

/// One file of a project: its path relative to the project (`a/b.txt`) and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
  pub path: String,
  pub bytes: i64,
}

/// A file's bytes in flight between backends (a local read, an object's body).
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// What every backend can do. Naming a project's place is pure and synchronous; everything
/// that touches storage is async (the local backend runs its blocking filesystem work on
/// tokio's blocking pool itself, the object store does network I/O), so the domain calls every
/// backend the same way and never asks which one it has.
#[async_trait]
pub trait StorageBackend: Send + Sync {
  /// The value stored in `project_storage_paths.backend`.
  fn name(&self) -> &'static str;

  /// The project's key and path or URL. Pure.
  fn locate(&self, user: &UserId, project: &ProjectId) -> Result<Location>;

  /// The canonical root directory, for backends that have one.
  fn local_root(&self) -> Option<&Path> {
    None
  }

  /// Makes the project's place usable (local: creates the directories). Idempotent.
  async fn prepare(&self, user: &UserId, project: &ProjectId) -> Result<()>;

  /// Whether `candidate` (relative to the project, or absolute) lies inside the project.
  async fn check_path(
    &self,
    user: &UserId,
    project: &ProjectId,
    candidate: &str,
  ) -> Result<PathCheck>;

  /// Bytes and files stored for the project, counted from the storage itself.
  async fn usage(&self, user: &UserId, project: &ProjectId) -> Result<DiskUsage>;

  /// Every file of the project with its size, sorted by path (symlinks and special files are
  /// not files here). A project with nothing stored lists nothing.
  async fn list(&self, user: &UserId, project: &ProjectId) -> Result<Vec<StoredFile>>;

  /// Copies every file of `from` into the empty `to` of the same user (server-side where the
  /// store can); returns the bytes copied. On failure nothing copied stays behind.
  async fn copy_project(&self, user: &UserId, from: &ProjectId, to: &ProjectId) -> Result<i64>;

  /// Deletes every file of the project and the project's place itself. Nothing there is fine.
  async fn remove_project(&self, user: &UserId, project: &ProjectId) -> Result<()>;

  /// The size of one file (an object's `HEAD`), `None` when it does not exist.
  async fn file_size(&self, user: &UserId, project: &ProjectId, file: &str) -> Result<Option<i64>>;

  /// Reads one file.
  async fn read(&self, user: &UserId, project: &ProjectId, file: &str) -> Result<ByteStream>;

  /// Writes one file from `body` (replacing it if it exists); returns the bytes written.
  async fn write(
    &self,
    user: &UserId,
    project: &ProjectId,
    file: &str,
    body: ByteStream,
  ) -> Result<i64>;

  /// Deletes one file; a missing one is fine.
  async fn delete(&self, user: &UserId, project: &ProjectId, file: &str) -> Result<()>;

  /// A URL a client can `PUT` the file's bytes to without credentials, valid for `expires_in`.
  /// Only object stores can; the local backend answers `STORAGE_ERROR`.
  async fn presign_put(
    &self,
    user: &UserId,
    project: &ProjectId,
    file: &str,
    expires_in: Duration,
  ) -> Result<String>;
}

/// Opens the configured backend. For `Local` this creates the root if missing and resolves it
/// once; an object store builds its client (no network, no disk).
pub fn open(config: &StorageConfig) -> Result<Arc<dyn StorageBackend>> {
  Ok(match config {
    StorageConfig::Local { root } => Arc::new(local::LocalBackend::open(root)?),
    StorageConfig::S3(s3) => Arc::new(object_store::ObjectStoreBackend::new(s3)?),
  })
}

/// Blocking filesystem work, kept off the runtime's worker threads.
pub(crate) async fn blocking<T: Send + 'static>(
  work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
  tokio::task::spawn_blocking(work)
    .await
    .map_err(|e| QuotaError::Internal(format!("storage work did not finish: {e}")))?
}

impl StorageConfig {
  /// The `storage` option: `local` (under `root`) or `s3` with a bucket and optional prefix,
  /// endpoint, region and credentials.
  pub fn parse(raw: RawS3Options, backend: &str, root: &Path) -> Result<Self> {
    let any_s3 = raw.bucket.is_some()
      || raw.prefix.is_some()
      || raw.endpoint.is_some()
      || raw.region.is_some()
      || raw.access_key_id.is_some()
      || raw.secret_access_key.is_some()
      || raw.session_token.is_some();
    match backend {
      "local" if !any_s3 => Ok(StorageConfig::Local { root: root.into() }),
      "local" => Err(QuotaError::invalid(
        "storage.bucket, prefix, endpoint, region and credentials apply to the s3 backend only; the local backend uses storageRoot",
      )),
      "s3" => Ok(StorageConfig::S3(object_store::parse_s3(raw)?)),
      other => Err(QuotaError::invalid(format!(
        "storage.backend must be 'local' or 's3', got {other:?}"
      ))),
    }
  }
}

/// The s3 settings as they arrive, before validation.
#[derive(Debug, Clone, Default)]
pub struct RawS3Options {
  pub bucket: Option<String>,
  pub prefix: Option<String>,
  pub endpoint: Option<String>,
  pub region: Option<String>,
  pub access_key_id: Option<String>,
  pub secret_access_key: Option<Secret>,
  pub session_token: Option<Secret>,
}

/// The relative key of a project: `{userId}/{projectId}/`.
pub fn project_key(user: &UserId, project: &ProjectId) -> String {
  format!("{user}/{project}/")
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
  /// Sum of the sizes of the regular files (a hard-linked file counts once).
  pub bytes: i64,
  /// Space the files and directories take on disk (`st_blocks` × 512), as `du` reports it.
  pub allocated_bytes: i64,
  pub files: i64,
  /// Directories below the project directory.
  pub directories: i64,
  /// Symlinks, sockets, FIFOs and devices: neither followed nor counted.
  pub skipped: i64,
}
