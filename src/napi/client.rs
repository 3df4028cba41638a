//! The exported `NativeClient` class: converts arguments and results, delegates to
//! `client::Client`, and maps every error to JS in one place.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::error::to_js_error;
use super::types::*;
use crate::db::migrate;
use crate::quota::{client, config, projects, usage};

/// Builds a result struct from its own fields plus the flat usage fields every result carries.
macro_rules! with_usage {
  ($usage:expr, $ty:ident { $($field:ident : $value:expr),* $(,)? }) => {{
    let usage: usage::Usage = $usage;
    $ty {
      $($field: $value,)*
      used_bytes: usage.used_bytes,
      reserved_bytes: usage.reserved_bytes,
      limit_bytes: usage.limit_bytes,
      remaining_bytes: usage.remaining_bytes(),
      percent_used: usage.percent_used(),
    }
  }};
}

fn path_to_js(record: projects::ProjectStoragePath) -> ProjectStoragePath {
  ProjectStoragePath {
    id: record.id.to_string(),
    project_id: record.project_id.to_string(),
    user_id: record.user_id,
    backend: record.backend,
    key: record.key,
    path: record.path,
    created_at: record.created_at,
  }
}

fn migration_info(m: migrate::AppliedMigration) -> MigrationInfo {
  MigrationInfo {
    version: m.version,
    name: m.name,
    applied_at: m.applied_at,
  }
}

fn settled_to_js(s: crate::quota::reservations::Settled) -> SettledReservation {
  with_usage!(
    s.usage,
    SettledReservation {
      reservation_id: s.reservation_id.to_string(),
      user_id: s.user_id,
      project_id: s.project_id.to_string(),
      status: s.status,
      held_bytes: s.reserved_bytes,
      committed_bytes: s.committed_bytes,
    }
  )
}

fn usage_to_js(user_id: &str, r: crate::quota::limits::UsageReport, with_projects: bool) -> Usage {
  with_usage!(
    r.usage,
    Usage {
      user_id: user_id.to_owned(),
      state: r.state.to_owned(),
      used_text: r.used_text,
      limit_text: r.limit_text,
      remaining_text: r.remaining_text,
      summary: r.summary,
      projects: with_projects.then(|| {
        r.projects
          .into_iter()
          .map(|p| ProjectUsage {
            project_id: p.project_id.to_string(),
            used_bytes: p.used_bytes,
            used_text: crate::format::format_bytes(p.used_bytes),
          })
          .collect()
      }),
    }
  )
}

fn drift_to_js(d: crate::quota::reconcile::UserDrift) -> UserDrift {
  UserDrift {
    drift_bytes: d.drift_bytes(),
    reserved_drift_bytes: d.reserved_drift_bytes(),
    user_id: d.user_id,
    used_bytes: d.used_bytes,
    ledger_bytes: d.ledger_bytes,
    reserved_bytes: d.reserved_bytes,
    pending_reserved_bytes: d.pending_reserved_bytes,
    fixed: d.fixed,
    projects: d
      .projects
      .into_iter()
      .map(|p| ProjectDrift {
        project_id: p.project_id.to_string(),
        ledger_bytes: p.ledger_bytes,
        disk_drift_bytes: p.disk_drift_bytes(),
        path: p.path,
        disk_bytes: p.disk_bytes,
        deleted: p.deleted,
        released_bytes: p.released_bytes,
        removed: p.removed,
      })
      .collect(),
  }
}

/// A storage-quota client with its own PostgreSQL pool. Use `createClient()` from the package
/// rather than this class directly: it validates arguments and decodes errors.
#[napi]
pub struct NativeClient {
  pub(crate) inner: client::Client,
}

#[napi]
impl NativeClient {
  #[napi(constructor, catch_unwind)]
  pub fn new(options: Option<ClientOptions>) -> Result<Self> {
    let options = options.unwrap_or_default();
    let inner = client::Client::new(config::RawOptions {
      database_url: options.database_url,
      storage_root: options.storage_root,
      default_quota_bytes: options.default_quota_bytes,
      pool_size: options.pool_size,
      connect_timeout_ms: options.connect_timeout_ms,
      statement_timeout_ms: options.statement_timeout_ms,
      application_name: options.application_name,
      mode: options.mode,
      rollout_percent: options.rollout_percent,
      reservation_ttl_ms: options.reservation_ttl_ms,
      storage: options.storage.map(|s| config::RawStorage {
        backend: s.backend,
        bucket: s.bucket,
        prefix: s.prefix,
      }),
      projects: options.projects.map(|p| config::RawProjects {
        standalone: p.standalone.unwrap_or(false),
        table: p.table,
        id: p.id,
        owner: p.owner,
      }),
    })
    .map_err(to_js_error)?;
    Ok(NativeClient { inner })
  }

