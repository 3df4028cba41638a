//! Administration: limits, usage for the UI, reconciliation and migrations.

use super::Client;
use crate::db::migrate::{self, MigrateReport, MigrationSettings, Status};
use crate::db::online::{self, Preparation};
use crate::db::project_source::ProjectSource;
use crate::error::{QuotaError, Result};
use crate::ids::{parse_bytes, ProjectId, UserId};
use crate::quota::app_table::AppTable;
use crate::quota::backfill::{self, BackfillOptions, Progress};
use crate::quota::copies;
use crate::quota::limits::{self, UsageReport};
use crate::quota::reconcile::{self, UserDrift};

#[derive(Debug, Clone, Default)]
pub struct ReconcileReport {
  pub users: Vec<UserDrift>,
  pub checked_users: i64,
  pub drifted_users: i64,
  pub fixed_users: i64,
  /// Projects whose app row is gone (deleted without `removeProject`).
  pub deleted_projects: i64,
}

/// Apps with at most this many projects are backfilled inside `migrate()`, in one batch.
const INLINE_BATCH: i64 = 10_000;

/// Longest free-text audit field (`changedBy`, `reason`).
const MAX_AUDIT_TEXT: usize = 500;

fn audit_text(name: &str, value: Option<&str>) -> Result<Option<String>> {
  match value {
    Some(text) if text.len() > MAX_AUDIT_TEXT || text.contains('\0') => Err(QuotaError::invalid(
      format!("{name} must be at most {MAX_AUDIT_TEXT} bytes without NUL characters"),
    )),
    other => Ok(other.map(str::to_owned)),
  }
}

impl Client {
  pub async fn set_quota_limit(
    &self,
    user_id: &str,
    limit_bytes: f64,
    changed_by: Option<&str>,
    reason: Option<&str>,
  ) -> Result<UsageReport> {
    let user = UserId::parse(user_id)?;
    let limit = parse_bytes("limitBytes", limit_bytes)?;
    let changed_by = audit_text("changedBy", changed_by)?;
    let reason = audit_text("reason", reason)?;
    self
      .with_conn(async |conn| {
        limits::set_quota_limit(
          &mut conn.0,
          &user,
          limit,
          changed_by.as_deref(),
          reason.as_deref(),
        )
        .await
      })
      .await
  }

  /// The user's usage now (the default quota for a user without a row).
  pub async fn usage_of(&self, user: &UserId) -> Result<crate::quota::usage::Usage> {
    let limit = self.default_limit();
    self
      .with_conn(async |conn| {
        crate::quota::usage::read_usage_or_unseeded(&mut conn.0, user, limit).await
      })
      .await
  }

  /// Applies the retention period (`historyRetentionDays`) to settled reservations and the ledger.
  pub async fn prune_history(&self) -> Result<crate::quota::retention::Pruned> {
    let days = self.config.history_retention_days;
    self
      .with_conn(async |conn| crate::quota::retention::prune_history(&mut conn.0, days).await)
      .await
  }

  /// The usage read goes with the other reads in flight (`checkQuota`'s and `getUsage`'s, of any
  /// users: one statement for all of them); a project's counters are the user's own statement.
  pub async fn get_usage(&self, user_id: &str, include_projects: bool) -> Result<UsageReport> {
    let user = UserId::parse(user_id)?;
    let usage = self.read_usage_or_unseeded(&user).await?;
    let projects = if include_projects {
      self
        .with_conn(async |conn| limits::project_usage(&mut conn.0, &user).await)
        .await?
    } else {
      Vec::new()
    };
    Ok(limits::report(usage, projects))
  }

  /// Recomputes counters from the ledger for one user or all, reporting drift (and, with
  /// `include_disk`, each local project's bytes on disk); fixes the counters when `fix`.
  pub async fn reconcile(
    &self,
    user_id: Option<&str>,
    fix: bool,
    include_disk: bool,
  ) -> Result<ReconcileReport> {
    let only = user_id.map(UserId::parse).transpose()?;
    let mut report = ReconcileReport::default();
    let mut after = String::new();
    loop {
      let batch: Vec<UserId> = match &only {
        Some(user) if report.checked_users == 0 => vec![user.clone()],
        Some(_) => Vec::new(),
        None => self
          .with_conn(async |conn| reconcile::users_after(&mut conn.0, &after, 500).await)
          .await?
          .iter()
          .map(|id| UserId::parse(id))
          .collect::<Result<_>>()?,
      };
      if batch.is_empty() {
        break;
      }
      for user in batch {
        report.checked_users += 1;
        after = user.as_str().to_owned();
        let Some(mut drift) = self
          .with_conn(async |conn| reconcile::reconcile_user(&mut conn.0, &user, fix).await)
          .await?
        else {
          continue;
        };
        if include_disk {
          self.fill_disk_sizes(&user, &mut drift).await?;
        }
        if fix {
          self.remove_deleted_dirs(&user, &mut drift).await?;
        }
        report.drifted_users += i64::from(drift.drifted());
        report.fixed_users += i64::from(drift.fixed);
        report.deleted_projects += drift.deleted_projects();
        if drift.drifted() || drift.deleted_projects() > 0 || include_disk || only.is_some() {
          report.users.push(drift);
        }
      }
    }
    Ok(report)
  }

