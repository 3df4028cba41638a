//! Group commit for `commitUpload` in enforce mode, across users: the scheme of `coalesce` and
//! `coalesce_reserve`. While a commit's transaction is in flight, further `commitUpload` calls
//! of any users queue (`batch::Batcher`); then one transaction locks their reservation rows in
//! `(user_id, id)` order and then their quota rows in `user_id` order — the order every other
//! writer of both tables uses (reservation row first, then quota row: the single commit, cancel,
//! the sweep, `removeProject`; batches of charges and reservations lock quota rows only, sorted),
//! so no two transactions wait on each other in a cycle. It decides each call in arrival order
//! with the rules of `settle::commit`, and writes one `UPDATE … FROM unnest(…)` of the quota rows,
//! one of the reservations and one `INSERT … SELECT FROM unnest(…)` of the ledger entries: one
//! commit for all of them.
//!
//! Left out of the batch (answered `None`, without a write): a reservation with a presigned
//! object, whose commit must first ask the store for the object's size (`client::direct`); and
//! users the batch cannot decide on its own (no quota row, or expired reservations still counted,
//! which the single path sweeps): they take the single statement after the batch commits, in
//! arrival order. A lone call takes the single path unchanged.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::types::ToSql;

use crate::db::pool::{PgConnection, Pool};
use crate::error::{QuotaError, Result};
use crate::ids::UserId;
use crate::quota::coalesce::LOCK_QUOTAS;
use crate::quota::objects;
use crate::quota::reservations;
use crate::quota::settle::{
  committed_with_another_size, expired_error, not_found, settled_error, Settled,
};
use crate::quota::usage::Usage;
use crate::rollout::Mode;

/// The batch's reservations, locked in one global order (ORDER BY runs before the row locks).
const LOCK_RESERVATIONS: &str = "
SELECT r.user_id, r.id, r.project_id::text, r.bytes, coalesce(r.requested_bytes, r.bytes),
       r.status, r.committed_bytes, r.expires_at <= now(), r.object_key IS NOT NULL
  FROM quota_reservations r
  JOIN unnest($1::text[], $2::uuid[]) AS k(user_id, id) ON r.user_id = k.user_id AND r.id = k.id
 ORDER BY r.user_id, r.id FOR UPDATE OF r";
const CHARGE: &str = "
UPDATE user_quotas q
   SET used_bytes = q.used_bytes + t.used, reserved_bytes = q.reserved_bytes - t.held,
       updated_at = now()
  FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(user_id, used, held)
 WHERE q.user_id = t.user_id
RETURNING q.user_id, q.used_bytes, q.reserved_bytes";
const SETTLE: &str = "
UPDATE quota_reservations s
   SET status = 'committed', committed_bytes = t.actual, settled_at = now()
  FROM unnest($1::text[], $2::uuid[], $3::bigint[]) AS t(user_id, id, actual)
 WHERE s.user_id = t.user_id AND s.id = t.id
RETURNING s.id";
/// As the single statement writes it in enforce mode (`requested_bytes` is NULL: the actual
/// size is what was counted).
const LEDGER: &str = "
INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
SELECT t.user_id, t.project_id, 'reservation ' || t.id::text, 'upload', t.bytes
  FROM unnest($1::text[], $2::text[], $3::uuid[], $4::bigint[]) AS t(user_id, project_id, id, bytes)";

#[derive(Debug, Clone)]
pub struct Commit {
  pub owner: UserId,
  pub id: uuid::Uuid,
  pub actual: Option<i64>,
}

/// `Ok(None)`: the reservation has a presigned object; the caller commits it on its own path.
pub type Committed = Option<Settled>;

/// Answers a batch of commits (any users), one answer per call in order. `Err` only when the
/// batch failed as a whole (nothing of it committed); `Batcher` then retries each alone.
pub async fn commit_many(pool: &Pool, calls: Vec<Commit>) -> Result<Vec<Result<Committed>>> {
  let mut conn = pool.get().await?;
  if calls.len() == 1 {
    return Ok(vec![commit_alone(&mut conn.0, &calls[0]).await]);
  }
  let decided = commit_together(&mut conn.0, &calls).await?;
  let mut answers = Vec::with_capacity(calls.len());
  for (call, answer) in calls.iter().zip(decided) {
    answers.push(match answer {
      Some(answer) => answer,
      None => commit_alone(&mut conn.0, call).await,
    });
  }
  Ok(answers)
}

