//! Limits (set by admins, audited) and usage as the UI shows it.

use crate::db::pool::PgConnection;
use crate::error::{QuotaError, Result};
use crate::format::format_bytes;
use crate::ids::UserId;
use crate::quota::app_table::AppTable;
use crate::quota::seed;
use crate::quota::usage::{read_usage, Usage};

/// Where a user stands: below 75 % `normal`, from 75 % `nearing`, from 90 % `critical`,
/// from 100 % `exceeded`.
pub fn quota_state(percent_used: f64) -> &'static str {
  if percent_used >= 100.0 {
    "exceeded"
  } else if percent_used >= 90.0 {
    "critical"
  } else if percent_used >= 75.0 {
    "nearing"
  } else {
    "normal"
  }
}

#[derive(Debug, Clone)]
pub struct ProjectUsage {
  pub project_id: String,
  pub used_bytes: i64,
}

#[derive(Debug, Clone)]
pub struct UsageReport {
  pub usage: Usage,
  pub state: &'static str,
  pub used_text: String,
  pub limit_text: String,
  pub remaining_text: String,
  /// "312 MB of 1 GB used (30.47 %)" — from the same numbers as `percentUsed`.
  pub summary: String,
  pub projects: Vec<ProjectUsage>,
}

pub fn report(usage: Usage, projects: Vec<ProjectUsage>) -> UsageReport {
  let percent = usage.percent_used();
  let taken = usage.used_bytes + usage.reserved_bytes;
  UsageReport {
    usage,
    state: quota_state(percent),
    used_text: format_bytes(taken),
    limit_text: format_bytes(usage.limit_bytes),
    remaining_text: format_bytes(usage.remaining_bytes()),
    summary: format!(
      "{} of {} used ({percent:.2} %)",
      format_bytes(taken),
      format_bytes(usage.limit_bytes)
    ),
    projects,
  }
}

/// Each project's counter (`quota_project_usage`, kept with every charge), and 0 for a project
/// with a path but nothing counted yet.
const PROJECT_USAGE: &str = "
SELECT coalesce(sp.project_id, u.project_id), coalesce(u.used_bytes, 0)::bigint
  FROM (SELECT project_id FROM project_storage_paths WHERE user_id = $1) sp
  FULL JOIN (SELECT project_id, used_bytes FROM quota_project_usage WHERE user_id = $1) u
    ON u.project_id = sp.project_id
 ORDER BY 1";

/// Each of the user's projects with its counted bytes, by project id.
pub async fn project_usage(conn: &mut PgConnection, user: &UserId) -> Result<Vec<ProjectUsage>> {
  let rows = conn.query(PROJECT_USAGE, &[&user.as_str()]).await?;
  Ok(
    rows
      .iter()
      .map(|row| ProjectUsage {
        project_id: row.get(0),
        used_bytes: row.get(1),
      })
      .collect(),
  )
}

/// Sets the user's limit (creating the row if needed) and records who changed it and why.
/// Lowering below usage is allowed: the user can then read and delete but not add.
pub async fn set_quota_limit(
  conn: &mut PgConnection,
  user: &UserId,
  limit_bytes: i64,
  changed_by: Option<&str>,
  reason: Option<&str>,
) -> Result<UsageReport> {
  let tx = conn.transaction().await?;
  let old: Option<i64> = tx
    .query_opt(
      "SELECT limit_bytes FROM user_quotas WHERE user_id = $1 FOR UPDATE",
      &[&user.as_str()],
    )
    .await?
    .map(|row| row.get(0));
  if old.is_none() {
    // A new row is seeded like any other (its projects' baselines counted once).
    let app = AppTable::load(&tx).await?;
    let size = app.size_expr(&tx).await?;
    seed::seed_owners(
      &tx,
      &app,
      size.as_deref(),
      &[user.as_str().to_owned()],
      limit_bytes,
    )
    .await?;
  }
  tx.execute(
    "UPDATE user_quotas SET limit_bytes = $2, updated_at = now() WHERE user_id = $1",
    &[&user.as_str(), &limit_bytes],
  )
  .await?;
  tx.execute(
    "INSERT INTO quota_limit_changes (user_id, old_limit_bytes, new_limit_bytes, changed_by, reason)
     VALUES ($1, $2, $3, $4, $5)",
    &[&user.as_str(), &old, &limit_bytes, &changed_by, &reason],
  )
  .await?;
  tx.commit().await?;
  let usage = read_usage(conn, user)
    .await?
    .ok_or_else(|| QuotaError::Internal("quota row missing after setting its limit".into()))?;
  Ok(report(usage, Vec::new()))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn states_follow_the_thresholds() {
    assert_eq!(quota_state(0.0), "normal");
    assert_eq!(quota_state(74.99), "normal");
    assert_eq!(quota_state(75.0), "nearing");
    assert_eq!(quota_state(89.99), "nearing");
    assert_eq!(quota_state(90.0), "critical");
    assert_eq!(quota_state(100.0), "exceeded");
    assert_eq!(quota_state(250.0), "exceeded");
  }

  #[test]
  fn summary_uses_the_same_numbers_as_the_percentage() {
    let r = report(
      Usage {
        used_bytes: 327_155_712,
        reserved_bytes: 0,
        limit_bytes: 1_073_741_824,
      },
      Vec::new(),
    );
    assert_eq!(r.summary, "312 MB of 1 GB used (30.47 %)");
    assert_eq!(r.usage.percent_used(), 30.47);
    assert_eq!(r.state, "normal");
  }
}