  /// Whether `sizes` (one upload, or each file of a multi-file upload) fit. Never fails for
  /// "no room".
  #[napi]
  pub async fn check_quota(&self, user_id: String, sizes: Vec<f64>) -> Result<QuotaCheck> {
    let check = self
      .inner
      .check_quota(&user_id, &sizes)
      .await
      .map_err(to_js_error)?;
    Ok(with_usage!(
      check.usage,
      QuotaCheck {
        allowed: check.allowed,
        would_refuse: check.would_refuse,
        requested_bytes: check.requested_bytes,
        missing_bytes: check.missing_bytes(),
        fits: check.fits,
        mode: check.mode.as_str().to_owned(),
      }
    ))
  }

  /// Charges an upload to the user's quota, atomically and at most once per upload id.
  #[napi]
  pub async fn record_upload(
    &self,
    user_id: String,
    project_id: String,
    bytes: f64,
    options: Option<RecordUploadOptions>,
  ) -> Result<RecordedUpload> {
    let (upload_id, replaces) = options
      .map(|o| (o.upload_id, o.replaces_bytes))
      .unwrap_or_default();
    let r = self
      .inner
      .record(&user_id, &project_id, bytes, upload_id.as_deref(), replaces)
      .await
      .map_err(to_js_error)?;
    Ok(with_usage!(
      r.usage,
      RecordedUpload {
        upload_id: r.upload_id,
        bytes: r.bytes,
        duplicate: r.duplicate,
        counted: r.counted,
        would_refuse: r.would_refuse,
        replaced_bytes: r.replaced_bytes,
        net_bytes: r.net_bytes,
        mode: r.mode.as_str().to_owned(),
      }
    ))
  }

  /// Holds `bytes` against the quota for an upload whose bytes arrive later.
  #[napi]
  pub async fn reserve_upload(
    &self,
    user_id: String,
    project_id: String,
    bytes: f64,
    ttl_ms: Option<f64>,
    reservation_id: Option<String>,
  ) -> Result<Reservation> {
    let r = self
      .inner
      .reserve_upload(
        &user_id,
        &project_id,
        bytes,
        ttl_ms,
        reservation_id.as_deref(),
      )
      .await
      .map_err(to_js_error)?;
    Ok(with_usage!(
      r.usage,
      Reservation {
        reservation_id: r.reservation_id.to_string(),
        user_id: r.user_id,
        project_id: r.project_id.to_string(),
        bytes: r.bytes,
        expires_at: r.expires_at,
        would_refuse: r.would_refuse,
        mode: r.mode.as_str().to_owned(),
      }
    ))
  }

  /// Turns a reservation into usage (`actualBytes`, default the reserved amount).
  #[napi]
  pub async fn commit_upload(
    &self,
    reservation_id: String,
    actual_bytes: Option<f64>,
    user_id: Option<String>,
  ) -> Result<SettledReservation> {
    let settled = self
      .inner
      .commit_upload(&reservation_id, actual_bytes, user_id.as_deref())
      .await
      .map_err(to_js_error)?;
    Ok(settled_to_js(settled))
  }

  /// Gives a reservation's bytes back.
  #[napi]
  pub async fn cancel_upload(
    &self,
    reservation_id: String,
    user_id: Option<String>,
  ) -> Result<SettledReservation> {
    let settled = self
      .inner
      .cancel_upload(&reservation_id, user_id.as_deref())
      .await
      .map_err(to_js_error)?;
    Ok(settled_to_js(settled))
  }

  /// Gives back every expired reservation now; resolves to the number of users swept.
  #[napi]
  pub async fn sweep_expired_reservations(&self) -> Result<i64> {
    let swept = self
      .inner
      .sweep_expired_reservations()
      .await
      .map_err(to_js_error)?;
    Ok(swept as i64)
  }

  /// Releases a deleted file's bytes, by its upload id or by a byte count.
  #[napi]
  pub async fn record_deletion(
    &self,
    user_id: String,
    project_id: String,
    bytes: Option<f64>,
    upload_id: Option<String>,
    deletion_id: Option<String>,
  ) -> Result<Released> {
    let r = self
      .inner
      .record_deletion(
        &user_id,
        &project_id,
        bytes,
        upload_id.as_deref(),
        deletion_id.as_deref(),
      )
      .await
      .map_err(to_js_error)?;
    Ok(with_usage!(
      r.usage,
      Released {
        released_bytes: r.released_bytes,
        duplicate: r.duplicate,
        cancelled_reservations: 0,
      }
    ))
  }

