//! The exported `NativeClient` class: converts arguments and results, delegates to
//! `client::Client`, and maps every error to JS in one place.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::convert::*;
use super::error::{answer, js_error, Answer};
use super::types::*;
use crate::quota::{client, config};

/// A storage-quota client with its own PostgreSQL pool. Use `createClient()` from the package
/// rather than this class directly: it validates arguments and decodes errors.
#[napi]
pub struct NativeClient {
  pub(crate) inner: client::Client,
}

#[napi]
impl NativeClient {
  #[napi(constructor, catch_unwind)]
  pub fn new(env: Env, options: Option<ClientOptions>) -> Result<Self> {
    let options = options.unwrap_or_default();
    let inner = client::Client::new(config::RawOptions {
      database_url: options.database_url,
      storage_root: options.storage_root,
      default_quota_bytes: options.default_quota_bytes,
      pool_size: options.pool_size,
      min_connections: options.min_connections,
      idle_timeout_ms: options.idle_timeout_ms,
      max_lifetime_ms: options.max_lifetime_ms,
      statement_cache: options.statement_cache,
      connect_timeout_ms: options.connect_timeout_ms,
      statement_timeout_ms: options.statement_timeout_ms,
      application_name: options.application_name,
      mode: options.mode,
      rollout_percent: options.rollout_percent,
      reservation_ttl_ms: options.reservation_ttl_ms,
      history_retention_days: options.history_retention_days,
      storage: options.storage.map(|s| config::RawStorage {
        backend: s.backend,
        s3: crate::storage::RawS3Options {
          bucket: s.bucket,
          prefix: s.prefix,
          endpoint: s.endpoint,
          region: s.region,
          access_key_id: s.access_key_id,
          secret_access_key: s.secret_access_key.map(crate::storage::Secret),
          session_token: s.session_token.map(crate::storage::Secret),
        },
      }),
      projects: options.projects.map(|p| config::RawProjects {
        standalone: p.standalone.unwrap_or(false),
        table: p.table,
        id: p.id,
        owner: p.owner,
      }),
    })
    .map_err(|error| js_error(&env, error))?;
    Ok(NativeClient { inner })
  }

  /// Whether `sizes` (one upload, or each file of a multi-file upload) fit. Never fails for
  /// "no room".
  #[napi(ts_return_type = "Promise<QuotaCheck>")]
  pub async fn check_quota(&self, user_id: String, sizes: Vec<f64>) -> Result<Answer<QuotaCheck>> {
    answer(async {
      let check = self.inner.check_quota(&user_id, &sizes).await?;
      Ok(check_to_js(check))
    })
    .await
  }

  /// Charges an upload to the user's quota, atomically and at most once per upload id.
  #[napi(ts_return_type = "Promise<RecordedUpload>")]
  pub async fn record_upload(
    &self,
    user_id: String,
    project_id: String,
    bytes: f64,
    options: Option<RecordUploadOptions>,
  ) -> Result<Answer<RecordedUpload>> {
    answer(async {
      let (upload_id, replaces) = options
        .map(|o| (o.upload_id, o.replaces_bytes))
        .unwrap_or_default();
      let r = self
        .inner
        .record(&user_id, &project_id, bytes, upload_id.as_deref(), replaces)
        .await?;
      Ok(uploaded_to_js(r))
    })
    .await
  }

  /// Holds `bytes` against the quota for an upload whose bytes arrive later.
  #[napi(ts_return_type = "Promise<Reservation>")]
  pub async fn reserve_upload(
    &self,
    user_id: String,
    project_id: String,
    bytes: f64,
    ttl_ms: Option<f64>,
    reservation_id: Option<String>,
  ) -> Result<Answer<Reservation>> {
    answer(async {
      let r = self
        .inner
        .reserve_upload(
          &user_id,
          &project_id,
          bytes,
          ttl_ms,
          reservation_id.as_deref(),
        )
        .await?;
      Ok(reservation_to_js(r, None))
    })
    .await
  }

  /// Turns the user's reservation into usage (`actualBytes`, default the bytes asked for).
  #[napi(ts_return_type = "Promise<SettledReservation>")]
  pub async fn commit_upload(
    &self,
    user_id: String,
    reservation_id: String,
    actual_bytes: Option<f64>,
  ) -> Result<Answer<SettledReservation>> {
    answer(async {
      let settled = self
        .inner
        .commit_upload(&user_id, &reservation_id, actual_bytes)
        .await?;
      Ok(settled_to_js(settled))
    })
    .await
  }