/// The path of an unbatched commit: a pending presigned reservation is left to the caller, any
/// other goes through the single statement.
async fn commit_alone(conn: &mut PgConnection, call: &Commit) -> Result<Committed> {
  if let Some(reserved) = objects::reserved_object(conn, &call.owner, &call.id).await? {
    if reserved.object_key.is_some() && reserved.status == "pending" {
      return Ok(None);
    }
  }
  match reservations::commit(
    conn,
    &call.owner,
    &call.id,
    call.actual,
    Mode::Enforce,
    None,
  )
  .await
  {
    // The single statement's refusal reads the usage it reports afterwards, when a concurrent
    // cancel or commit of the user may have freed room: decided again under both row locks,
    // the answer is the one a serial run gives (committed now if it fits now).
    Err(QuotaError::QuotaExceeded(refused)) => {
      match commit_together(conn, std::slice::from_ref(call))
        .await?
        .pop()
      {
        Some(Some(answer)) => answer,
        _ => Err(QuotaError::QuotaExceeded(refused)),
      }
    }
    settled => Ok(Some(settled?)),
  }
}

/// A locked reservation, as the batch changes it.
struct Held {
  project: String,
  bytes: i64,
  requested: i64,
  status: String,
  committed: Option<i64>,
  expired: bool,
  presigned: bool,
}

/// Writes to send for the batch: per user the bytes counted and given back, per commit its row.
#[derive(Default)]
struct Writes<'a> {
  totals: HashMap<&'a str, (i64, i64)>,
  users: Vec<&'a str>,
  ids: Vec<uuid::Uuid>,
  projects: Vec<String>,
  actuals: Vec<i64>,
}

