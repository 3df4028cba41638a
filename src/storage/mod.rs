//! Where a project's files live, behind one small trait so the records (`backend` + relative
//! `key`) stay the same whichever backend serves them. Two backends: the local filesystem
//! (`local.rs`) and an object store addressed by key prefix (`object_store.rs`), whose
//! allocation writes nothing anywhere: object stores have no directories to create.

pub mod candidate;
pub mod local;
pub mod object_store;
pub mod usage;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::ids::{ProjectId, UserId};

pub use usage::DiskUsage;

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
