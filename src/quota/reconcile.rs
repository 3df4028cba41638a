//! Reconciliation: recompute each user's counters from the ledger (the record of every charge
//! and release) and from live reservations, report drift per user and project, and fix the
//! counters when asked. Each user is handled in a transaction holding the quota row lock, so it
//! is safe while uploads go on: a charge either finished before (in counter and ledger) or
//! waits until after.

use crate::db::pool::PgConnection;
use crate::error::Result;
use crate::ids::UserId;

#[derive(Debug, Clone)]
pub struct ProjectDrift {
  pub project_id: String,
  /// The project's usage counter (`quota_project_usage`) as it was.
  pub used_bytes: i64,
  pub ledger_bytes: i64,
  /// The project's directory or object prefix URL, when it has a record (stored sizes are
  /// filled in by the caller).
  pub path: Option<String>,
  /// The record's backend (`local`, `s3`), when it has one.
  pub backend: Option<String>,
  pub disk_bytes: Option<i64>,
  /// The app's row is gone (deleted without `removeProject`) while bytes or a path record remain.
  pub deleted: bool,
  /// Bytes given back for a deleted project by this run (`fix`), 0 otherwise.
  pub released_bytes: i64,
  /// Its directory and path record were removed by this run (`fix`, local backend).
  pub removed: bool,
}

#[derive(Debug, Clone)]
pub struct UserDrift {
  pub user_id: String,
  /// `used_bytes` as the counter had it.
  pub used_bytes: i64,
  /// What the ledger adds up to.
  pub ledger_bytes: i64,
  pub reserved_bytes: i64,
  /// Bytes of pending reservations (after giving back the expired ones in the same transaction).
  pub pending_reserved_bytes: i64,
  pub fixed: bool,
  pub projects: Vec<ProjectDrift>,
}

impl ProjectDrift {
  /// Disk bytes minus ledger bytes, when the disk was measured.
  pub fn disk_drift_bytes(&self) -> Option<i64> {
    self.disk_bytes.map(|disk| disk - self.ledger_bytes)
  }
}

impl UserDrift {
  /// Counter minus ledger.
  pub fn drift_bytes(&self) -> i64 {
    self.used_bytes - self.ledger_bytes
  }

  /// Reserved counter minus live reservations.
  pub fn reserved_drift_bytes(&self) -> i64 {
    self.reserved_bytes - self.pending_reserved_bytes
  }

  pub fn drifted(&self) -> bool {
    self.used_bytes != self.ledger_bytes
      || self.reserved_bytes != self.pending_reserved_bytes
      || self.projects.iter().any(|p| p.used_bytes != p.ledger_bytes)
  }

  /// Projects whose app row is gone.
  pub fn deleted_projects(&self) -> i64 {
    self.projects.iter().filter(|p| p.deleted).count() as i64
  }
}

/// Each project of the user: its ledger sum, its counter, its path and backend.
const PROJECTS: &str = "
SELECT coalesce(sp.project_id, l.project_id, u.project_id) AS project_id,
       coalesce(l.bytes, 0)::bigint, coalesce(u.used_bytes, 0)::bigint,
       sp.path, sp.backend,
       (coalesce(l.bytes, 0) <> 0 OR sp.project_id IS NOT NULL)
         AND NOT EXISTS (SELECT 1 FROM storage_quota_project(coalesce(sp.project_id, l.project_id, u.project_id))) AS deleted
  FROM (SELECT project_id, sum(bytes) AS bytes FROM (
          SELECT project_id, bytes FROM quota_ledger WHERE user_id = $1 AND project_id IS NOT NULL
          UNION ALL
          -- Each project's share of the user's baseline entry (migration 0009).
          SELECT share.key, share.value::bigint FROM quota_ledger b
           CROSS JOIN LATERAL jsonb_each_text(b.baseline_projects) AS share
           WHERE b.user_id = $1 AND b.baseline_projects IS NOT NULL) entries
         GROUP BY project_id) l
  FULL JOIN (SELECT project_id, backend, path FROM project_storage_paths WHERE user_id = $1) sp
    ON sp.project_id = l.project_id
  FULL JOIN (SELECT project_id, used_bytes FROM quota_project_usage WHERE user_id = $1) u
    ON u.project_id = coalesce(sp.project_id, l.project_id)
 ORDER BY 1";

const FIX_PROJECT: &str = "
INSERT INTO quota_project_usage AS u (user_id, project_id, used_bytes) VALUES ($1, $2, $3)
ON CONFLICT (user_id, project_id) DO UPDATE SET used_bytes = EXCLUDED.used_bytes, updated_at = now()";

