//! The backfill: what migration 0001 implies for an app's existing projects — quota rows and
//! baseline usage for their owners (`seed`) — done in committed keyset batches (in owner
//! order) outside any migration, then the foreign keys into `projects` validated. Path records
//! (and `projects.storage_path_id`) are not written here: every project gets its record on
//! first use, the way projects created later do. Each call of [`step`] does one unit of work
//! in its own transaction and records where it got to in `storage_quota_backfill`, so a crash
//! or a Ctrl-C loses at most the batch in flight and the next call resumes there.
//!
//! Safe while the app writes: a batch reads projects without locking any app row and writes
//! only storage-quota's tables; an owner is seeded once, by whichever comes first (a batch or
//! their first call), decided by the unique quota row and, for rows that exist already, under
//! its lock. A project the app creates after its owner was seeded is counted by the calls that
//! record its bytes; one created before is in its owner's baseline; an owner first seen behind
//! the cursor is seeded on first use. Until then reads add what seeding would count.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::db::pool::PgConnection;
use crate::error::{QuotaError, Result};
use crate::quota::app_table::AppTable;

mod batch;
mod phases;

use batch::batch;
use phases::{prepare, validate_next};

/// What the caller decides: how many projects per transaction, the root recorded in paths,
/// the limit of new quota rows.
pub struct BackfillOptions {
  pub batch_size: i64,
  pub storage_root: String,
  pub default_limit: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Progress {
  /// `scan`, `validate` or `done` (`catchup`, of earlier versions, goes on to `validate`).
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
/// Created (concurrently) when the app has no index leading with the owner column: seeding
/// looks projects up by owner. Dropped by 0005's down migration.
const OWNER_INDEX: &str = "storage_quota_projects_owner_idx";
/// The index on the app table's `storage_path_id` (issue 11): see `phases::path_index`.
const PATH_INDEX: &str = "projects_storage_path_id_idx";
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
pub async fn status(client: &PgConnection) -> Result<Progress> {
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

async fn fill_skipped(client: &PgConnection, progress: &mut Progress) -> Result<()> {
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

/// Behind a transaction pooler a session advisory lock stays with whichever server connection
/// took it (its unlock may reach another), so there the lock is a lease row.
const PREPARE_LEASE: &str = "
INSERT INTO quota_copy_leases (user_id, project_id, holder, expires_at)
VALUES ('storage-quota backfill', '00000000-0000-0000-0000-000000000000', $1, now() + interval '10 minutes')
ON CONFLICT (user_id, project_id) DO UPDATE
   SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
 WHERE quota_copy_leases.expires_at < now()
RETURNING holder";

/// The prepare lock: a session advisory lock directly, a lease behind a pooler (its holder).
async fn lock_prepare(client: &PgConnection) -> Result<Option<uuid::Uuid>> {
  if !client.pooler() {
    client
      .execute("SELECT pg_advisory_lock($1)", &[&PREPARE_LOCK_KEY])
      .await?;
    return Ok(None);
  }
  let holder = uuid::Uuid::new_v4();
  let deadline = std::time::Instant::now() + Duration::from_secs(600);
  let mut backoff = Duration::from_millis(2);
  while client.query_opt(PREPARE_LEASE, &[&holder]).await?.is_none() {
    if std::time::Instant::now() + backoff > deadline {
      return Err(QuotaError::timeout(
        "another backfill has been preparing for 10 minutes",
      ));
    }
    tokio::time::sleep(backoff).await;
    backoff = (backoff * 2).min(Duration::from_millis(100));
  }
  Ok(Some(holder))
}

async fn unlock_prepare(client: &PgConnection, holder: Option<uuid::Uuid>) -> Result<()> {
  match holder {
    None => {
      client
        .execute("SELECT pg_advisory_unlock($1)", &[&PREPARE_LOCK_KEY])
        .await?;
    }
    Some(holder) => {
      client
        .execute(
          "DELETE FROM quota_copy_leases WHERE user_id = 'storage-quota backfill' AND holder = $1",
          &[&holder],
        )
        .await?;
    }
  }
  Ok(())
}

/// One unit of work: the first call prepares (owner index, project count), then one batch per
/// call through `scan`, then one constraint per call in `validate`.
pub async fn step(
  conn: &mut PgConnection,
  app: &AppTable,
  options: &BackfillOptions,
) -> Result<Progress> {
  if !(1..=100_000).contains(&options.batch_size) {
    return Err(QuotaError::invalid("batchSize must be from 1 to 100000"));
  }
  let client = conn;
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
    let holder = lock_prepare(client).await?;
    let prepared = match status(client).await {
      Ok(now) if now.started_at.is_some() => Ok(()),
      Ok(_) => prepare(client, app, options, &mut notes).await,
      Err(error) => Err(error),
    };
    unlock_prepare(client, holder).await?;
    prepared?;
  }
  let mut lock_retries = 0;
  match state.phase.as_str() {
    "validate" => validate_next(client, app).await?,
    // Left by an earlier version, which recorded paths and then looked for stragglers: paths
    // come on first use now.
    "catchup" => {
      client
        .execute(
          "UPDATE storage_quota_backfill SET phase = 'validate', updated_at = now() WHERE phase = 'catchup'",
          &[],
        )
        .await?;
    }
    _ => {
      let size = app.size_expr(&*client).await?;
      let mut attempt = 0;
      loop {
        let tx = client.transaction().await?;
        match batch(&tx, app, size.as_deref(), options).await {
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
  )
}
