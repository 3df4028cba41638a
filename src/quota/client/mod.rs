//! A configured client: validates arguments, owns the pool and the storage root, and runs each
//! operation on a pooled connection. Plain Rust; `napi_client.rs` only converts to and from JS.
//! Operations are grouped by concept: uploads and paths here, the rest of the quota lifecycle
//! in `lifecycle.rs`, `copy.rs` copyProject, administration (limits, usage, reconciliation,
//! migrations) in `admin.rs`, which backend serves what in `backends.rs`, presigned uploads in
//! `direct.rs`, moves between backends in `moves.rs`, a project's files in `files.rs`, the way
//! into each kind's batches in `batched.rs`, the calls handed over together in `together.rs`.

mod admin;
mod backends;
mod batched;
mod copy;
mod direct;
mod files;
mod lifecycle;
mod moves;
mod together;

pub use admin::ReconcileReport;
pub use copy::CopiedProject;
pub use direct::PresignedReservation;
pub use lifecycle::RegisteredProject;
pub use moves::MovedProject;
pub use together::{CommitCall, DeletionCall, RecordCall, ReserveCall};

use std::sync::{Arc, Mutex, OnceLock};

use crate::db::pool::{Checkout, Pool};
use crate::error::{QuotaError, Result};
use crate::ids::{parse_bytes, upload_key_or_new, ProjectId, UserId};
use crate::quota::batch::Batcher;
use crate::quota::coalesce;
use crate::quota::coalesce_cancel;
use crate::quota::coalesce_commit;
use crate::quota::coalesce_deletion;
use crate::quota::coalesce_reserve;
use crate::quota::config::{Config, RawOptions};
use crate::quota::deletions::Released;
use crate::quota::projects::{self, ProjectStoragePath};
use crate::quota::reservations::{Reservation, Settled};
use crate::quota::usage::{self, QuotaCheck, RecordedUpload, Usage};
use crate::rollout::Mode;
use crate::storage::blocking;
use crate::storage::{DiskUsage, Location, PathCheck, StorageBackend};

/// What `recordUpload` answers, for a plain upload and for an overwrite alike.
#[derive(Debug, Clone)]
pub struct Uploaded {
  pub upload_id: String,
  pub bytes: i64,
  /// Counted bytes of the replaced content given back (0 without `replacesBytes`).
  pub replaced_bytes: i64,
  /// What the quota was charged by this call: 0 for a duplicate or when not counted.
  pub net_bytes: i64,
  pub duplicate: bool,
  pub counted: bool,
  pub would_refuse: bool,
  pub mode: Mode,
  pub usage: Usage,
}

impl From<RecordedUpload> for Uploaded {
  /// A plain upload's answer (no replaced content).
  fn from(r: RecordedUpload) -> Self {
    Uploaded {
      net_bytes: if r.duplicate || !r.counted {
        0
      } else {
        r.bytes
      },
      replaced_bytes: 0,
      upload_id: r.upload_id,
      bytes: r.bytes,
      duplicate: r.duplicate,
      counted: r.counted,
      would_refuse: r.would_refuse,
      mode: r.mode,
      usage: r.usage,
    }
  }
}

/// Only for A/B runs of bench/ (BENCHMARKS.md): `STORAGE_QUOTA_BENCH_BATCH=0` sends each read,
/// each charge and each release on its own.
pub(super) fn batching_enabled() -> bool {
  static ENABLED: OnceLock<bool> = OnceLock::new();
  *ENABLED.get_or_init(|| std::env::var("STORAGE_QUOTA_BENCH_BATCH").as_deref() != Ok("0"))
}

/// Read statements in flight at once. One: against two, 9-37 % more reads per second at 16 and
/// 64 callers for a half to a third of the database CPU per read (BENCHMARKS.md, "One worker, one
/// batch in flight"). Only for A/B runs of bench/: `STORAGE_QUOTA_BENCH_READS_IN_FLIGHT=N`.
fn reads_in_flight() -> usize {
  std::env::var("STORAGE_QUOTA_BENCH_READS_IN_FLIGHT")
    .ok()
    .and_then(|v| v.parse().ok())
    .unwrap_or(1)
}

