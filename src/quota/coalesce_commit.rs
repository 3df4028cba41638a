//! Group commit for `commitUpload` in enforce mode, across users: the scheme of `coalesce` and
//! `coalesce_reserve`. While a commit's transaction is in flight, further `commitUpload` calls
//! of any users queue (`batch::Batcher`); then one transaction locks their reservation rows in
//! `(user_id, id)` order and then their quota rows in `user_id` order — the order every other
//! writer of both tables uses (reservation row first, then quota row: the single commit, cancel,
//! the sweep, `removeProject`; batches of charges and reservations lock quota rows only, sorted),
//! so no two transactions wait on each other in a cycle. It decides each call in arrival order
//! with the rules of `settle::commit`, and writes the quota rows, the reservations and the ledger
//! entries in one statement over arrays (`unnest`): one commit for all of them, in two round trips
//! (`db::pipeline`).
//!
//! Left out of the batch (answered `None`, without a write): a reservation with a presigned
//! object, whose commit must first ask the store for the object's size (`client::direct`); and
//! users the batch cannot decide on its own (no quota row, or expired reservations still counted,
//! which the single path sweeps): they take the single statement after the batch commits, in
//! arrival order. A lone call is one statement (`settle::commit_unless_presigned`: the single
//! commit, which leaves a presigned reservation alone), where it used to be two (a read of the
//! reservation to learn whether it is presigned, then the commit).

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::db::pipeline::Pipelined;
use crate::db::pool::{PgConnection, Pool};
use crate::error::{QuotaError, Result};
use crate::ids::UserId;
use crate::quota::batch::together_then_alone;
use crate::quota::coalesce::LOCK_QUOTAS;
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

/// Opens a settling batch (commits or cancels): locks the reservations named by `keys` (user,
/// id) and then their users' quota rows, both sorted, in the order every writer of the two
/// tables takes them. The two statements are pipelined behind the `BEGIN` of `tx`.
pub(crate) async fn lock_settling<'a>(
  tx: &Pipelined<'_>,
  keys: impl Iterator<Item = (&'a str, uuid::Uuid)>,
) -> Result<(Vec<Row>, Vec<Row>)> {
  let keys: BTreeSet<(&str, uuid::Uuid)> = keys.collect();
  let (key_users, key_ids): (Vec<&str>, Vec<uuid::Uuid>) = keys.iter().copied().unzip();
  let users: Vec<&str> = key_users
    .iter()
    .copied()
    .collect::<BTreeSet<_>>()
    .into_iter()
    .collect();
  let reservation_params: [&(dyn ToSql + Sync); 2] = [&key_users, &key_ids];
  let lock_params: [&(dyn ToSql + Sync); 1] = [&users];
  Ok(tokio::try_join!(
    tx.query(LOCK_RESERVATIONS, &reservation_params),
    tx.query(LOCK_QUOTAS, &lock_params),
  )?)
}
/// The batch's writes in one statement: per user the bytes counted and given back, per commit
/// its reservation settled and its ledger entry (as the single statement writes it in enforce
/// mode: `requested_bytes` NULL, the actual size is what was counted). Every row written is
/// locked by the batch, so each must come out as decided; anything else raises an error before
/// the `COMMIT` pipelined behind it (see `coalesce::CHARGE`), rolling the batch back.
const WRITE: &str = "
WITH charged AS (
  UPDATE user_quotas q
     SET used_bytes = q.used_bytes + t.used, reserved_bytes = q.reserved_bytes - t.held,
         updated_at = now()
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
         AS t(user_id, used, held, used_after, reserved_after)
   WHERE q.user_id = t.user_id
  RETURNING q.used_bytes = t.used_after AND q.reserved_bytes = t.reserved_after AS as_decided
), settled AS (
  UPDATE quota_reservations s
     SET status = 'committed', committed_bytes = t.actual, settled_at = now()
    FROM unnest($6::text[], $7::uuid[], $8::bigint[]) AS t(user_id, id, actual)
   WHERE s.user_id = t.user_id AND s.id = t.id AND s.status = 'pending'
  RETURNING 1
), entered AS (
  INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
  SELECT t.user_id, t.project_id, 'reservation ' || t.id::text, 'upload', t.actual
    FROM unnest($6::text[], $9::text[], $7::uuid[], $8::bigint[]) AS t(user_id, project_id, id, actual)
)
SELECT CASE WHEN (SELECT count(*) FILTER (WHERE as_decided) FROM charged) = cardinality($1::text[])
             AND (SELECT count(*) FROM settled) = cardinality($7::uuid[])
            THEN 0
            ELSE ('rows changed under their locks during a batched commit: '
                  || (SELECT count(*) FROM settled) || ' of ' || cardinality($7::uuid[])
                  || ' reservations settled')::int END";

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
  together_then_alone(
    pool,
    &calls,
    |conn, calls| Box::pin(commit_together(conn, calls)),
    |conn, call| Box::pin(commit_alone(conn, call)),
  )
  .await
}

/// The path of an unbatched commit: the single statement, which leaves a pending presigned
/// reservation to the caller (`None`).
async fn commit_alone(conn: &mut PgConnection, call: &Commit) -> Result<Committed> {
  match reservations::commit_unless_presigned(conn, &call.owner, &call.id, call.actual).await {
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
    settled => settled,
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
  let tx = conn.pipelined();
  let (locked_reservations, locked_quotas) =
    lock_settling(&tx, calls.iter().map(|c| (c.owner.as_str(), c.id))).await?;

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

  if writes.ids.is_empty() {
    // Nothing to write (retries and refusals only): the COMMIT alone ends the transaction.
    tx.commit_with(async { Ok(()) }).await?;
  } else {
    let mut charged = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (user, (used, held)) in &writes.totals {
      let after = rows[*user];
      charged.0.push(*user);
      charged.1.push(*used);
      charged.2.push(*held);
      charged.3.push(after.used_bytes);
      charged.4.push(after.reserved_bytes);
    }
    let params: [&(dyn ToSql + Sync); 9] = [
      &charged.0,
      &charged.1,
      &charged.2,
      &charged.3,
      &charged.4,
      &writes.users,
      &writes.ids,
      &writes.actuals,
      &writes.projects,
    ];
    tx.commit_with(tx.query(WRITE, &params)).await?;
  }
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