  /// A new project: quota check, storage path, initial size counted.
  #[napi]
  pub async fn register_project(
    &self,
    user_id: String,
    project_id: String,
    size_bytes: Option<f64>,
  ) -> Result<RegisteredProject> {
    let registered = self
      .inner
      .register_project(&user_id, &project_id, size_bytes)
      .await
      .map_err(to_js_error)?;
    Ok(with_usage!(
      registered.usage,
      RegisteredProject {
        path: path_to_js(registered.path),
        counted_bytes: registered.counted_bytes,
      }
    ))
  }

  /// Copies a project's files into a new project and counts them.
  #[napi]
  pub async fn copy_project(
    &self,
    user_id: String,
    source_project_id: String,
    new_project_id: String,
  ) -> Result<CopiedProject> {
    let c = self
      .inner
      .copy_project(&user_id, &source_project_id, &new_project_id)
      .await
      .map_err(to_js_error)?;
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
  }

  /// Releases a project's bytes and, unless `deleteFiles` is false, removes its directory.
  #[napi]
  pub async fn remove_project(
    &self,
    user_id: String,
    project_id: String,
    delete_files: bool,
  ) -> Result<Released> {
    let r = self
      .inner
      .remove_project(&user_id, &project_id, delete_files)
      .await
      .map_err(to_js_error)?;
    Ok(with_usage!(
      r.usage,
      Released {
        released_bytes: r.released_bytes,
        duplicate: false,
        cancelled_reservations: r.cancelled_reservations,
      }
    ))
  }

  /// Sets a user's limit, recording who changed it and why.
  #[napi]
  pub async fn set_quota_limit(
    &self,
    user_id: String,
    limit_bytes: f64,
    changed_by: Option<String>,
    reason: Option<String>,
  ) -> Result<Usage> {
    let report = self
      .inner
      .set_quota_limit(
        &user_id,
        limit_bytes,
        changed_by.as_deref(),
        reason.as_deref(),
      )
      .await
      .map_err(to_js_error)?;
    Ok(usage_to_js(&user_id, report, false))
  }

  /// The user's usage as the UI shows it.
  #[napi]
  pub async fn get_usage(&self, user_id: String, include_projects: bool) -> Result<Usage> {
    let report = self
      .inner
      .get_usage(&user_id, include_projects)
      .await
      .map_err(to_js_error)?;
    Ok(usage_to_js(&user_id, report, include_projects))
  }

  /// Recomputes counters from the ledger; reports drift and fixes it when `fix`.
  #[napi]
  pub async fn reconcile(
    &self,
    user_id: Option<String>,
    fix: bool,
    include_disk: bool,
  ) -> Result<ReconcileReport> {
    let report = self
      .inner
      .reconcile(user_id.as_deref(), fix, include_disk)
      .await
      .map_err(to_js_error)?;
    Ok(ReconcileReport {
      checked_users: report.checked_users,
      drifted_users: report.drifted_users,
      fixed_users: report.fixed_users,
      deleted_projects: report.deleted_projects,
      users: report.users.into_iter().map(drift_to_js).collect(),
    })
  }

  /// The project's storage path, created (record and directory) on first call.
  #[napi]
  pub async fn allocate_project_path(
    &self,
    user_id: String,
    project_id: String,
  ) -> Result<ProjectStoragePath> {
    let record = self
      .inner
      .allocate_project_path(&user_id, &project_id)
      .await
      .map_err(to_js_error)?;
    Ok(path_to_js(record))
  }

  /// Applies pending migrations; resolves to the versions applied by this call.
  #[napi]
  pub async fn migrate(&self) -> Result<Vec<i32>> {
    self.inner.migrate().await.map_err(to_js_error)
  }

  /// Reverts the `steps` most recent migrations; resolves to the versions reverted.
  #[napi]
  pub async fn rollback(&self, steps: f64) -> Result<Vec<i32>> {
    self.inner.rollback(steps).await.map_err(to_js_error)
  }

  #[napi]
  pub async fn migration_status(&self) -> Result<MigrationStatus> {
    let status = self.inner.migration_status().await.map_err(to_js_error)?;
    Ok(MigrationStatus {
      applied: status.applied.into_iter().map(migration_info).collect(),
      pending: status.pending.into_iter().map(migration_info).collect(),
    })
  }

  /// Stops handing out connections; calls in flight finish first.
  #[napi(catch_unwind)]
  pub fn close(&self) {
    self.inner.close();
  }
}
