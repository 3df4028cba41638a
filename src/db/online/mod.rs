//! The online preparation of an upgrade from 0.1.0 when storage-quota's own tables are big.
//!
//! Two pending migrations would otherwise hold a big table under ACCESS EXCLUSIVE for as long
//! as it takes to rewrite or scan it, with every quota call waiting: 0003 (`hardening`: index
//! builds, `quota_project_usage` counted from the whole ledger) and 0006 (`project_source`:
//! `project_id` uuid → text). A table with more than [`threshold`] rows is prepared first, in
//! committed steps outside any migration transaction, while the app (0.1.0 code) keeps using
//! it: indexes built CONCURRENTLY, the counters made and filled up to an exact boundary, and a
//! text shadow of `project_id` kept by a trigger, filled in keyset batches and proved complete
//! by a validated CHECK. The migrations then find the work done and only swap names (see their
//! texts), milliseconds under their locks. Small tables keep the in-transaction path.
//!
//! Every step's state is in the catalog or in `storage_quota_meta` (0001's), so a crash or a
//! Ctrl-C loses at most the step in flight and the next call continues; every step is
//! idempotent. Boot-time `migrate()` never runs a step: a migration whose preparation is not
//! done is refused (`MIGRATION_REQUIRED`, naming `storage-quota migrate`), changing nothing.

use std::time::Duration;

use crate::db::session::{Db, PgConnection};
use crate::error::{QuotaError, Result};

mod plan;
mod steps;

use plan::{tasks, Pending, Task, TABLES};
use steps::retryable;

/// Tables with at most this many rows are migrated in the migration's transaction (default
/// 10,000, like the backfill's inline limit; `STORAGE_QUOTA_ONLINE_MIGRATION_ROWS` sets it,
/// for tests and for operators who prefer a short full lock on a mid-sized table).
pub fn threshold() -> i64 {
  std::env::var("STORAGE_QUOTA_ONLINE_MIGRATION_ROWS")
    .ok()
    .and_then(|v| v.trim().parse::<i64>().ok())
    .filter(|n| *n >= 0)
    .unwrap_or(10_000)
}

/// Where the preparation is.
#[derive(Debug, Clone, Default)]
pub struct Preparation {
  /// Nothing left to prepare (also when nothing needed preparing).
  pub done: bool,
  /// The tables prepared, because they are big (or their preparation had begun).
  pub tables: Vec<String>,
  pub tasks_done: u32,
  pub tasks_total: u32,
  /// What the next step does (absent when done).
  pub next: Option<String>,
  /// Rows done and in all (an estimate) of the fill in progress.
  pub rows_done: i64,
  pub rows_total: Option<i64>,
  /// Steps given up on a lock held by the app (or a deadlock) during this call, to be retried.
  pub lock_retries: u32,
}

