//! Group commit for `cancelUpload` in enforce mode, across users: the scheme of
//! `coalesce_commit`. While a cancel's transaction is in flight, further `cancelUpload` calls of
//! any users queue (`batch::Batcher`); then one transaction locks their reservation rows in
//! `(user_id, id)` order and then their quota rows in `user_id` order (the order of every writer
//! of both tables; see `coalesce_commit`), decides each call in arrival order with the rules of
//! `settle::cancel`, and writes the quota rows and the reservations in one statement pipelined
//! with the `COMMIT`. A user without a quota row takes the single statement after the batch. A
//! lone call is the single statement.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;

use crate::db::pool::{PgConnection, Pool};
use crate::error::Result;
use crate::ids::UserId;
use crate::quota::batch::together_then_alone;
use crate::quota::coalesce_commit::lock_settling;
use crate::quota::reservations;
use crate::quota::settle::{not_found, settled_error, Settled};
use crate::quota::usage::Usage;
use crate::rollout::Mode;

/// The batch's writes in one statement: per user the bytes given back, per cancel its
/// reservation. Every row written is locked by the batch, so each must come out as decided;
/// anything else raises an error before the `COMMIT` pipelined behind it (see
/// `coalesce::CHARGE`), rolling the batch back.
const WRITE: &str = "
WITH released AS (
  UPDATE user_quotas q SET reserved_bytes = q.reserved_bytes - t.held, updated_at = now()
    FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(user_id, held, reserved_after)
   WHERE q.user_id = t.user_id
  RETURNING q.reserved_bytes = t.reserved_after AS as_decided
), settled AS (
  UPDATE quota_reservations s SET status = 'cancelled', settled_at = now()
    FROM unnest($4::text[], $5::uuid[]) AS t(user_id, id)
   WHERE s.user_id = t.user_id AND s.id = t.id AND s.status = 'pending'
  RETURNING 1
)
SELECT CASE WHEN (SELECT count(*) FILTER (WHERE as_decided) FROM released) = cardinality($1::text[])
             AND (SELECT count(*) FROM settled) = cardinality($5::uuid[])
            THEN 0
            ELSE ('rows changed under their locks during a batched cancel: '
                  || (SELECT count(*) FROM settled) || ' of ' || cardinality($5::uuid[])
                  || ' reservations cancelled')::int END";

#[derive(Debug, Clone)]
pub struct Cancel {
  pub owner: UserId,
  pub id: uuid::Uuid,
}

/// Answers a batch of cancels (any users), one answer per call in order. `Err` only when the
/// batch failed as a whole (nothing of it committed); `Batcher` then retries each alone.
pub async fn cancel_many(pool: &Pool, calls: Vec<Cancel>) -> Result<Vec<Result<Settled>>> {
  together_then_alone(
    pool,
    &calls,
    |conn, calls| Box::pin(cancel_together(conn, calls)),
    |conn, call| {
      Box::pin(reservations::cancel(
        conn,
        &call.owner,
        &call.id,
        Mode::Enforce,
      ))
    },
  )
  .await
}

/// A locked reservation, as the batch changes it.
struct Held {
  project: String,
  bytes: i64,
  status: String,
}

/// Cancels `calls` in one transaction, deciding each in order against its locked reservation
/// and quota row as `settle::cancel` would one after another. `None` for a call left to the
/// single path.
async fn cancel_together(
  conn: &mut PgConnection,
  calls: &[Cancel],
) -> Result<Vec<Option<Result<Settled>>>> {
  let tx = conn.pipelined();
  let (locked_reservations, locked_quotas) =
    lock_settling(&tx, calls.iter().map(|c| (c.owner.as_str(), c.id))).await?;
  let mut held: HashMap<(String, uuid::Uuid), Held> = locked_reservations
    .iter()
    .map(|r| {
      let row = Held {
        project: r.get(2),
        bytes: r.get(3),
        status: r.get(5),
      };
      ((r.get(0), r.get(1)), row)
    })
    .collect();
  // Expired reservations still counted do not matter here: a cancel gives back what it held.
  let mut rows: HashMap<String, Usage> = locked_quotas
    .iter()
    .map(|row| (row.get(0), Usage::from_row(row, 1)))
    .collect();

  let mut answers = Vec::with_capacity(calls.len());
  let mut totals: HashMap<&str, i64> = HashMap::new();
  let (mut cancelled_users, mut cancelled_ids) = (Vec::new(), Vec::new());
  for call in calls {
    let Some(reservation) = held.get_mut(&(call.owner.as_str().to_owned(), call.id)) else {
      answers.push(Some(Err(not_found(&call.id))));
      continue;
    };
    let Some(usage) = rows.get_mut(call.owner.as_str()) else {
      answers.push(None);
      continue;
    };
    let settled = |status: &str, duplicate, usage| Settled {
      reservation_id: call.id,
      user_id: call.owner.as_str().to_owned(),
      project_id: reservation.project.clone(),
      reserved_bytes: reservation.bytes,
      committed_bytes: 0,
      status: status.to_owned(),
      duplicate,
      would_refuse: false,
      mode: Mode::Enforce,
      usage,
    };
    let answer = match reservation.status.as_str() {
      "committed" => Err(settled_error(&call.id, "committed")),
      "pending" => {
        usage.reserved_bytes -= reservation.bytes;
        *totals.entry(call.owner.as_str()).or_default() += reservation.bytes;
        cancelled_users.push(call.owner.as_str());
        cancelled_ids.push(call.id);
        let answer = settled("cancelled", false, *usage);
        reservation.status = "cancelled".to_owned();
        Ok(answer)
      }
      // Cancelled before (a retry), or expired (given back by the sweep): nothing changes.
      status => Ok(settled(status, status == "cancelled", *usage)),
    };
    answers.push(Some(answer));
  }

  if cancelled_ids.is_empty() {
    // Nothing to write (retries and refusals only): the COMMIT alone ends the transaction.
    tx.commit_with(async { Ok(()) }).await?;
  } else {
    let mut released = (Vec::new(), Vec::new(), Vec::new());
    for (user, bytes) in totals {
      released.0.push(user);
      released.1.push(bytes);
      released.2.push(rows[user].reserved_bytes);
    }
    let params: [&(dyn ToSql + Sync); 5] = [
      &released.0,
      &released.1,
      &released.2,
      &cancelled_users,
      &cancelled_ids,
    ];
    tx.commit_with(tx.query(WRITE, &params)).await?;
  }
  Ok(answers)
}
