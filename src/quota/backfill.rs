//! The backfill: what migration 0001 implies for an app's existing projects — quota rows and
//! baseline usage for their owners (`seed`), a storage path record per project, and
//! `projects.storage_path_id` — done in committed keyset batches outside any migration, then
//! the foreign keys into `projects` validated. Each call of [`step`] does one unit of work in
//! its own transaction and records where it got to in `storage_quota_backfill`, so a crash or a
//! Ctrl-C loses at most the batch in flight and the next call resumes there.
//!
//! Safe while the app writes: a batch reads its projects without locking them and locks them
//! only in its last statement (`KEY SHARE`, skipping any the app deleted meanwhile: an app
//! DELETE of one waits), which records their paths and links them (an app UPDATE of one waits);
//! every write is idempotent (`ON CONFLICT DO NOTHING`, seeding once per user under the quota
//! row lock), and projects inserted behind the cursor meanwhile are found by a catch-up pass.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use crate::db::pool::PgConnection;
use crate::error::{QuotaError, Result};
use crate::ids::UserId;
use crate::quota::app_table::{AppTable, VALID_OWNER_REGEX};
use crate::quota::seed::seed_owners;

/// What the caller decides: how many projects per transaction, the root recorded in paths,
/// the limit of new quota rows.
pub struct BackfillOptions {
  pub batch_size: i64,
  pub storage_root: String,
  pub default_limit: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Progress {
  /// `scan`, `catchup`, `validate` or `done`.
  pub phase: String,
  pub done: bool,
  /// Projects looked at so far (scan and catch-up).
  pub scanned: i64,
  /// Projects in the app table when the backfill started.
  pub total_projects: Option<i64>,
  pub paths_created: i64,
  pub baselines: i64,
  pub users_seeded: i64,
  /// Projects whose owner id cannot be used in paths, and the worst owners by count.
  pub skipped_projects: i64,
  pub skipped_owners: Vec<(String, i64)>,
  pub skipped_owner_count: i64,
  pub storage_root: Option<String>,
  /// Lock waits given up on (short `lock_timeout`) and retried during this call.
  pub lock_retries: u32,
  /// Things this call did that an operator should know about.
  pub notes: Vec<String>,
  pub started_at: Option<chrono::DateTime<chrono::Utc>>,
  pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A batch waits at most this long for a lock (an app transaction holding one of its project
/// rows or quota rows) before it rolls back and is retried: app statements that queue behind
/// the batch wait no longer than that plus the batch itself.
const BATCH_LOCK_TIMEOUT: &str = "500ms";
const BATCH_ATTEMPTS: u32 = 8;
/// Catch-up batches at most: projects inserted behind the cursor while the backfill ran.
/// Later ones are covered as every new project is, by allocation on first use.
const MAX_CATCHUP_ROUNDS: i64 = 20;
/// Created (concurrently) when the app has no index leading with the owner column: seeding
/// looks projects up by owner. Dropped by 0005's down migration.
const OWNER_INDEX: &str = "storage_quota_projects_owner_idx";
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

/// Session advisory lock around the first call's preparation (index build, count). Any fixed
/// key distinct from the migrations' (`db::migrate`) does.
const PREPARE_LOCK_KEY: i64 = 0x38e6_1a1c_67b1_7ef6;

const STATE_COLUMNS: &str = "phase, cursor, storage_root, total_projects, scanned, paths_created, baselines, users_seeded, skipped_projects, catchup_rounds, started_at, finished_at";

fn progress_from(row: &tokio_postgres::Row) -> Progress {
  let phase: String = row.get(0);
  Progress {
    done: phase == "done",
    phase,
    storage_root: row.get(2),
    total_projects: row.get(3),
    scanned: row.get(4),
    paths_created: row.get(5),
    baselines: row.get(6),
    users_seeded: row.get(7),
    skipped_projects: row.get(8),
    started_at: row.get(10),
    finished_at: row.get(11),
    ..Progress::default()
  }
}

/// Where the backfill is, with the owners it skipped.
pub async fn status(client: &Client) -> Result<Progress> {
  let row = client
    .query_one(
      &format!("SELECT {STATE_COLUMNS} FROM storage_quota_backfill"),
      &[],
    )
    .await?;
  let mut progress = progress_from(&row);
  fill_skipped(client, &mut progress).await?;
  Ok(progress)
}

async fn fill_skipped(client: &Client, progress: &mut Progress) -> Result<()> {
  let rows = client
    .query(
      "SELECT owner, projects, count(*) OVER () FROM storage_quota_backfill_skipped
        ORDER BY projects DESC, owner LIMIT 50",
      &[],
    )
    .await?;
  progress.skipped_owner_count = rows.first().map(|r| r.get(2)).unwrap_or(0);
  progress.skipped_owners = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
  Ok(())
}

/// One unit of work: the first call prepares (owner index, project count), then one batch per
/// call through `scan` and `catchup`, then one constraint per call in `validate`.
pub async fn step(
  conn: &mut PgConnection,
  app: &AppTable,
  options: &BackfillOptions,
) -> Result<Progress> {
  if !(1..=100_000).contains(&options.batch_size) {
    return Err(QuotaError::invalid("batchSize must be from 1 to 100000"));
  }
  let client = &mut conn.client;
  let state = status(client).await?;
  if state.done {
    return Ok(state);
  }
  if let Some(root) = &state.storage_root {
    if *root != options.storage_root {
      return Err(QuotaError::Storage(format!(
        "this backfill started recording paths under {root}, but this client's storage root is {}; run it with that root (--storage-root {root})",
        options.storage_root
      )));
    }
  }
  let mut notes = Vec::new();
  if state.started_at.is_none() {
    // One process prepares; one started meanwhile finds it done once it gets the lock.
    client
      .execute("SELECT pg_advisory_lock($1)", &[&PREPARE_LOCK_KEY])
      .await?;
    let prepared = match status(client).await {
      Ok(now) if now.started_at.is_some() => Ok(()),
      Ok(_) => prepare(client, app, options, &mut notes).await,
      Err(error) => Err(error),
    };
    client
      .execute("SELECT pg_advisory_unlock($1)", &[&PREPARE_LOCK_KEY])
      .await?;
    prepared?;
  }
  let mut lock_retries = 0;
  match state.phase.as_str() {
    "validate" => validate_next(client, app).await?,
    phase => {
      let catchup = phase == "catchup";
      let size = app.size_expr(&*client).await?;
      let mut attempt = 0;
      loop {
        let tx = client.transaction().await?;
        match batch(&tx, app, size.as_deref(), options, catchup).await {
          Ok(()) => {
            tx.commit().await?;
            break;
          }
          Err(error) if retryable(&error) && attempt + 1 < BATCH_ATTEMPTS => {
            drop(tx);
            attempt += 1;
            lock_retries += 1;
            let pause = 100u64 << attempt.min(6);
            crate::log::warn(
              "backfill_lock_retry",
              &[
                ("attempt", &attempt.to_string()),
                ("retryInMs", &pause.to_string()),
              ],
            );
            tokio::time::sleep(Duration::from_millis(pause)).await;
          }
          Err(error) => return Err(error.into()),
        }
      }
    }
  }
  let mut progress = status(client).await?;
  progress.lock_retries = lock_retries;
  progress.notes = notes;
  Ok(progress)
}

fn retryable(error: &tokio_postgres::Error) -> bool {
  matches!(
    error.code(),
    Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE
      || *c == SqlState::T_R_DEADLOCK_DETECTED
      || *c == SqlState::T_R_SERIALIZATION_FAILURE
      // A project of the batch deleted by the app after the batch read it.
      || *c == SqlState::FOREIGN_KEY_VIOLATION
  )
}

/// First call: the app table must exist, seeding needs an owner index, and the total makes a
/// progress bar. Then the root is fixed for every later batch.
async fn prepare(
  client: &mut Client,
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

/// One batch in the caller's transaction: the next projects by id (or, in catch-up, projects
/// still without a path), their owners seeded, their paths recorded and linked, progress saved.
async fn batch(
  tx: &Transaction<'_>,
  app: &AppTable,
  size: Option<&str>,
  options: &BackfillOptions,
  catchup: bool,
) -> std::result::Result<(), tokio_postgres::Error> {
  // The state row first, waiting as long as it takes: a second backfill process queues here
  // and then continues from the cursor this one leaves.
  let state = tx
    .query_one(
      "SELECT cursor, catchup_rounds, phase FROM storage_quota_backfill FOR UPDATE",
      &[],
    )
    .await?;
  let cursor: Option<String> = state.get(0);
  let rounds: i64 = state.get(1);
  if state.get::<_, &str>(2) != if catchup { "catchup" } else { "scan" } {
    return Ok(()); // another backfill process moved on meanwhile
  }
  // Without waiting for the WAL flush at commit: a crash may lose the last batches, whose
  // progress is lost with them (same transaction), so they are simply done again.
  tx.batch_execute(&format!(
    "SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'; SET LOCAL synchronous_commit = off"
  ))
  .await?;
  let (t, id, owner) = (app.t(), app.id_col(), app.owner_col());
  let rows = if catchup {
    tx.query(
      &format!(
        "SELECT p.{id}, p.{owner}::text FROM {t} p
          WHERE p.storage_path_id IS NULL AND p.{owner}::text ~ '{VALID_OWNER_REGEX}'
          LIMIT $1"
      ),
      &[&options.batch_size],
    )
    .await?
  } else if let Some(cursor) = cursor.as_deref().and_then(|c| c.parse::<uuid::Uuid>().ok()) {
    tx.query(
      &format!(
        "SELECT p.{id}, p.{owner}::text FROM {t} p WHERE p.{id} > $1
          ORDER BY p.{id} LIMIT $2"
      ),
      &[&cursor, &options.batch_size],
    )
    .await?
  } else {
    tx.query(
      &format!(
        "SELECT p.{id}, p.{owner}::text FROM {t} p ORDER BY p.{id} LIMIT $1"
      ),
      &[&options.batch_size],
    )
    .await?
  };

  let mut ids = Vec::with_capacity(rows.len());
  let mut owners = Vec::with_capacity(rows.len());
  let mut skipped: BTreeMap<String, i64> = BTreeMap::new();
  for row in &rows {
    let project: uuid::Uuid = row.get(0);
    let owner: Option<String> = row.get(1);
    match owner.filter(|o| UserId::parse(o).is_ok()) {
      Some(owner) => {
        ids.push(project);
        owners.push(owner);
      }
      None => {
        let name: Option<String> = row.get(1);
        *skipped
          .entry(name.unwrap_or_else(|| "(no owner)".into()))
          .or_default() += 1;
      }
    }
  }
  let mut distinct = owners.clone();
  distinct.sort_unstable();
  distinct.dedup();
  let seeded = seed_owners(tx, app, size, &distinct, options.default_limit).await?;
  let linked = tx
    .query_one(
      &format!(
        "WITH batch AS (
           SELECT b.project_id, b.user_id FROM unnest($1::uuid[], $2::text[]) AS b(project_id, user_id)
             JOIN {t} p ON p.{id} = b.project_id
              FOR KEY SHARE OF p
         ), ins AS (
           INSERT INTO project_storage_paths AS sp (project_id, user_id, quota_id, backend, key, path)
           SELECT b.project_id, b.user_id, q.id, 'local',
                  b.user_id || '/' || b.project_id::text || '/',
                  $3 || '/' || b.user_id || '/' || b.project_id::text || '/'
             FROM batch b JOIN user_quotas q ON q.user_id = b.user_id
           ON CONFLICT DO NOTHING
           RETURNING sp.id, sp.project_id
         ), links AS (
           SELECT id, project_id FROM ins
           UNION ALL
           SELECT sp.id, sp.project_id FROM project_storage_paths sp JOIN batch b ON b.project_id = sp.project_id
         ), linked AS (
           UPDATE {t} p SET storage_path_id = l.id FROM links l
            WHERE p.{id} = l.project_id AND p.storage_path_id IS DISTINCT FROM l.id
           RETURNING 1
         )
         SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM linked)"
      ),
      &[&ids, &owners, &options.storage_root.trim_end_matches('/')],
    )
    .await?;
  let paths: i64 = linked.get(0);

  let (skipped_owners, skipped_counts): (Vec<String>, Vec<i64>) = skipped.into_iter().unzip();
  let skipped_total: i64 = skipped_counts.iter().sum();
  if !skipped_owners.is_empty() {
    tx.execute(
      "INSERT INTO storage_quota_backfill_skipped AS s (owner, projects)
       SELECT * FROM unnest($1::text[], $2::bigint[])
       ON CONFLICT (owner) DO UPDATE SET projects = s.projects + EXCLUDED.projects",
      &[&skipped_owners, &skipped_counts],
    )
    .await?;
  }
  let full = rows.len() as i64 == options.batch_size;
  let next_phase = match (catchup, full) {
    (false, true) => "scan",
    (false, false) => "catchup",
    (true, true) if rounds + 1 < MAX_CATCHUP_ROUNDS => "catchup",
    (true, _) => "validate",
  };
  let last: Option<String> = if catchup {
    cursor
  } else {
    rows
      .last()
      .map(|r| r.get::<_, uuid::Uuid>(0).to_string())
      .or(cursor)
  };
  tx.execute(
    "UPDATE storage_quota_backfill
        SET cursor = $1, phase = $2, scanned = scanned + $3, paths_created = paths_created + $4,
            baselines = baselines + $5, users_seeded = users_seeded + $6,
            skipped_projects = skipped_projects + $7,
            catchup_rounds = catchup_rounds + $8, updated_at = now()",
    &[
      &last,
      &next_phase,
      &(rows.len() as i64),
      &paths,
      &(seeded.baselines as i64),
      &(seeded.users as i64),
      &skipped_total,
      &i64::from(catchup),
    ],
  )
  .await?;
  Ok(())
}

/// Validates the next NOT VALID foreign key, or finishes. VALIDATE takes SHARE UPDATE EXCLUSIVE,
/// which no app read or write conflicts with, so it may wait for its lock without holding up
/// the app (autovacuum yields to it).
async fn validate_next(client: &mut Client, app: &AppTable) -> Result<()> {
  for (table, constraint) in constraints(app) {
    let valid: Option<bool> = client
      .query_opt(
        "SELECT convalidated FROM pg_constraint WHERE conname = $1 AND conrelid = to_regclass($2)",
        &[&constraint, &table],
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