  /// Gives the user's reservation's bytes back.
  #[napi(ts_return_type = "Promise<SettledReservation>")]
  pub async fn cancel_upload(
    &self,
    user_id: String,
    reservation_id: String,
  ) -> Result<Answer<SettledReservation>> {
    answer(async {
      let settled = self.inner.cancel_upload(&user_id, &reservation_id).await?;
      Ok(settled_to_js(settled))
    })
    .await
  }

  /// Gives back every expired reservation now; resolves to the number of users swept.
  #[napi(ts_return_type = "Promise<number>")]
  pub async fn sweep_expired_reservations(&self) -> Result<Answer<i64>> {
    answer(async {
      let swept = self.inner.sweep_expired_reservations().await?;
      Ok(swept as i64)
    })
    .await
  }

  /// Applies the retention period: deletes settled reservations and folds ledger entries older
  /// than `historyRetentionDays` (counters and sums unchanged).
  #[napi(ts_return_type = "Promise<PrunedHistory>")]
  pub async fn prune_history(&self) -> Result<Answer<PrunedHistory>> {
    answer(async {
      let pruned = self.inner.prune_history().await?;
      Ok(PrunedHistory {
        reservations: pruned.reservations,
        ledger_entries: pruned.ledger_entries,
      })
    })
    .await
  }

  /// Releases a deleted file's bytes, by its upload id or by a byte count.
  #[napi(ts_return_type = "Promise<Released>")]
  pub async fn record_deletion(
    &self,
    user_id: String,
    project_id: String,
    bytes: Option<f64>,
    upload_id: Option<String>,
    deletion_id: Option<String>,
  ) -> Result<Answer<Released>> {
    answer(async {
      let r = self
        .inner
        .record_deletion(
          &user_id,
          &project_id,
          bytes,
          upload_id.as_deref(),
          deletion_id.as_deref(),
        )
        .await?;
      Ok(released_to_js(r))
    })
    .await
  }

  /// A new project: quota check, storage path, initial size counted.
  #[napi(ts_return_type = "Promise<RegisteredProject>")]
  pub async fn register_project(
    &self,
    user_id: String,
    project_id: String,
    size_bytes: Option<f64>,
  ) -> Result<Answer<RegisteredProject>> {
    answer(async {
      let registered = self
        .inner
        .register_project(&user_id, &project_id, size_bytes)
        .await?;
      Ok(with_usage!(
        registered.usage,
        RegisteredProject {
          path: path_to_js(registered.path),
          counted_bytes: registered.counted_bytes,
        }
      ))
    })
    .await
  }

  /// Copies a project's files into a new project and counts them.
  #[napi(ts_return_type = "Promise<CopiedProject>")]
  pub async fn copy_project(
    &self,
    user_id: String,
    source_project_id: String,
    new_project_id: String,
  ) -> Result<Answer<CopiedProject>> {
    answer(async {
      let c = self
        .inner
        .copy_project(&user_id, &source_project_id, &new_project_id)
        .await?;
      Ok(with_usage!(
        c.usage,
        CopiedProject {
          path: path_to_js(c.path),
          copied_bytes: c.copied_bytes,
          files: c.files,
          skipped: c.skipped,
          duplicate: c.duplicate,
        }
      ))
    })
    .await
  }

  /// Releases a project's bytes and, unless `deleteFiles` is false, removes its directory.
  #[napi(ts_return_type = "Promise<Released>")]
  pub async fn remove_project(
    &self,
    user_id: String,
    project_id: String,
    delete_files: bool,
  ) -> Result<Answer<Released>> {
    answer(async {
      let r = self
        .inner
        .remove_project(&user_id, &project_id, delete_files)
        .await?;
      Ok(with_usage!(
        r.usage,
        Released {
          released_bytes: r.released_bytes,
          duplicate: false,
          cancelled_reservations: r.cancelled_reservations,
        }
      ))
    })
    .await
  }

  /// Sets a user's limit, recording who changed it and why.
  #[napi(ts_return_type = "Promise<Usage>")]
  pub async fn set_quota_limit(
    &self,
    user_id: String,
    limit_bytes: f64,
    changed_by: Option<String>,
    reason: Option<String>,
  ) -> Result<Answer<Usage>> {
    answer(async {
      let report = self
        .inner
        .set_quota_limit(
          &user_id,
          limit_bytes,
          changed_by.as_deref(),
          reason.as_deref(),
        )
        .await?;
      Ok(usage_to_js(&user_id, report, false))
    })
    .await
  }

