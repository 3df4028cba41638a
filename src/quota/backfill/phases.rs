//! The backfill's first call (preparation) and its last phase (validating foreign keys).

use super::{BackfillOptions, OWNER_INDEX, PATH_INDEX};
use crate::db::pool::PgConnection;
use crate::error::Result;
use crate::quota::app_table::AppTable;

/// The foreign keys 0001 adds NOT VALID, validated at the end: (table, constraint).
fn constraints(app: &AppTable) -> [(String, &'static str); 3] {
  [
    (
      "project_storage_paths".into(),
      "project_storage_paths_project_id_fkey",
    ),
    ("simulation_jobs".into(), "simulation_jobs_project_id_fkey"),
    (app.t(), "projects_storage_path_id_fkey"),
  ]
}

/// First call: the app table must exist, seeding needs an owner index, and the total makes a
/// progress bar. Then the root is fixed for every later batch.
pub(super) async fn prepare(
  client: &mut PgConnection,
  app: &AppTable,
  options: &BackfillOptions,
  notes: &mut Vec<String>,
) -> Result<()> {
  app.check_exists(&*client).await?;
  if !app.has_owner_index(&*client).await? {
    // CONCURRENTLY: builds without blocking the app's writes (it cannot run in a transaction).
    // An invalid leftover of an interrupted build is dropped first.
    for sql in [
      "SET statement_timeout = 0".to_owned(),
      format!("DROP INDEX CONCURRENTLY IF EXISTS {OWNER_INDEX}"),
      format!(
        "CREATE INDEX CONCURRENTLY {OWNER_INDEX} ON {} ({})",
        app.t(),
        app.owner_col()
      ),
      "RESET statement_timeout".to_owned(),
    ] {
      client.batch_execute(&sql).await?;
    }
    notes.push(format!(
      "{} had no index on {}: created {OWNER_INDEX} (concurrently) to look projects up by owner",
      app.table, app.owner
    ));
  }
  if app.is_default() && !app.has_index_on(&*client, "storage_path_id").await? {
    notes.push(path_index(client, app).await?);
  }
  let tx = client.transaction().await?;
  tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
  let total: i64 = tx
    .query_one(&format!("SELECT count(*) FROM {}", app.t()), &[])
    .await?
    .get(0);
  tx.execute(
    "UPDATE storage_quota_backfill SET storage_root = $1, total_projects = $2,
            started_at = coalesce(started_at, now()), updated_at = now()",
    &[&options.storage_root, &total],
  )
  .await?;
  tx.commit().await?;
  Ok(())
}

/// Validates the next NOT VALID foreign key, or finishes. VALIDATE takes SHARE UPDATE EXCLUSIVE,
/// which no app read or write conflicts with, so it may wait for its lock without holding up
/// the app (autovacuum yields to it).
pub(super) async fn validate_next(client: &mut PgConnection, app: &AppTable) -> Result<()> {
  for (table, constraint) in constraints(app) {
    let valid: Option<bool> = client
      .query_opt(
        "SELECT convalidated FROM pg_constraint WHERE conname = $1 AND conrelid = to_regclass($2)",
        &[&constraint, &table.as_str()],
      )
      .await?
      .map(|r| r.get(0));
    if valid == Some(false) {
      let tx = client.transaction().await?;
      tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '60s'; SET LOCAL statement_timeout = 0;
         ALTER TABLE {table} VALIDATE CONSTRAINT {constraint}"
      ))
      .await?;
      tx.commit().await?;
      return Ok(());
    }
  }
  client
    .execute(
      "UPDATE storage_quota_backfill SET phase = 'done', finished_at = now(), updated_at = now()",
      &[],
    )
    .await?;
  Ok(())
}

/// Apps with at most this many projects get the `storage_path_id` index built right here.
const PATH_INDEX_INLINE_ROWS: i64 = 10_000;

/// `projects.storage_path_id` is the referencing side of an `ON DELETE SET NULL` key (0001):
/// without an index every path record deleted scans the app's table. A migration must not hold
/// the app's table while an index builds, and `CONCURRENTLY` cannot run here: the backfill runs
/// under the migration (or backfill) lock that other processes wait for inside transactions,
/// and a concurrent build waits for every open transaction, so it would deadlock with them. So a
/// small table gets a plain build (milliseconds under a short `lock_timeout`); a larger one is
/// left to the operator, and the note says how.
async fn path_index(client: &mut PgConnection, app: &AppTable) -> Result<String> {
  let manual = format!(
    "{} has no index on storage_path_id (path deletes scan it): run CREATE INDEX CONCURRENTLY IF NOT EXISTS {PATH_INDEX} ON {} (storage_path_id)",
    app.table,
    app.t()
  );
  let rows: i64 = client
    .query_one(
      &format!(
        "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT {}) s",
        app.t(),
        PATH_INDEX_INLINE_ROWS + 1
      ),
      &[],
    )
    .await?
    .get(0);
  if rows > PATH_INDEX_INLINE_ROWS {
    return Ok(manual);
  }
  let tx = client.transaction().await?;
  let built = tx
    .batch_execute(&format!(
      "SET LOCAL lock_timeout = '250ms'; CREATE INDEX IF NOT EXISTS {PATH_INDEX} ON {} (storage_path_id)",
      app.t()
    ))
    .await;
  match built {
    Ok(()) => tx.commit().await?,
    // The app holds the table right now: leave the index to the operator rather than wait.
    Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
      return Ok(manual)
    }
    Err(error) => return Err(error.into()),
  }
  Ok(format!(
    "{} had no index on storage_path_id: created {PATH_INDEX} for path deletes",
    app.table
  ))
}
