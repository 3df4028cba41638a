//! One batch of the backfill's scan or catch-up, in the caller's transaction.

use std::collections::BTreeMap;

use crate::db::session::Tx;

use super::{BackfillOptions, BATCH_LOCK_TIMEOUT, MAX_CATCHUP_ROUNDS};
use crate::ids::UserId;
use crate::quota::app_table::{AppTable, VALID_OWNER_REGEX};
use crate::quota::seed::seed_owners;

/// One batch in the caller's transaction: the next projects by id (or, in catch-up, projects
/// still without a path), their owners seeded, their paths recorded and linked, progress saved.
pub(super) async fn batch(
  tx: &Tx<'_>,
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
      &format!("SELECT p.{id}, p.{owner}::text FROM {t} p ORDER BY p.{id} LIMIT $1"),
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
           SELECT sp.id, sp.project_id FROM project_storage_paths sp JOIN batch b ON b.project_id::text = sp.project_id
         ), linked AS (
           UPDATE {t} p SET storage_path_id = l.id FROM links l
            WHERE p.{id} = l.project_id::uuid AND p.storage_path_id IS DISTINCT FROM l.id
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