  /// The user's usage as the UI shows it.
  #[napi(ts_return_type = "Promise<Usage>")]
  pub async fn get_usage(&self, user_id: String, include_projects: bool) -> Result<Answer<Usage>> {
    answer(async {
      let report = self.inner.get_usage(&user_id, include_projects).await?;
      Ok(usage_to_js(&user_id, report, include_projects))
    })
    .await
  }

  /// Recomputes counters from the ledger; reports drift and fixes it when `fix`.
  #[napi(ts_return_type = "Promise<ReconcileReport>")]
  pub async fn reconcile(
    &self,
    user_id: Option<String>,
    fix: bool,
    include_disk: bool,
  ) -> Result<Answer<ReconcileReport>> {
    answer(async {
      let report = self
        .inner
        .reconcile(user_id.as_deref(), fix, include_disk)
        .await?;
      Ok(ReconcileReport {
        checked_users: report.checked_users,
        drifted_users: report.drifted_users,
        fixed_users: report.fixed_users,
        deleted_projects: report.deleted_projects,
        users: report.users.into_iter().map(drift_to_js).collect(),
      })
    })
    .await
  }

  /// The project's storage path, created (record and directory) on first call.
  #[napi(ts_return_type = "Promise<ProjectStoragePath>")]
  pub async fn allocate_project_path(
    &self,
    user_id: String,
    project_id: String,
  ) -> Result<Answer<ProjectStoragePath>> {
    answer(async {
      let record = self
        .inner
        .allocate_project_path(&user_id, &project_id)
        .await?;
      Ok(path_to_js(record))
    })
    .await
  }

  /// Applies pending schema migrations; resolves to the versions applied and where the
  /// backfill of existing projects is (it is never run here).
  #[napi(ts_return_type = "Promise<MigrateResult>")]
  pub async fn migrate(&self) -> Result<Answer<MigrateResult>> {
    answer(async {
      let (report, progress) = self.inner.migrate().await?;
      Ok(MigrateResult {
        applied: report.applied,
        lock_retries: report.lock_retries,
        backfill: progress_to_js(progress),
      })
    })
    .await
  }

  /// Reverts the `steps` most recent migrations; resolves to the versions reverted.
  #[napi(ts_return_type = "Promise<Array<number>>")]
  pub async fn rollback(
    &self,
    steps: f64,
    discard_usage: Option<bool>,
  ) -> Result<Answer<Vec<i32>>> {
    answer(async {
      self
        .inner
        .rollback(steps, discard_usage.unwrap_or(false))
        .await
    })
    .await
  }

  /// One unit of the backfill: a batch of `batch_size` projects, or one constraint validated.
  #[napi(ts_return_type = "Promise<BackfillProgress>")]
  pub async fn backfill_step(&self, batch_size: f64) -> Result<Answer<BackfillProgress>> {
    answer(async { Ok(progress_to_js(self.inner.backfill_step(batch_size).await?)) }).await
  }

  /// One step of the online preparation of big tables for pending migrations: a statement,
  /// or a committed batch of `batch_size` rows. Call until `done`, then `migrate`.
  #[napi(ts_return_type = "Promise<MigrationPreparation>")]
  pub async fn prepare_migrations_step(
    &self,
    batch_size: f64,
  ) -> Result<Answer<MigrationPreparation>> {
    answer(async {
      Ok(preparation_to_js(
        self.inner.prepare_migrations_step(batch_size).await?,
      ))
    })
    .await
  }

  #[napi(ts_return_type = "Promise<MigrationPreparation>")]
  pub async fn migration_preparation(&self) -> Result<Answer<MigrationPreparation>> {
    answer(async { Ok(preparation_to_js(self.inner.migration_preparation().await?)) }).await
  }

  #[napi(ts_return_type = "Promise<BackfillProgress>")]
  pub async fn backfill_status(&self) -> Result<Answer<BackfillProgress>> {
    answer(async { Ok(progress_to_js(self.inner.backfill_status().await?)) }).await
  }

  #[napi(ts_return_type = "Promise<MigrationStatus>")]
  pub async fn migration_status(&self) -> Result<Answer<MigrationStatus>> {
    answer(async {
      let status = self.inner.migration_status().await?;
      Ok(MigrationStatus {
        applied: status.applied.into_iter().map(migration_info).collect(),
        pending: status.pending.into_iter().map(migration_info).collect(),
      })
    })
    .await
  }

  /// Stops handing out connections. A call whose task has already taken the pool finishes; one
  /// whose task has not started yet answers `CLIENT_CLOSED`, so `StorageQuotaClient.close()`
  /// calls this only once the calls made before it have settled.
  #[napi(catch_unwind)]
  pub fn close(&self) {
    self.inner.close();
  }
}
