//! A configured client: validates arguments, owns the pool and the storage root, and runs each
//! operation on a pooled connection. Plain Rust; `lib.rs` only converts to and from JS.

use std::sync::{Arc, Mutex, OnceLock};

use crate::config::{Config, RawOptions};
use crate::error::{QuotaError, Result};
use crate::ids::{parse_bytes, parse_upload_id, ProjectId, UserId};
use crate::migrate::{self, MigrationSettings, Status};
use crate::pool::Pool;
use crate::projects::{self, ProjectStoragePath};
use crate::quota::{self, QuotaCheck, RecordedUpload};
use crate::storage::StorageConfig;
use crate::storage::{self, local::LocalBackend, DiskUsage, Location, PathCheck, StorageBackend};

enum PoolState {
  Unopened,
  Open(Arc<Pool>),
  Closed,
}

pub struct Client {
  config: Config,
  pool: Mutex<PoolState>,
  /// Opened on first allocation (the local backend creates and resolves its root then).
  backend: OnceLock<Arc<dyn StorageBackend>>,
}

impl Client {
  pub fn new(options: RawOptions) -> Result<Self> {
    Ok(Client {
      config: Config::from_options(options)?,
      pool: Mutex::new(PoolState::Unopened),
      backend: OnceLock::new(),
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

  /// Calls already running finish on the connections they hold; the pool's connections close
  /// when the last of them returns. Later calls fail with `CLIENT_CLOSED`.
  pub fn close(&self) {
    *self.pool.lock().unwrap_or_else(|e| e.into_inner()) = PoolState::Closed;
  }

  fn storage_backend(&self) -> Result<Arc<dyn StorageBackend>> {
    if let Some(backend) = self.backend.get() {
      return Ok(backend.clone());
    }
    let backend = storage::open(&self.config.storage)?;
    Ok(self.backend.get_or_init(|| backend).clone())
  }

  /// The backend for calls that only read: the opened one, or else one that creates nothing
  /// (a local root is resolved through symlinks if it exists, used as configured if not).
  fn reading_backend(&self) -> Result<Arc<dyn StorageBackend>> {
    if let Some(backend) = self.backend.get() {
      return Ok(backend.clone());
    }
    match &self.config.storage {
      StorageConfig::Local { root } => Ok(Arc::new(LocalBackend::at(
        root.canonicalize().unwrap_or_else(|_| root.clone()),
      ))),
      other => storage::open(other),
    }
  }

  /// Where `projectId` of `userId` lives (or would), without touching the database or disk.
  pub fn project_path_for(&self, user_id: &str, project_id: &str) -> Result<Location> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    self.reading_backend()?.locate(&user, &project)
  }

  /// Whether `candidate` lies inside the project's directory (see `storage::candidate`).
  pub async fn validate_path(
    &self,
    user_id: &str,
    project_id: &str,
    candidate: &str,
  ) -> Result<PathCheck> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    if candidate.is_empty() {
      return Err(QuotaError::invalid("the path to check must not be empty"));
    }
    let backend = self.reading_backend()?;
    let candidate = candidate.to_owned();
    blocking(move || backend.check_path(&user, &project, &candidate)).await
  }

  /// Bytes and files in the project's directory, counted on disk.
  pub async fn disk_usage(&self, user_id: &str, project_id: &str) -> Result<DiskUsage> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let backend = self.reading_backend()?;
    blocking(move || backend.usage(&user, &project)).await
  }

  pub async fn check_quota(&self, user_id: &str, bytes: f64) -> Result<QuotaCheck> {
    let user = UserId::parse(user_id)?;
    let bytes = parse_bytes("bytes", bytes)?;
    let pool = self.pool()?;
    let mut conn = pool.get().await?;
    quota::check_quota(&mut conn.0, &user, bytes, self.config.default_quota_bytes).await
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
    let upload_id = match upload_id {
      Some(raw) => parse_upload_id(raw)?,
      None => uuid::Uuid::new_v4().to_string(),
    };
    let pool = self.pool()?;
    let mut conn = pool.get().await?;
    quota::record_upload(
      &mut conn.0,
      &user,
      &project,
      bytes,
      &upload_id,
      self.config.default_quota_bytes,
    )
    .await
  }

  pub async fn allocate_project_path(
    &self,
    user_id: &str,
    project_id: &str,
  ) -> Result<ProjectStoragePath> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let backend = self.storage_backend()?;
    let location = backend.locate(&user, &project)?;
    let pool = self.pool()?;
    let record = {
      let mut conn = pool.get().await?;
      projects::find_or_create_path(
        &mut conn.0,
        &user,
        &project,
        &location,
        self.config.default_quota_bytes,
      )
      .await?
    };
    if record.backend != location.backend || record.path != location.path {
      return Err(QuotaError::Storage(format!(
        "project {project} is recorded at {} ({} backend), not at {} where this client's storage puts it; \
         see README \"Moving the storage root\" and \"Moving to object storage\"",
        record.path, record.backend, location.path
      )));
    }
    blocking(move || backend.prepare(&user, &project)).await?;
    Ok(record)
  }

  fn migration_settings(&self) -> Result<MigrationSettings> {
    Ok(MigrationSettings {
      default_limit_bytes: self.config.default_quota_bytes,
      storage_root: match &self.config.storage {
        // Existing projects are recorded under the root the local backend resolved.
        StorageConfig::Local { .. } => match self.storage_backend()?.local_root() {
          Some(root) => root.to_string_lossy().into_owned(),
          None => self.config.storage_root.to_string_lossy().into_owned(),
        },
        // Nothing is created for an object store; records made by the migration are local
        // ones to move (README "Moving to object storage").
        StorageConfig::S3 { .. } => self.config.storage_root.to_string_lossy().into_owned(),
      },
    })
  }

  pub async fn migrate(&self) -> Result<Vec<i32>> {
    let settings = self.migration_settings()?;
    let pool = self.pool()?;
    let applied = {
      let mut conn = pool.get().await?;
      migrate::migrate(&mut conn.0.client, &settings).await
    };
    pool.schema_changed();
    applied
  }

  pub async fn rollback(&self, steps: u32) -> Result<Vec<i32>> {
    let pool = self.pool()?;
    let reverted = {
      let mut conn = pool.get().await?;
      migrate::rollback(&mut conn.0.client, steps).await
    };
    pool.schema_changed();
    reverted
  }

  pub async fn migration_status(&self) -> Result<Status> {
    let pool = self.pool()?;
    let conn = pool.get().await?;
    migrate::status(&conn.0.client).await
  }
}

/// Filesystem work is blocking; keep it off the runtime's worker threads.
async fn blocking<T: Send + 'static>(
  work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
  tokio::task::spawn_blocking(work)
    .await
    .map_err(|e| QuotaError::Internal(format!("storage work did not finish: {e}")))?
}
