//! A configured client: validates arguments, owns the pool and the storage root, and runs each
//! operation on a pooled connection. Plain Rust; `lib.rs` only converts to and from JS.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use crate::coalesce::{self, Coalescer};
use crate::config::{Config, RawOptions};
use crate::error::{QuotaError, Result};
use crate::ids::{parse_bytes, parse_upload_id, ProjectId, UserId};
use crate::migrate::{self, MigrationSettings, Status};
use crate::paths;
use crate::pool::Pool;
use crate::projects::{self, ProjectStoragePath};
use crate::quota::{self, QuotaCheck, RecordedUpload};
use crate::shared_reads;

enum PoolState {
  Unopened,
  Open(Arc<Pool>),
  Closed,
}

pub struct Client {
  config: Config,
  pool: Mutex<PoolState>,
  root: OnceLock<PathBuf>,
  /// Concurrent uploads of one user, charged together (see `coalesce`).
  uploads: Arc<Coalescer>,
}

impl Client {
  pub fn new(options: RawOptions) -> Result<Self> {
    Ok(Client {
      config: Config::from_options(options)?,
      pool: Mutex::new(PoolState::Unopened),
      root: OnceLock::new(),
      uploads: Arc::default(),
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

  fn storage_root(&self) -> Result<&PathBuf> {
    if let Some(root) = self.root.get() {
      return Ok(root);
    }
    let root = paths::canonical_root(&self.config.storage_root)?;
    Ok(self.root.get_or_init(|| root))
  }

  pub async fn check_quota(&self, user_id: &str, bytes: f64) -> Result<QuotaCheck> {
    let user = UserId::parse(user_id)?;
    let bytes = parse_bytes("bytes", bytes)?;
    let pool = self.pool()?;
    let default_limit = self.config.default_quota_bytes;
    if let Some(check) = shared_reads::check_quota(&pool, &user, bytes, default_limit).await? {
      return Ok(check);
    }
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
    let upload = coalesce::Upload {
      user,
      project,
      bytes,
      upload_id,
    };
    self
      .uploads
      .record_upload(pool, upload, self.config.default_quota_bytes)
      .await
  }

  pub async fn allocate_project_path(
    &self,
    user_id: &str,
    project_id: &str,
  ) -> Result<ProjectStoragePath> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let root = self.storage_root()?.clone();
    let pool = self.pool()?;
    let record = {
      let mut conn = pool.get().await?;
      projects::find_or_create_path(
        &mut conn.0,
        &user,
        &project,
        &root,
        self.config.default_quota_bytes,
      )
      .await?
    };
    let expected = paths::project_path(&root, &user, &project);
    if record.backend != "local" || record.path != expected {
      return Err(QuotaError::Storage(format!(
        "project {project} is recorded at {} ({} backend), not under this client's storage root {}; \
         see README \"Moving the storage root\"",
        record.path,
        record.backend,
        root.display()
      )));
    }
    // Filesystem work is blocking; keep it off the runtime's worker threads.
    let (user_dir, project_dir) = (user.clone(), project);
    tokio::task::spawn_blocking(move || paths::ensure_project_dir(&root, &user_dir, &project_dir))
      .await
      .map_err(|e| QuotaError::Internal(format!("directory creation did not finish: {e}")))??;
    Ok(record)
  }

  fn migration_settings(&self) -> Result<MigrationSettings> {
    Ok(MigrationSettings {
      default_limit_bytes: self.config.default_quota_bytes,
      storage_root: self.storage_root()?.to_string_lossy().into_owned(),
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