  /// Removes the files (in the project's own backend) and path records of the user's deleted
  /// projects.
  async fn remove_deleted_dirs(&self, user: &UserId, drift: &mut UserDrift) -> Result<()> {
    for project in drift.projects.iter_mut().filter(|p| p.deleted) {
      let Some(backend) = project.backend.clone() else {
        continue;
      };
      let id = ProjectId::parse(&project.project_id)?;
      self
        .backend_named(&backend)?
        .remove_project(user, &id)
        .await?;
      self
        .with_conn(async |conn| {
          copies::forget(&mut conn.0, user, &id).await?;
          reconcile::forget_path(&mut conn.0, user, id.as_str()).await
        })
        .await?;
      project.removed = true;
    }
    Ok(())
  }

  /// Each project's bytes counted in its own backend (the disk, or the bucket's listing).
  async fn fill_disk_sizes(&self, user: &UserId, drift: &mut UserDrift) -> Result<()> {
    for project in drift.projects.iter_mut() {
      let Some(backend) = project.backend.clone() else {
        continue;
      };
      let id = ProjectId::parse(&project.project_id)?;
      let bytes = self.backend_named(&backend)?.usage(user, &id).await?.bytes;
      project.disk_bytes = Some(bytes);
    }
    Ok(())
  }

  fn migration_settings(&self, discard_usage: bool) -> Result<MigrationSettings> {
    Ok(MigrationSettings {
      default_limit_bytes: self.config.default_quota_bytes,
      storage_root: self.migration_storage_root()?,
      project_source: self.config.project_source.clone(),
      discard_usage,
    })
  }

  /// Applies pending schema migrations (milliseconds of locks each) and reports where the
  /// backfill is; it never runs the backfill, which may take minutes on a large app.
  pub async fn migrate(&self) -> Result<(MigrateReport, Progress)> {
    let settings = self.migration_settings(false)?;
    let pool = self.pool()?;
    let applied = {
      let mut conn = pool.get().await?;
      migrate::migrate(&mut conn.0, &settings).await
    };
    pool.schema_changed();
    let applied = applied?;
    if self.config.project_source == ProjectSource::Standalone {
      return Ok((applied, self.skip_backfill().await?));
    }
    let mut progress = self
      .with_conn(async |conn| backfill::status(&conn.0).await)
      .await?;
    // A small app (an empty one, a test database) is backfilled right here: a few batches of
    // milliseconds. A large one is left to `storage-quota backfill`, so boot stays fast.
    if !progress.done && self.app_is_small().await? {
      while !progress.done {
        progress = self.backfill_step(INLINE_BATCH as f64).await?;
      }
    }
    Ok((applied, progress))
  }

  /// Whether the app table holds at most `INLINE_BATCH` projects (reads at most one more row).
  async fn app_is_small(&self) -> Result<bool> {
    self
      .with_conn(async |conn| {
        let app = AppTable::load(&conn.0).await?;
        let sql = format!(
          "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT {}) AS head",
          app.t(),
          INLINE_BATCH + 1
        );
        let n: i64 = conn.0.query_one(&sql, &[]).await?.get(0);
        Ok(n <= INLINE_BATCH)
      })
      .await
  }

  /// `steps` from 1 to 1000, checked here too: a direct caller's -1 must not mean "all".
  pub async fn rollback(&self, steps: f64, discard_usage: bool) -> Result<Vec<i32>> {
    let steps = crate::ids::parse_whole("steps", steps, 1, 1000)?;
    let settings = self.migration_settings(discard_usage)?;
    let pool = self.pool()?;
    let reverted = {
      let mut conn = pool.get().await?;
      migrate::rollback(&mut conn.0, steps, &settings).await
    };
    pool.schema_changed();
    reverted
  }

  /// One unit of the backfill (see `quota::backfill::step`); call until `done`.
  pub async fn backfill_step(&self, batch_size: f64) -> Result<Progress> {
    let batch_size = i64::from(crate::ids::parse_whole(
      "batchSize",
      batch_size,
      1,
      100_000,
    )?);
    if self.config.project_source == ProjectSource::Standalone {
      return self.skip_backfill().await;
    }
    let options = BackfillOptions {
      batch_size,
      storage_root: self.migration_storage_root()?,
      default_limit: self.config.default_quota_bytes,
    };
    self
      .with_conn(async |conn| {
        let app = AppTable::load(&conn.0).await?;
        backfill::step(&mut conn.0, &app, &options).await
      })
      .await
  }

  /// The standalone registry holds only projects registered through the package, counted as
  /// they are registered: the backfill has nothing to do. Marked done so status and the CLI
  /// say so.
  async fn skip_backfill(&self) -> Result<Progress> {
    self
      .with_conn(async |conn| {
        conn
          .0
          .execute(
            "UPDATE storage_quota_backfill SET phase = 'done', finished_at = coalesce(finished_at, now()), updated_at = now()
              WHERE phase <> 'done'",
            &[],
          )
          .await?;
        backfill::status(&conn.0).await
      })
      .await
  }

  /// One step of the online preparation of big tables for pending migrations (see
  /// `db::online`); call until `done`, then `migrate`.
  pub async fn prepare_migrations_step(&self, batch_size: f64) -> Result<Preparation> {
    let batch = i64::from(crate::ids::parse_whole(
      "batchSize",
      batch_size,
      1,
      100_000,
    )?);
    self
      .with_conn(async |conn| online::step(&mut conn.0, batch).await)
      .await
  }

  pub async fn migration_preparation(&self) -> Result<Preparation> {
    self
      .with_conn(async |conn| online::status(&conn.0).await)
      .await
  }

  pub async fn backfill_status(&self) -> Result<Progress> {
    self
      .with_conn(async |conn| backfill::status(&conn.0).await)
      .await
  }

  pub async fn migration_status(&self) -> Result<Status> {
    self
      .with_conn(async |conn| migrate::status(&mut conn.0).await)
      .await
  }
}