/// The user's projects that hold bytes or reservations but whose app row is gone.
const DELETED_PROJECTS: &str = "
SELECT x.project_id FROM (
  SELECT project_id FROM quota_project_usage WHERE user_id = $1 AND used_bytes <> 0
  UNION
  SELECT project_id FROM quota_reservations WHERE user_id = $1 AND status = 'pending'
) x
 WHERE NOT EXISTS (SELECT 1 FROM storage_quota_project(x.project_id))";

/// Forgets the path record of a deleted project (its directory is gone).
pub async fn forget_path(conn: &mut PgConnection, user: &UserId, project: &str) -> Result<()> {
  conn
    .execute(
      "DELETE FROM project_storage_paths sp WHERE sp.project_id = $1 AND sp.user_id = $2
          AND NOT EXISTS (SELECT 1 FROM storage_quota_project($1))",
      &[&project, &user.as_str()],
    )
    .await?;
  Ok(())
}

/// The users to check: one, or every user with a quota row, in pages.
pub async fn users_after(conn: &mut PgConnection, after: &str, limit: i64) -> Result<Vec<String>> {
  let rows = conn
    .query(
      "SELECT user_id FROM user_quotas WHERE user_id > $1 ORDER BY user_id LIMIT $2",
      &[&after, &limit],
    )
    .await?;
  Ok(rows.iter().map(|row| row.get(0)).collect())
}

pub async fn reconcile_user(
  conn: &mut PgConnection,
  user: &UserId,
  fix: bool,
) -> Result<Option<UserDrift>> {
  // Projects whose app row is gone give back what they hold, each in its own statement that
  // locks reservation rows before the quota row (which the transaction below then holds).
  let mut released = std::collections::HashMap::new();
  if fix {
    for row in conn.query(DELETED_PROJECTS, &[&user.as_str()]).await? {
      let project: String = row.get(0);
      let bytes: i64 = conn
        .query_one(
          "SELECT storage_quota_release_project($1, $2)",
          &[&project, &user.as_str()],
        )
        .await?
        .get(0);
      released.insert(project, bytes);
    }
  }
  let tx = conn.transaction().await?;
  // Expired reservations first, inside this transaction (reservation rows before the quota row,
  // the order every other writer uses): now() is the transaction's start, so every reservation
  // still pending below is one the counter must hold — none can be given back twice.
  tx.execute(crate::quota::usage::SWEEP_USER_SQL, &[&user.as_str()])
    .await?;
  let Some(counter) = tx
    .query_opt(
      "SELECT used_bytes, reserved_bytes FROM user_quotas WHERE user_id = $1 FOR UPDATE",
      &[&user.as_str()],
    )
    .await?
  else {
    return Ok(None);
  };
  let totals = tx
    .query_one(
      "SELECT (SELECT coalesce(sum(bytes), 0)::bigint FROM quota_ledger WHERE user_id = $1),
              (SELECT coalesce(sum(bytes), 0)::bigint FROM quota_reservations
                WHERE user_id = $1 AND status = 'pending')",
      &[&user.as_str()],
    )
    .await?;
  let projects = tx
    .query(PROJECTS, &[&user.as_str()])
    .await?
    .iter()
    .map(|row| ProjectDrift {
      released_bytes: released.get(row.get::<_, &str>(0)).copied().unwrap_or(0),
      project_id: row.get(0),
      ledger_bytes: row.get(1),
      used_bytes: row.get(2),
      path: row.get(3),
      backend: row.get(4),
      disk_bytes: None,
      deleted: row.get(5),
      removed: false,
    })
    .collect();
  let mut drift = UserDrift {
    user_id: user.as_str().to_owned(),
    used_bytes: counter.get(0),
    reserved_bytes: counter.get(1),
    ledger_bytes: totals.get(0),
    pending_reserved_bytes: totals.get(1),
    fixed: false,
    projects,
  };
  if fix && drift.drifted() {
    // The ledger may say more is used than the limit allows (the counter was lowered behind
    // our back): the counter must follow the ledger, so lift the guard for this transaction.
    tx.batch_execute("SET LOCAL storage_quota.allow_over_limit = 'on'")
      .await?;
    tx.execute(
      "UPDATE user_quotas SET used_bytes = greatest($2::bigint, 0), reserved_bytes = $3::bigint, updated_at = now() WHERE user_id = $1",
      &[&user.as_str(), &drift.ledger_bytes, &drift.pending_reserved_bytes],
    )
    .await?;
    for project in drift
      .projects
      .iter()
      .filter(|p| p.used_bytes != p.ledger_bytes)
    {
      tx.execute(
        FIX_PROJECT,
        &[&user.as_str(), &project.project_id, &project.ledger_bytes],
      )
      .await?;
    }
    drift.fixed = true;
  }
  tx.commit().await?;
  Ok(Some(drift))
}
