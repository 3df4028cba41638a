//! One batch of the backfill's scan, in the caller's transaction.
//!
//! The scan walks the app's table in owner order (the owner index), a batch being every
//! project of the next owners up to about `batch_size` projects: an owner is always seeded in
//! one batch with all of their projects, so the batch can write their quota rows already
//! seeded, their baseline entries and their project counters in one statement, each row once
//! and in index order. Path records are not written: a project gets its path on first use
//! (`allocateProjectPath`, or any call that needs it), as every project created later does.

use crate::db::session::Tx;

use super::{BackfillOptions, BATCH_LOCK_TIMEOUT};
use crate::quota::app_table::{AppTable, VALID_OWNER_REGEX};
use crate::quota::seed::{baseline_writes, seed_owners};

/// Projects without an owner, reported as skipped under this name.
const NO_OWNER: &str = "(no owner)";

/// One batch in the caller's transaction: the next owners' projects, those owners seeded
/// (quota row, baseline, project counters), progress saved.
pub(super) async fn batch(
  tx: &Tx<'_>,
  app: &AppTable,
  size: Option<&str>,
  options: &BackfillOptions,
) -> std::result::Result<(), tokio_postgres::Error> {
  // The state row first, waiting as long as it takes: a second backfill process queues here
  // and then continues from the cursor this one leaves.
  let state = tx
    .query_one(
      "SELECT cursor, phase FROM storage_quota_backfill FOR UPDATE",
      &[],
    )
    .await?;
  let cursor: Option<String> = state.get(0);
  if state.get::<_, &str>(1) != "scan" {
    return Ok(()); // another backfill process moved on meanwhile
  }
  // Without waiting for the WAL flush at commit: a crash may lose the last batches, whose
  // progress is lost with them (same transaction), so they are simply done again.
  tx.batch_execute(&format!(
    "SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'; SET LOCAL synchronous_commit = off"
  ))
  .await?;
  let (t, owner) = (app.t(), app.owner_col());
  let after = app.owner_param(1);
  let lower = if cursor.is_some() {
    format!("p.{owner} > {after}")
  } else {
    // `$1` (NULL here) is bound either way, so both forms take the same parameters.
    format!("p.{owner} IS NOT NULL AND $1::text IS NULL")
  };
  // The last owner of the next `batch_size` projects: the batch ends with all of theirs.
  let upper: Option<String> = tx
    .query_opt(
      &format!(
        "SELECT o::text FROM (SELECT p.{owner} AS o FROM {t} p WHERE {lower}
          ORDER BY p.{owner} LIMIT $2) s ORDER BY o DESC LIMIT 1"
      ),
      &[&cursor, &options.batch_size],
    )
    .await?
    .map(|row| row.get(0));
  let Some(upper) = upper else {
    // Past the last owner. Projects without one are reported, then the scan is over.
    let orphans: i64 = tx
      .query_one(
        &format!("SELECT count(*) FROM {t} p WHERE p.{owner} IS NULL"),
        &[],
      )
      .await?
      .get(0);
    if orphans > 0 {
      tx.execute(
        "INSERT INTO storage_quota_backfill_skipped (owner, projects) VALUES ($1, $2)
         ON CONFLICT (owner) DO UPDATE SET projects = EXCLUDED.projects",
        &[&NO_OWNER, &orphans],
      )
      .await?;
    }
    tx.execute(
      "UPDATE storage_quota_backfill
          SET phase = 'validate', scanned = scanned + $1, skipped_projects = skipped_projects + $1,
              updated_at = now()",
      &[&orphans],
    )
    .await?;
    return Ok(());
  };

  // Owners seen here for the first time get their quota row already seeded; the guard is
  // lifted for this transaction (seeding may start an owner over the default limit).
  tx.execute(
    "SELECT set_config('storage_quota.allow_over_limit', 'on', true)",
    &[],
  )
  .await?;
  let size = size.unwrap_or("0::bigint");
  let upto = app.owner_param(2);
  let sql = format!(
    "WITH scanned AS (
       SELECT p.{owner}::text AS user_id, p.{id}::text AS project_id, {size} AS bytes
         FROM {t} p WHERE {lower} AND p.{owner} <= {upto}
     ), owners AS (
       SELECT user_id, count(*) AS projects, user_id ~ '{VALID_OWNER_REGEX}' AS valid,
              coalesce(sum(bytes) FILTER (WHERE bytes > 0), 0)::bigint AS total
         FROM scanned GROUP BY user_id
     ), quotas AS (
       INSERT INTO user_quotas (user_id, limit_bytes, used_bytes, seeded)
       SELECT user_id, $3, total, true FROM owners WHERE valid ORDER BY user_id
       ON CONFLICT (user_id) DO NOTHING
       RETURNING user_id
     ), src AS (
       SELECT s.user_id, s.project_id, s.bytes FROM scanned s JOIN quotas q ON q.user_id = s.user_id
        WHERE s.bytes > 0
     ), {writes}, skipped AS (
       INSERT INTO storage_quota_backfill_skipped AS k (owner, projects)
       SELECT user_id, projects FROM owners WHERE NOT valid
       ON CONFLICT (owner) DO UPDATE SET projects = k.projects + EXCLUDED.projects
     )
     SELECT (SELECT count(*) FROM scanned), (SELECT count(*) FROM quotas),
            (SELECT count(*) FROM counters),
            (SELECT coalesce(sum(projects), 0)::bigint FROM owners WHERE NOT valid),
            ARRAY(SELECT o.user_id FROM owners o WHERE o.valid
                   AND NOT EXISTS (SELECT 1 FROM quotas q WHERE q.user_id = o.user_id))",
    id = app.id_col(),
    writes = baseline_writes(true),
  );
  let row = tx
    .query_one(&sql, &[&cursor, &upper, &options.default_limit])
    .await?;
  tx.execute(
    "SELECT set_config('storage_quota.allow_over_limit', '', true)",
    &[],
  )
  .await?;
  let scanned: i64 = row.get(0);
  let mut users: i64 = row.get(1);
  let mut baselines: i64 = row.get(2);
  let skipped: i64 = row.get(3);
  // Owners who had a quota row already (seeded by their first call, or by an earlier release's
  // migration): seeded here only if that has not happened, under their row lock.
  let known: Vec<String> = row.get(4);
  if !known.is_empty() {
    let seeded = seed_owners(tx, app, Some(size), &known, options.default_limit).await?;
    users += seeded.users as i64;
    baselines += seeded.baselines as i64;
  }
  tx.execute(
    "UPDATE storage_quota_backfill
        SET cursor = $1, scanned = scanned + $2, baselines = baselines + $3,
            users_seeded = users_seeded + $4, skipped_projects = skipped_projects + $5,
            updated_at = now()",
    &[&upper, &scanned, &baselines, &users, &skipped],
  )
  .await?;
  Ok(())
}