/// Charge transactions of a kind in flight at once. One: measured against two on a quiet
/// machine (BENCHMARKS.md, "One worker, one batch in flight"), the larger batches gave 11-29 %
/// more charges per second at 16 and 64 callers for 26-38 % less database CPU per charge. Only
/// for A/B runs of bench/: `STORAGE_QUOTA_BENCH_CHARGES_IN_FLIGHT=N`.
fn charges_in_flight() -> usize {
  std::env::var("STORAGE_QUOTA_BENCH_CHARGES_IN_FLIGHT")
    .ok()
    .and_then(|v| v.parse().ok())
    .unwrap_or(1)
}

enum PoolState {
  Unopened,
  Open(Arc<Pool>),
  Closed,
}

pub struct Client {
  config: Config,
  pool: Mutex<PoolState>,
  /// Concurrent uploads of any users, charged in one transaction (see `coalesce`).
  uploads: Arc<Batcher<coalesce::Upload, RecordedUpload>>,
  /// Concurrent reservations of any users, held in one transaction (see `coalesce_reserve`).
  reserves: Arc<Batcher<coalesce_reserve::Reserve, Reservation>>,
  /// Concurrent commits of any users' reservations, in one transaction (see `coalesce_commit`).
  commits: Arc<Batcher<coalesce_commit::Commit, coalesce_commit::Committed>>,
  /// Concurrent cancels of any users' reservations, in one transaction (see `coalesce_cancel`).
  cancels: Arc<Batcher<coalesce_cancel::Cancel, Settled>>,
  /// Concurrent deletions of any users (`recordDeletion`, `deleteProjectFile`), released in one
  /// transaction (see `coalesce_deletion`).
  deletions: Arc<Batcher<coalesce_deletion::Deletion, Released>>,
  /// Concurrent usage reads of any users, sent as one statement (see `batch`).
  reads: Arc<Batcher<String, Option<Usage>>>,
  /// Opened on first allocation (the local backend creates and resolves its root then).
  backend: OnceLock<Arc<dyn StorageBackend>>,
  /// The local disk under `storageRoot` when the configured backend is another one: the
  /// other side of a move, opened only by one.
  local: OnceLock<Arc<dyn StorageBackend>>,
}

