//! Where a project's files live, behind one small trait so the records (`backend` + relative
//! `key`) stay the same whichever backend serves them. Two backends: the local filesystem
//! (`local/`) and an object store addressed by key prefix (`object_store.rs`), whose
//! allocation writes nothing anywhere: object stores have no directories to create.

pub mod candidate;
pub mod local;
pub mod object_store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};

/// The backend a client was configured with, validated but not yet opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
  /// Directories under `root` (absolute; made canonical when first used).
  Local { root: PathBuf },
  /// Keys under `s3://{bucket}/{prefix}/`. `prefix` has no leading or trailing slash and may be
  /// empty.
  S3 { bucket: String, prefix: String },
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

/// What every backend can do. The methods that touch storage are blocking; callers on the
/// async runtime run them with `spawn_blocking`.
pub trait StorageBackend: Send + Sync {
  /// The value stored in `project_storage_paths.backend`.
  fn name(&self) -> &'static str;

  /// The project's key and path or URL. Pure.
  fn locate(&self, user: &UserId, project: &ProjectId) -> Result<Location>;

  /// Makes the project's place usable (local: creates the directories). Idempotent.
  fn prepare(&self, user: &UserId, project: &ProjectId) -> Result<()>;

  /// Whether `candidate` (relative to the project, or absolute) lies inside the project.
  fn check_path(&self, user: &UserId, project: &ProjectId, candidate: &str) -> Result<PathCheck>;

  /// Bytes and files stored for the project, counted from the storage itself.
  fn usage(&self, user: &UserId, project: &ProjectId) -> Result<DiskUsage>;

  /// The canonical root directory, for backends that have one.
  fn local_root(&self) -> Option<&Path> {
    None
  }
}

/// Opens the configured backend. For `Local` this creates the root if missing and resolves it
/// once; an object store needs nothing at all (no network, no disk).
pub fn open(config: &StorageConfig) -> Result<Arc<dyn StorageBackend>> {
  Ok(match config {
    StorageConfig::Local { root } => Arc::new(local::LocalBackend::open(root)?),
    StorageConfig::S3 { bucket, prefix } => Arc::new(object_store::ObjectStoreBackend::new(
      bucket.clone(),
      prefix.clone(),
    )?),
  })
}

impl StorageConfig {
  /// The `storage` option: `local` (under `root`) or `s3` with a bucket and optional prefix.
  pub fn parse(
    backend: &str,
    bucket: Option<String>,
    prefix: Option<String>,
    root: &Path,
  ) -> Result<Self> {
    match backend {
      "local" if bucket.is_none() && prefix.is_none() => Ok(StorageConfig::Local { root: root.into() }),
      "local" => Err(QuotaError::invalid(
        "storage.bucket and storage.prefix apply to the s3 backend only; the local backend uses storageRoot",
      )),
      "s3" => {
        let bucket =
          bucket.ok_or_else(|| QuotaError::invalid("storage.bucket is required for the s3 backend"))?;
        Ok(StorageConfig::S3 {
          bucket: object_store::parse_bucket(&bucket)?,
          prefix: object_store::parse_prefix(prefix.as_deref().unwrap_or(""))?,
        })
      }
      other => Err(QuotaError::invalid(format!(
        "storage.backend must be 'local' or 's3', got {other:?}"
      ))),
    }
  }
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
