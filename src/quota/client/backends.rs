//! Which backend serves what: the configured one (opened once), the local disk under
//! `storageRoot` as the other side of a move, and a backend for calls that only read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Client;
use crate::error::{QuotaError, Result};
use crate::storage::{self, local::LocalBackend, StorageBackend, StorageConfig};

impl Client {
  pub(super) fn storage_backend(&self) -> Result<Arc<dyn StorageBackend>> {
    if let Some(backend) = self.backend.get() {
      return Ok(backend.clone());
    }
    let backend = storage::open(&self.config.storage)?;
    Ok(self.backend.get_or_init(|| backend).clone())
  }

  /// The backend that serves records naming `name`: the configured one, or the local disk
  /// under `storageRoot` (the other side of a move). `STORAGE_ERROR` for an object store this
  /// client was not configured with.
  pub(super) fn backend_named(&self, name: &str) -> Result<Arc<dyn StorageBackend>> {
    let configured = self.storage_backend()?;
    if configured.name() == name {
      return Ok(configured);
    }
    if name == "local" {
      if let Some(local) = self.local.get() {
        return Ok(local.clone());
      }
      let local: Arc<dyn StorageBackend> = Arc::new(LocalBackend::open(&self.config.storage_root)?);
      return Ok(self.local.get_or_init(|| local).clone());
    }
    Err(QuotaError::Storage(format!(
      "the project's files are in the {name} backend, which this client is not configured for; pass storage: {{ backend: '{name}', … }}"
    )))
  }

  /// The local backend's canonical root.
  pub(super) fn storage_root(&self) -> Result<PathBuf> {
    let backend = self.storage_backend()?;
    backend
      .local_root()
      .map(Path::to_path_buf)
      .ok_or_else(|| QuotaError::Storage("no local storage root configured".into()))
  }

  /// The root the migration records existing projects under: the resolved local root, or for
  /// an object store the configured one as it is (nothing is created; README "Moving to object
  /// storage" says how to move those records).
  pub(super) fn migration_storage_root(&self) -> Result<String> {
    Ok(match &self.config.storage {
      StorageConfig::Local { .. } => self.storage_root()?.to_string_lossy().into_owned(),
      StorageConfig::S3 { .. } => self.config.storage_root.to_string_lossy().into_owned(),
    })
  }

  /// The backend for calls that only read: the opened one, or else one that creates nothing
  /// (a local root is resolved through symlinks if it exists, used as configured if not).
  pub(super) fn reading_backend(&self) -> Result<Arc<dyn StorageBackend>> {
    if let Some(backend) = self.backend.get() {
      return Ok(backend.clone());
    }
    match &self.config.storage {
      StorageConfig::Local { root } => Ok(Arc::new(LocalBackend::at(
        root.canonicalize().unwrap_or_else(|_| root.clone()),
      ))),
      // Building an object-store client touches nothing: open it once and keep it.
      _ => self.storage_backend(),
    }
  }
}
