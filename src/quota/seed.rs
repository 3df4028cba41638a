//! Seeding users: a user's existing projects' sizes (the app's `size_bytes`) are counted as
//! one `baseline` ledger entry with each project's share (and each project's counter) exactly
//! once, in the transaction that marks the user seeded, under
//! a lock on their quota row. Whichever comes first does it: the backfill (for the owners of a
//! batch), or the first call that needs the user's quota row. Projects created after that are
//! counted by the calls that record their bytes, never by a baseline.
//!
//! Until then, reads of a user without a quota row add what seeding would count, so every
//! number is right at any point of a backfill.

use crate::db::session::{Db, Tx};

use crate::db::pool::PgConnection;
use crate::error::Result;
use crate::ids::UserId;
use crate::quota::app_table::AppTable;

#[derive(Debug, Clone, Copy, Default)]
pub struct Seeded {
  pub users: u64,
  pub baselines: u64,
}

/// Seeds those of `owners` (valid user ids) not seeded yet, creating their quota rows with
/// `default_limit`. Runs inside the caller's transaction; locks the owners' quota rows in
/// sorted order (every other writer locks one quota row at a time, so this cannot deadlock
/// with them).
pub async fn seed_owners(
  tx: &Tx<'_>,
  app: &AppTable,
  size_expr: Option<&str>,
  owners: &[String],
  default_limit: i64,
) -> std::result::Result<Seeded, tokio_postgres::Error> {
  if owners.is_empty() {
    return Ok(Seeded::default());
  }
  tx.execute(
    "INSERT INTO user_quotas (user_id, limit_bytes)
     SELECT u, $2 FROM unnest($1::text[]) AS u ORDER BY u
     ON CONFLICT (user_id) DO NOTHING",
    &[&owners, &default_limit],
  )
  .await?;
  let unseeded: Vec<String> = tx
    .query(
      "SELECT user_id FROM user_quotas WHERE user_id = ANY($1) AND NOT seeded
        ORDER BY user_id FOR NO KEY UPDATE",
      &[&owners],
    )
    .await?
    .iter()
    .map(|row| row.get(0))
    .collect();
  if unseeded.is_empty() {
    return Ok(Seeded::default());
  }
  let Some(size) = size_expr else {
    tx.execute(
      "UPDATE user_quotas SET seeded = true, updated_at = now() WHERE user_id = ANY($1)",
      &[&unseeded],
    )
    .await?;
    return Ok(Seeded {
      users: unseeded.len() as u64,
      baselines: 0,
    });
  };
  // Seeding may put an owner over the default limit (like a downgrade): the guard is lifted
  // for this transaction only. Zero-byte projects need no share. The lateral join looks each
  // owner up by the owner index, whatever the planner thinks of a long array.
  tx.execute(
    "SELECT set_config('storage_quota.allow_over_limit', 'on', true)",
    &[],
  )
  .await?;
  let sql = format!(
    "WITH src AS (
       SELECT o.owner AS user_id, p.{id}::text AS project_id, {size} AS bytes
         FROM unnest($1::text[]) AS o(owner)
         CROSS JOIN LATERAL (SELECT * FROM {table} p WHERE p.{owner} = {owner_value}) AS p
        WHERE {size} > 0
     ), {writes}, marked AS (
       UPDATE user_quotas q SET used_bytes = q.used_bytes + coalesce(e.bytes, 0), seeded = true, updated_at = now()
         FROM unnest($1::text[]) AS u(user_id) LEFT JOIN entries e ON e.user_id = u.user_id
        WHERE q.user_id = u.user_id
       RETURNING 1
     )
     SELECT (SELECT count(*) FROM counters), (SELECT count(*) FROM marked)",
    owner = app.owner_col(),
    owner_value = app.as_owner("o.owner"),
    writes = baseline_writes(false),
    id = app.id_col(),
    table = app.t(),
  );
  let row = tx.query_one(&sql, &[&unseeded]).await?;
  tx.execute(
    "SELECT set_config('storage_quota.allow_over_limit', '', true)",
    &[],
  )
  .await?;
  Ok(Seeded {
    baselines: row.get::<_, i64>(0) as u64,
    users: row.get::<_, i64>(1) as u64,
  })
}

/// The baseline of the owners in `src(user_id, project_id, bytes)` (projects with bytes > 0):
/// one ledger entry per owner with each project's share (migration 0009), and each project's
/// counter. `entries` returns the owners counted, with their bytes. Text spliced into a `WITH`
/// after a `src` CTE. For owners whose quota rows the same statement creates (`fresh`), nothing
/// of theirs can exist yet (every other writer needs that row first), so the rows go in without
/// `ON CONFLICT`, whose speculative insertion costs a third of the counters' time.
pub(crate) fn baseline_writes(fresh: bool) -> String {
  let (entry_conflict, counter_conflict) = if fresh {
    ("", "")
  } else {
    (
      "ON CONFLICT (user_id, idempotency_key) DO NOTHING",
      "ON CONFLICT (user_id, project_id)
       DO UPDATE SET used_bytes = u.used_bytes + EXCLUDED.used_bytes, updated_at = now()",
    )
  };
  format!(
    "totals AS (
       SELECT user_id, sum(bytes)::bigint AS total, jsonb_object_agg(project_id, bytes) AS shares
         FROM src GROUP BY user_id
     ), entries AS (
       INSERT INTO quota_ledger (user_id, idempotency_key, kind, bytes, baseline_projects)
       SELECT user_id, 'baseline', 'baseline', total, shares FROM totals
       {entry_conflict}
       RETURNING user_id, bytes
     ), counters AS (
       INSERT INTO quota_project_usage AS u (user_id, project_id, used_bytes)
       SELECT s.user_id, s.project_id, s.bytes FROM src s JOIN entries e ON e.user_id = s.user_id
       {counter_conflict}
       RETURNING 1
     )"
  )
}

/// Makes sure `user` has a quota row and is seeded, from the recorded project source. One round
/// trip when both hold.
pub async fn ensure_seeded(
  conn: &mut PgConnection,
  user: &UserId,
  default_limit: i64,
) -> Result<()> {
  let row = conn
    .query_opt(
      "SELECT seeded FROM user_quotas WHERE user_id = $1",
      &[&user.as_str()],
    )
    .await?;
  if row.is_some_and(|row| row.get::<_, bool>(0)) {
    return Ok(());
  }
  let tx = conn.transaction().await?;
  let app = &AppTable::load(&tx).await?;
  let size = app.size_expr(&tx).await?;
  seed_owners(
    &tx,
    app,
    size.as_deref(),
    &[user.as_str().to_owned()],
    default_limit,
  )
  .await?;
  tx.commit().await?;
  Ok(())
}

/// The bytes a user without a quota row has used: the baselines seeding would count now.
/// Reads only.
pub async fn unseeded_used_bytes(db: &impl Db, app: &AppTable, user: &UserId) -> Result<i64> {
  Ok(match app.size_expr(db).await? {
    None => 0,
    Some(size) => {
      let sql = format!(
        "SELECT coalesce(sum({size}), 0)::bigint FROM {table} p WHERE p.{owner} = {user}",
        table = app.t(),
        owner = app.owner_col(),
        user = app.owner_param(1),
      );
      db.query_one(&sql, &[&user.as_str()]).await?.get(0)
    }
  })
}