impl Client {
  pub fn new(options: RawOptions) -> Result<Self> {
    Ok(Client {
      config: Config::from_options(options)?,
      pool: Mutex::new(PoolState::Unopened),
      uploads: Arc::new(Batcher::new(charges_in_flight())),
      reserves: Arc::new(Batcher::new(charges_in_flight())),
      commits: Arc::new(Batcher::new(charges_in_flight())),
      cancels: Arc::new(Batcher::new(charges_in_flight())),
      deletions: Arc::new(Batcher::new(charges_in_flight())),
      reads: Arc::new(Batcher::new(reads_in_flight())),
      backend: OnceLock::new(),
      local: OnceLock::new(),
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
        let pool = Arc::new(Pool::new(&self.config.db)?);
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
    self
      .reading_backend()?
      .check_path(&user, &project, candidate)
      .await
  }

  /// Bytes and files stored for the project, counted in storage (the disk, or the bucket's
  /// listing).
  pub async fn disk_usage(&self, user_id: &str, project_id: &str) -> Result<DiskUsage> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    self.reading_backend()?.usage(&user, &project).await
  }

  /// Whether the package keeps its own project registry (`projects: 'standalone'`).
  fn standalone(&self) -> bool {
    self.config.project_source == crate::db::project_source::ProjectSource::Standalone
  }

  fn default_limit(&self) -> i64 {
    self.config.default_quota_bytes
  }

  fn mode_for(&self, user: &UserId) -> Mode {
    self.config.rollout.mode_for(user)
  }

  /// Whether `sizes` (one upload, or the files of a multi-file upload) fit.
  pub async fn check_quota(&self, user_id: &str, sizes: &[f64]) -> Result<QuotaCheck> {
    let (user, sizes) = together::check_arguments(user_id, sizes)?;
    let mode = self.mode_for(&user);
    let usage = self.read_usage_or_unseeded(&user).await?;
    Ok(usage::decide_check(usage, &sizes, mode))
  }

  /// The user's usage, read with the other reads in flight; for a user without a quota row, the
  /// default limit and the baselines seeding will count (the read just made says there is no
  /// row; reading it again would cost a round trip).
  async fn read_usage_or_unseeded(&self, user: &UserId) -> Result<Usage> {
    match self.read_usage_batched(user).await? {
      Some(usage) => Ok(usage),
      None => self.unseeded_usage(user).await,
    }
  }

  /// A user without a quota row: the default limit and the baselines seeding will count.
  async fn unseeded_usage(&self, user: &UserId) -> Result<Usage> {
    let limit = self.default_limit();
    self
      .with_conn(async |conn| usage::unseeded_usage(&mut conn.0, user, limit).await)
      .await
  }

  /// The user's usage (`None`: no quota row yet), read together with the other users' reads in
  /// flight at the same moment (see `batch`): one statement for all of them.
  async fn read_usage_batched(&self, user: &UserId) -> Result<Option<Usage>> {
    if !batching_enabled() {
      let pool = self.pool()?;
      let mut conn = pool.get().await?;
      return usage::read_usage(&mut conn.0, user).await;
    }
    batched::only(
      self
        .read_usages_together(vec![user.as_str().to_owned()])
        .await,
    )
  }

  /// `recordUpload`: a plain upload, or with `replaced_bytes` an overwrite charged the net
  /// change. One answer shape for both.
  pub async fn record(
    &self,
    user_id: &str,
    project_id: &str,
    bytes: f64,
    upload_id: Option<&str>,
    replaced_bytes: Option<f64>,
  ) -> Result<Uploaded> {
    if let Some(replaced) = replaced_bytes {
      let mode = self.mode_for(&UserId::parse(user_id)?);
      let o = self
        .record_overwrite(user_id, project_id, bytes, replaced, upload_id)
        .await?;
      return Ok(Uploaded {
        upload_id: o.upload_id,
        bytes: o.bytes,
        replaced_bytes: o.replaced_bytes,
        net_bytes: o.net_bytes,
        duplicate: o.duplicate,
        counted: mode != Mode::Off,
        would_refuse: o.would_refuse,
        mode,
        usage: o.usage,
      });
    }
    let r = self
      .record_upload(user_id, project_id, bytes, upload_id)
      .await?;
    Ok(Uploaded::from(r))
  }

  pub async fn record_upload(
    &self,
    user_id: &str,
    project_id: &str,
    bytes: f64,
    upload_id: Option<&str>,
  ) -> Result<RecordedUpload> {
    let upload = upload_of(user_id, project_id, bytes, upload_id)?;
    let (mode, limit) = (self.mode_for(&upload.user), self.default_limit());
    if mode == Mode::Enforce && batching_enabled() {
      return batched::only(self.uploads_together(vec![upload]).await);
    }
    let coalesce::Upload {
      user,
      project,
      bytes,
      upload_id,
    } = upload;
    self
      .with_conn(async |conn| {
        usage::record_upload(&mut conn.0, &user, &project, bytes, &upload_id, limit, mode).await
      })
      .await
  }

  /// The path record (created once) and the place in storage (the directory on local disk).
  async fn allocate(&self, user: &UserId, project: &ProjectId) -> Result<ProjectStoragePath> {
    let pool = self.pool()?;
    let mut conn = pool.get().await?;
    Ok(self.allocate_on(&mut conn.0, user, project).await?.0)
  }

  /// [`Self::allocate`] on a connection the caller holds; also says whether the record was
  /// created by this call.
  async fn allocate_on(
    &self,
    conn: &mut crate::db::pool::PgConnection,
    user: &UserId,
    project: &ProjectId,
  ) -> Result<(ProjectStoragePath, bool)> {
    let backend = self.storage_backend()?;
    let location = backend.locate(user, project)?;
    let limit = self.default_limit();
    let (record, created) = projects::find_or_create(conn, user, project, &location, limit).await?;
    if record.backend != location.backend || record.path != location.path {
      return Err(QuotaError::Storage(format!(
        "project {project} is recorded at {} ({} backend), not at {} where this client's storage puts it; \
         move it with moveProjectStorage (README \"Object storage (s3)\"), or see \"Moving the storage root\" and \"Moving to object storage by hand\"",
        record.path, record.backend, location.path
      )));
    }
    backend.prepare(user, project).await?;
    Ok((record, created))
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

/// A plain upload's arguments, checked: the user, the project, the bytes and the upload id (a new
/// UUID when none is given).
pub(super) fn upload_of(
  user_id: &str,
  project_id: &str,
  bytes: f64,
  upload_id: Option<&str>,
) -> Result<coalesce::Upload> {
  Ok(coalesce::Upload {
    user: UserId::parse(user_id)?,
    project: ProjectId::parse(project_id)?,
    bytes: parse_bytes("bytes", bytes)?,
    upload_id: upload_key_or_new(upload_id)?,
  })
}
