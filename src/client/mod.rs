//! A configured client: validates arguments, owns the pool and the storage root, and runs each
//! operation on a pooled connection. Plain Rust; `napi_client.rs` only converts to and from JS.
//! Operations are grouped by concept: uploads and paths here, the rest of the quota lifecycle
//! in `lifecycle.rs`, administration (limits, usage, reconciliation, migrations) in `admin.rs`.

mod admin;
mod lifecycle;

pub use admin::ReconcileReport;
pub use lifecycle::{CopiedProject, RegisteredProject};

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::{Config, RawOptions};
use crate::error::{QuotaError, Result};
use crate::ids::{parse_bytes, upload_key_or_new, ProjectId, UserId};
use crate::paths;
use crate::pool::{Checkout, Pool};
use crate::projects::{self, ProjectStoragePath};
use crate::quota::{self, QuotaCheck, RecordedUpload};
use crate::rollout::Mode;

enum PoolState {
  Unopened,
  Open(Arc<Pool>),
  Closed,
}

pub struct Client {
  config: Config,
  pool: Mutex<PoolState>,
  root: OnceLock<PathBuf>,
}

impl Client {
  pub fn new(options: RawOptions) -> Result<Self> {
    Ok(Client {
      config: Config::from_options(options)?,
      pool: Mutex::new(PoolState::Unopened),
      root: OnceLock::new(),
    })
  }

  pub fn config(&self) -> &Config {
    &self.config
  }

  /// The pool, opened on first use (inside the runtime, which bb8 needs).
  fn pool(&self) -> Result<Arc<Pool>> {
    let mut state = self.pool.lock().unwrap_or_else(|e| e.into_inner());
    match &*state {
      PoolState::Open(pool) => Ok(pool.clone()),
      PoolState::Closed => Err(QuotaError::ClientClosed(
        "this storage-quota client was closed; create a new one".into(),
      )),
      PoolState::Unopened => {
        let pool = Arc::new(Pool::new(&self.config)?);
        *state = PoolState::Open(pool.clone());
        Ok(pool)
      }
    }
  }

  /// Runs `work` on a pooled connection. The pool handle lives as long as the call, so a
  /// `close()` meanwhile lets it finish.
  async fn with_conn<T>(
    &self,
    work: impl AsyncFnOnce(&mut Checkout<'_>) -> Result<T>,
  ) -> Result<T> {
    let pool = self.pool()?;
    let mut conn = pool.get().await?;
    work(&mut conn).await
  }

  /// Calls already running finish on the connections they hold; the pool's connections close
  /// when the last of them returns. Later calls fail with `CLIENT_CLOSED`.
  pub fn close(&self) {
    *self.pool.lock().unwrap_or_else(|e| e.into_inner()) = PoolState::Closed;
  }

  fn storage_root(&self) -> Result<&PathBuf> {
    if let Some(root) = self.root.get() {
      return Ok(root);
    }
    let root = paths::canonical_root(&self.config.storage_root)?;
    Ok(self.root.get_or_init(|| root))
  }

  fn default_limit(&self) -> i64 {
    self.config.default_quota_bytes
  }

  fn mode_for(&self, user: &UserId) -> Mode {
    self.config.rollout.mode_for(user)
  }

  /// Whether `sizes` (one upload, or the files of a multi-file upload) fit.
  pub async fn check_quota(&self, user_id: &str, sizes: &[f64]) -> Result<QuotaCheck> {
    let user = UserId::parse(user_id)?;
    // Same bounds as the JS schema (BytesListSchema): a direct caller's [] or a million sizes
    // must not reach SQL.
    if sizes.is_empty() || sizes.len() > 10_000 {
      return Err(QuotaError::invalid(format!(
        "bytes must list 1 to 10000 sizes, got {}",
        sizes.len()
      )));
    }
    let sizes = sizes
      .iter()
      .map(|&size| parse_bytes("bytes", size))
      .collect::<Result<Vec<_>>>()?;
    if sizes
      .iter()
      .try_fold(0i64, |sum, &s| sum.checked_add(s))
      .is_none_or(|sum| sum > crate::ids::MAX_BYTES)
    {
      return Err(QuotaError::invalid(
        "the sizes add up to more than 2^53 − 1 bytes",
      ));
    }
    let mode = self.mode_for(&user);
    let limit = self.default_limit();
    self
      .with_conn(async |conn| quota::check_quota(&mut conn.0, &user, &sizes, limit, mode).await)
      .await
  }

  pub async fn record_upload(
    &self,
    user_id: &str,
    project_id: &str,
    bytes: f64,
    upload_id: Option<&str>,
  ) -> Result<RecordedUpload> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let bytes = parse_bytes("bytes", bytes)?;
    let upload_id = upload_key_or_new(upload_id)?;
    let (mode, limit) = (self.mode_for(&user), self.default_limit());
    self
      .with_conn(async |conn| {
        quota::record_upload(&mut conn.0, &user, &project, bytes, &upload_id, limit, mode).await
      })
      .await
  }

  /// The path record (created once) and the directory on disk.
  async fn allocate(&self, user: &UserId, project: &ProjectId) -> Result<ProjectStoragePath> {
    let root = self.storage_root()?.clone();
    let limit = self.default_limit();
    let record = self
      .with_conn(async |conn| {
        projects::find_or_create_path(&mut conn.0, user, project, &root, limit).await
      })
      .await?;
    let expected = paths::project_path(&root, user, project);
    if record.backend != "local" || record.path != expected {
      return Err(QuotaError::Storage(format!(
        "project {project} is recorded at {} ({} backend), not under this client's storage root {}; \
         see README \"Moving the storage root\"",
        record.path,
        record.backend,
        root.display()
      )));
    }
    let (user, project) = (user.clone(), *project);
    blocking(move || paths::ensure_project_dir(&root, &user, &project)).await?;
    Ok(record)
  }

  pub async fn allocate_project_path(
    &self,
    user_id: &str,
    project_id: &str,
  ) -> Result<ProjectStoragePath> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    self.allocate(&user, &project).await
  }
}

/// Filesystem work is blocking; keep it off the runtime's worker threads.
async fn blocking<T: Send + 'static>(
  work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
  tokio::task::spawn_blocking(work)
    .await
    .map_err(|e| QuotaError::Internal(format!("filesystem work did not finish: {e}")))?
}