/// Commits `calls` in one transaction, deciding each in order against its locked reservation
/// and quota row as `settle::commit` would one after another. `None` for a call left to the
/// single path.
async fn commit_together(
  conn: &mut PgConnection,
  calls: &[Commit],
) -> Result<Vec<Option<Result<Committed>>>> {
  let keys: BTreeSet<(&str, uuid::Uuid)> = calls.iter().map(|c| (c.owner.as_str(), c.id)).collect();
  let (key_users, key_ids): (Vec<&str>, Vec<uuid::Uuid>) = keys.iter().copied().unzip();
  let users: Vec<&str> = key_users
    .iter()
    .copied()
    .collect::<BTreeSet<_>>()
    .into_iter()
    .collect();

  let tx = conn.transaction().await?;
  // Pipelined; PostgreSQL runs them in order: reservation rows, then quota rows.
  let reservation_params: [&(dyn ToSql + Sync); 2] = [&key_users, &key_ids];
  let lock_params: [&(dyn ToSql + Sync); 1] = [&users];
  let (locked_reservations, locked_quotas) = tokio::try_join!(
    tx.query(LOCK_RESERVATIONS, &reservation_params),
    tx.query(LOCK_QUOTAS, &lock_params),
  )?;

  let mut held: HashMap<(String, uuid::Uuid), Held> = locked_reservations
    .iter()
    .map(|r| {
      let row = Held {
        project: r.get(2),
        bytes: r.get(3),
        requested: r.get(4),
        status: r.get(5),
        committed: r.get(6),
        expired: r.get(7),
        presigned: r.get(8),
      };
      ((r.get(0), r.get(1)), row)
    })
    .collect();
  let mut rows: HashMap<String, Usage> = HashMap::new();
  for row in &locked_quotas {
    let expired: bool = row.get(4);
    if !expired {
      rows.insert(row.get(0), Usage::from_row(row, 1));
    }
  }

  let mut answers = Vec::with_capacity(calls.len());
  let mut writes = Writes::default();
  for call in calls {
    let key = (call.owner.as_str().to_owned(), call.id);
    let Some(reservation) = held.get_mut(&key) else {
      answers.push(Some(Err(not_found(&call.id))));
      continue;
    };
    if reservation.presigned && reservation.status == "pending" {
      answers.push(Some(Ok(None)));
      continue;
    }
    let Some(usage) = rows.get_mut(call.owner.as_str()) else {
      answers.push(None);
      continue;
    };
    if reservation.expired && reservation.status == "pending" {
      answers.push(None);
      continue;
    }
    let answer = decide(call, reservation, usage, &mut writes);
    answers.push(Some(answer.map(Some)));
  }

  if !writes.ids.is_empty() {
    let (charged_users, (used, given_back)): (Vec<&str>, (Vec<i64>, Vec<i64>)) = writes
      .totals
      .iter()
      .map(|(user, (used, held))| (*user, (*used, *held)))
      .unzip();
    let charge_params: [&(dyn ToSql + Sync); 3] = [&charged_users, &used, &given_back];
    let settle_params: [&(dyn ToSql + Sync); 3] = [&writes.users, &writes.ids, &writes.actuals];
    let ledger_params: [&(dyn ToSql + Sync); 4] = [
      &writes.users,
      &writes.projects,
      &writes.ids,
      &writes.actuals,
    ];
    let (after, settled, entered) = tokio::try_join!(
      tx.query(CHARGE, &charge_params),
      tx.query(SETTLE, &settle_params),
      tx.execute(LEDGER, &ledger_params),
    )?;
    // The rows are locked, so each must now hold exactly what was decided; anything else rolls
    // the whole batch back (and `Batcher` answers each call alone).
    let consistent = after.len() == charged_users.len()
      && settled.len() == writes.ids.len()
      && entered as usize == writes.ids.len()
      && after.iter().all(|row| {
        let user: &str = row.get(0);
        rows.get(user).map(|u| (u.used_bytes, u.reserved_bytes))
          == Some((row.get::<_, i64>(1), row.get::<_, i64>(2)))
      });
    if !consistent {
      return Err(QuotaError::Internal(
        "quota rows changed under their locks during a batched commit".into(),
      ));
    }
  }
  tx.commit().await?;
  Ok(answers)
}

/// One commit's answer, as `settle::commit` decides it in enforce mode, against its reservation
/// and its user's usage so far; a commit that goes through is added to `writes`.
fn decide<'a>(
  call: &'a Commit,
  reservation: &mut Held,
  usage: &mut Usage,
  writes: &mut Writes<'a>,
) -> Result<Settled> {
  let actual = call.actual.unwrap_or(reservation.requested);
  let (project, held) = (reservation.project.clone(), reservation.bytes);
  let settled = |duplicate, usage| Settled {
    reservation_id: call.id,
    user_id: call.owner.as_str().to_owned(),
    project_id: project.clone(),
    reserved_bytes: held,
    committed_bytes: actual,
    status: "committed".to_owned(),
    duplicate,
    would_refuse: false,
    mode: Mode::Enforce,
    usage,
  };
  match reservation.status.as_str() {
    "committed" if reservation.committed == Some(actual) => return Ok(settled(true, *usage)),
    "committed" => {
      return Err(committed_with_another_size(
        &call.id,
        reservation.committed.unwrap_or_default(),
      ))
    }
    "expired" => return Err(expired_error(&call.id)),
    "pending" => {}
    other => return Err(settled_error(&call.id, other)),
  }
  let fits =
    actual <= held || usage.used_bytes + usage.reserved_bytes - held + actual <= usage.limit_bytes;
  if !fits {
    return Err(QuotaError::QuotaExceeded(usage.shortfall(actual - held)));
  }
  usage.used_bytes += actual;
  usage.reserved_bytes -= held;
  reservation.status = "committed".to_owned();
  reservation.committed = Some(actual);
  let total = writes.totals.entry(call.owner.as_str()).or_default();
  total.0 += actual;
  total.1 += held;
  writes.users.push(call.owner.as_str());
  writes.ids.push(call.id);
  writes.projects.push(reservation.project.clone());
  writes.actuals.push(actual);
  Ok(settled(false, *usage))
}