/// Applied migration versions, or none before the tracking table exists.
async fn applied(db: &impl Db) -> std::result::Result<Vec<i32>, tokio_postgres::Error> {
  let exists: bool = db
    .query_one(
      "SELECT to_regclass('storage_quota_migrations') IS NOT NULL",
      &[],
    )
    .await?
    .get(0);
  if !exists {
    return Ok(Vec::new());
  }
  let rows = db
    .query("SELECT version FROM storage_quota_migrations", &[])
    .await?;
  Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The big tables, and every task for them with whether it is done.
type Plan = (Vec<&'static str>, Vec<(Task, bool)>);

/// Every task the pending migrations need, each with whether it is done. Only a database
/// that has 0001 and 0002 (0.1.0's) and not yet all of 0003, 0006 and 0008 has any.
async fn survey(db: &impl Db) -> std::result::Result<Plan, tokio_postgres::Error> {
  let applied = applied(db).await?;
  let pending = Pending {
    v3: !applied.contains(&3),
    v6: !applied.contains(&6),
    v8: !applied.contains(&8),
  };
  if !applied.contains(&1) || !applied.contains(&2) || !(pending.v3 || pending.v6 || pending.v8) {
    return Ok((Vec::new(), Vec::new()));
  }
  let limit = threshold();
  let mut big = Vec::new();
  for (table, _, _) in TABLES {
    // Bounded: reads at most limit + 1 rows. A table whose preparation has begun stays
    // prepared whatever its size now.
    let row = db
      .query_one(
        &format!(
          "SELECT (SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT $1) s) > $2
               OR EXISTS (SELECT 1 FROM storage_quota_meta WHERE key = 'prepare_fill:{table}')
               OR ('{table}' = 'quota_ledger' AND EXISTS (SELECT 1 FROM storage_quota_meta WHERE key = 'usage_prefill'))"
        ),
        &[&(limit + 1), &limit],
      )
      .await?;
    if row.get::<_, bool>(0) {
      big.push(table);
    }
  }
  let mut out = Vec::new();
  for task in tasks(&big, pending) {
    let done = task.done(db).await?;
    out.push((task, done));
  }
  Ok((big, out))
}

async fn describe(
  db: &impl Db,
  big: Vec<&'static str>,
  plan: &[(Task, bool)],
) -> std::result::Result<Preparation, tokio_postgres::Error> {
  let next = plan.iter().find(|(_, done)| !done).map(|(t, _)| t);
  let (rows_done, rows_total) = match next {
    Some(task) => task.rows(db).await?,
    None => (0, None),
  };
  Ok(Preparation {
    done: next.is_none(),
    tables: big.into_iter().map(str::to_owned).collect(),
    tasks_done: plan.iter().filter(|(_, done)| *done).count() as u32,
    tasks_total: plan.len() as u32,
    next: next.map(Task::describe),
    rows_done,
    rows_total,
    lock_retries: 0,
  })
}

/// Where the preparation is, without doing any of it.
pub async fn status(db: &impl Db) -> Result<Preparation> {
  let (big, plan) = survey(db).await?;
  Ok(describe(db, big, &plan).await?)
}

/// In a migration's transaction, before migration `version` runs: refuses it (changing
/// nothing) while its big tables are not prepared, saying what to run.
pub async fn ensure_prepared(db: &impl Db, version: i32, label: &str) -> Result<()> {
  if ![3, 6, 8].contains(&version) {
    return Ok(());
  }
  let (big, plan) = survey(db).await?;
  let left = plan.iter().filter(|(_, done)| !done).count();
  if left == 0 {
    return Ok(());
  }
  Err(QuotaError::MigrationRequired(format!(
    "migration {label} would hold {} (more than {} rows) under an exclusive lock for as long as it takes to rewrite or index them, so it runs only after its online preparation ({left} step(s) left). Run `npx storage-quota migrate` as a deploy step: it prepares in committed batches while the app keeps running, then applies the migrations in milliseconds. Nothing was changed (docs/migrations.md, \"Big tables\")",
    big.join(", "),
    threshold()
  )))
}

/// Session advisory lock key around one step (distinct from the migrations' and the backfill's).
const STEP_LOCK_KEY: i64 = 0x38e6_1a1c_67b1_7ef7;

/// One unit of the preparation (a statement, or a batch of up to `batch` rows), then where it
/// is. Two preparations at once take turns, a step each. A step given up on a lock held by the
/// app changed nothing: it pauses briefly and reports `lock_retries`; the next call tries again.
pub async fn step(conn: &mut PgConnection, batch: i64) -> Result<Preparation> {
  if !(1..=100_000).contains(&batch) {
    return Err(QuotaError::invalid("batchSize must be from 1 to 100000"));
  }
  let holder = lock(conn).await?;
  let result = run_next(conn, batch).await;
  unlock(conn, holder).await?;
  result
}

async fn run_next(conn: &mut PgConnection, batch: i64) -> Result<Preparation> {
  let (_, plan) = survey(&*conn).await?;
  let mut lock_retries = 0;
  if let Some((task, _)) = plan.iter().find(|(_, done)| !done) {
    match task.run(conn, batch).await {
      Ok(()) => {}
      Err(error) if retryable(&error) => {
        lock_retries = 1;
        crate::log::warn(
          "migration_prepare_lock_retry",
          &[("step", &task.describe())],
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
      }
      Err(error) => return Err(error.into()),
    }
  }
  let (big, plan) = survey(&*conn).await?;
  let mut progress = describe(&*conn, big, &plan).await?;
  progress.lock_retries = lock_retries;
  Ok(progress)
}

/// Behind a transaction pooler a session advisory lock stays with whichever server connection
/// took it, so there the turn is a lease row (expiring, for a preparation that crashed).
const LEASE: &str = "
INSERT INTO storage_quota_meta (key, value)
VALUES ('prepare_lease', jsonb_build_object('holder', $1::text, 'expires', now() + interval '10 minutes'))
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
 WHERE (storage_quota_meta.value ->> 'expires')::timestamptz < now()
RETURNING 1";

/// Waits for the turn, polling (never waiting inside a transaction: a concurrent index build
/// waits for every open transaction, so a waiting one would deadlock with it).
async fn lock(conn: &PgConnection) -> Result<Option<String>> {
  let holder = (conn.pooler()).then(|| uuid::Uuid::new_v4().to_string());
  let mut pause = Duration::from_millis(5);
  loop {
    let got = match &holder {
      None => conn
        .query_one("SELECT pg_try_advisory_lock($1)", &[&STEP_LOCK_KEY])
        .await?
        .get::<_, bool>(0),
      Some(holder) => conn.query_opt(LEASE, &[holder]).await?.is_some(),
    };
    if got {
      return Ok(holder);
    }
    tokio::time::sleep(pause).await;
    pause = (pause * 2).min(Duration::from_millis(500));
  }
}

async fn unlock(conn: &PgConnection, holder: Option<String>) -> Result<()> {
  match holder {
    None => {
      conn
        .execute("SELECT pg_advisory_unlock($1)", &[&STEP_LOCK_KEY])
        .await?;
    }
    Some(holder) => {
      conn
        .execute(
          "DELETE FROM storage_quota_meta WHERE key = 'prepare_lease' AND value ->> 'holder' = $1",
          &[&holder],
        )
        .await?;
    }
  }
  Ok(())
}

/// Before a rollback of `version`: 0006's and 0003's down files rewrite or re-index the big
/// tables under ACCESS EXCLUSIVE (no online way back), so above the threshold they are refused,
/// changing nothing, with what to do instead.
pub async fn refuse_big_rollback(db: &impl Db, version: i32, label: &str) -> Result<()> {
  let tables: &[&str] = match version {
    6 => &[
      "quota_ledger",
      "project_storage_paths",
      "quota_reservations",
      "simulation_jobs",
    ],
    3 => &["quota_reservations"],
    _ => return Ok(()),
  };
  let limit = threshold();
  let mut big = Vec::new();
  for table in tables {
    let over: bool = db
      .query_one(
        &format!("SELECT count(*) > $2 FROM (SELECT 1 FROM {table} LIMIT $1) s"),
        &[&(limit + 1), &limit],
      )
      .await?
      .get(0);
    if over {
      big.push(*table);
    }
  }
  if big.is_empty() {
    return Ok(());
  }
  Err(QuotaError::MigrationFailed(format!(
    "cannot roll back {label} online: it rewrites {} (more than {limit} rows) under an exclusive lock, during which every quota call waits (and past about 5 million ledger rows it cannot finish within its 60 s statement timeout). Nothing was changed. Restore the backup taken before migrating (docs/migrations.md, \"Before migrating: back up\"), or stop the app and run the rollback with STORAGE_QUOTA_ONLINE_MIGRATION_ROWS set above those tables' row counts",
    big.join(", ")
  )))
}

/// What a preparation leaves before 0003 is applied, dropped with 0002's rollback (in its
/// transaction), so rolling back leaves the schema 0001 and 0002 made.
pub const DISCARD_SQL: &str = "
DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['quota_ledger', 'project_storage_paths', 'quota_reservations', 'simulation_jobs'] LOOP
    IF to_regclass(t) IS NOT NULL THEN
      EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', t || '_project_id_text', t);
      EXECUTE format('ALTER TABLE %I DROP COLUMN IF EXISTS project_id_text', t);
    END IF;
  END LOOP;
  IF to_regclass('quota_reservations') IS NOT NULL THEN
    ALTER TABLE quota_reservations DROP COLUMN IF EXISTS object_key;
  END IF;
  IF to_regclass('quota_ledger') IS NOT NULL THEN
    DROP TRIGGER IF EXISTS quota_ledger_project_usage ON quota_ledger;
  END IF;
  IF to_regclass('project_storage_paths') IS NOT NULL THEN
    ALTER TABLE project_storage_paths DROP CONSTRAINT IF EXISTS project_storage_paths_key_check_any;
  END IF;
END
$$;
DROP FUNCTION IF EXISTS storage_quota_project_id_text();
DROP INDEX IF EXISTS quota_ledger_created_at_idx, project_storage_paths_user_id_idx,
  quota_reservations_user_id_id_idx, quota_reservations_settled_idx;
DROP TABLE IF EXISTS quota_project_usage;
DROP FUNCTION IF EXISTS storage_quota_count_project_usage();
DELETE FROM storage_quota_meta WHERE key = 'usage_prefill' OR key LIKE 'prepare\\_%';
";
