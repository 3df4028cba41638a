//! Administration: limits, usage for the UI, reconciliation and migrations.

use super::{blocking, Client};
use crate::db::migrate::{self, MigrationSettings, Status};
use crate::error::{QuotaError, Result};
use crate::ids::{parse_bytes, ProjectId, UserId};
use crate::quota::copies;
use crate::quota::limits::{self, UsageReport};
use crate::quota::reconcile::{self, UserDrift};
use crate::storage::local::tree;
use crate::storage::local::usage::project_usage;

#[derive(Debug, Clone, Default)]
pub struct ReconcileReport {
  pub users: Vec<UserDrift>,
  pub checked_users: i64,
  pub drifted_users: i64,
  pub fixed_users: i64,
  /// Projects whose app row is gone (deleted without `removeProject`).
  pub deleted_projects: i64,
}

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
    Ok(
      self
        .with_conn(async |conn| crate::quota::usage::read_usage(&mut conn.0, user).await)
        .await?
        .unwrap_or(crate::quota::usage::Usage::empty(limit)),
    )
  }

  pub async fn get_usage(&self, user_id: &str, include_projects: bool) -> Result<UsageReport> {
    let user = UserId::parse(user_id)?;
    let limit = self.default_limit();
    self
      .with_conn(async |conn| limits::get_usage(&mut conn.0, &user, limit, include_projects).await)
      .await
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

  /// Removes the directories (local backend) and path records of the user's deleted projects.
  async fn remove_deleted_dirs(&self, user: &UserId, drift: &mut UserDrift) -> Result<()> {
    for project in drift
      .projects
      .iter_mut()
      .filter(|p| p.deleted && p.path.is_some())
    {
      let id = ProjectId::parse(&project.project_id)?;
      let root = self.storage_root()?;
      let owner = user.clone();
      let gone = id.clone();
      blocking(move || tree::remove_project(&root, &owner, &gone).map(|_| ())).await?;
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

  async fn fill_disk_sizes(&self, user: &UserId, drift: &mut UserDrift) -> Result<()> {
    let root = self.storage_root()?.clone();
    let user = user.clone();
    let projects: Vec<(usize, ProjectId)> = drift
      .projects
      .iter()
      .enumerate()
      .filter(|(_, p)| p.path.is_some())
      .map(|(i, p)| Ok((i, ProjectId::parse(&p.project_id)?)))
      .collect::<Result<_>>()?;
    let sizes = blocking(move || {
      projects
        .into_iter()
        .map(|(i, project)| {
          let bytes = project_usage(&root, &user, &project)?.bytes;
          Ok((i, bytes))
        })
        .collect::<Result<Vec<_>>>()
    })
    .await?;
    for (i, bytes) in sizes {
      drift.projects[i].disk_bytes = Some(bytes);
    }
    Ok(())
  }

  fn migration_settings(&self) -> Result<MigrationSettings> {
    Ok(MigrationSettings {
      default_limit_bytes: self.config.default_quota_bytes,
      storage_root: self.migration_storage_root()?,
      project_source: self.config.project_source.clone(),
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

  /// `steps` from 1 to 1000, checked here too: a direct caller's -1 must not mean "all".
  pub async fn rollback(&self, steps: f64) -> Result<Vec<i32>> {
    let steps = crate::ids::parse_whole("steps", steps, 1, 1000)?;
    let pool = self.pool()?;
    let reverted = {
      let mut conn = pool.get().await?;
      migrate::rollback(&mut conn.0.client, steps).await
    };
    pool.schema_changed();
    reverted
  }

  pub async fn migration_status(&self) -> Result<Status> {
    self
      .with_conn(async |conn| migrate::status(&conn.0.client).await)
      .await
  }
}
