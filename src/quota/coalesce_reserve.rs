//! Group commit for `reserveUpload` in enforce mode, across users: the same scheme as
//! `coalesce` for `recordUpload`. While a reservation's transaction is in flight, further
//! `reserveUpload` calls of any users queue (`batch::Batcher`); then one transaction locks their
//! quota rows in `user_id` order (`coalesce::LOCK_QUOTAS`), decides each call in arrival order
//! against its user's row with the rules and in the order of the single statement of
//! `reservations::reserve` (reservation id, then owner, then limit), and writes one `UPDATE … FROM
//! unnest(…)` of the held bytes and one `INSERT … SELECT FROM unnest(…)` of the reservations:
//! one commit for all of them. A lone call takes the single statement. Users the batch cannot
//! decide on its own (no quota row yet, or expired reservations still counted) take the single
//! path after the batch commits, in arrival order.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;

use crate::db::pool::{PgConnection, Pool};
use crate::error::{QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::batch::together_then_alone;
use crate::quota::coalesce::{LOCK_QUOTAS, OWNERS};
use crate::quota::owner::check_owner;
use crate::quota::reservations::{self, Reservation};
use crate::quota::usage::Usage;
use crate::rollout::Mode;

/// Reservations already made under the batch's ids (a retry, or a conflict).
const PRIORS: &str = "
SELECT r.user_id, r.id, r.project_id, coalesce(r.requested_bytes, r.bytes), r.expires_at
  FROM unnest($1::text[], $2::uuid[]) AS k(user_id, id)
  JOIN quota_reservations r ON r.user_id = k.user_id AND r.id = k.id";
/// The batch's writes in one statement: the held bytes per user, then the reservations, with
/// the expiry as the single statement computes it (`now()` is the transaction's start). As in
/// `coalesce::CHARGE`, a quota row that does not come out as decided (`$3`) raises an error
/// before the `COMMIT` pipelined behind it, rolling the batch back. The check's column is
/// selected although nobody reads it: an unused column of a subquery is not computed.
const HOLD: &str = "
WITH held AS (
  UPDATE user_quotas q SET reserved_bytes = q.reserved_bytes + t.bytes, updated_at = now()
    FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(user_id, bytes, decided)
   WHERE q.user_id = t.user_id
  RETURNING q.reserved_bytes = t.decided AS as_decided
), made AS (
  INSERT INTO quota_reservations (id, user_id, project_id, bytes, expires_at)
  SELECT t.id, t.user_id, t.project_id, t.bytes, now() + make_interval(secs => t.ttl / 1000)
    FROM unnest($4::uuid[], $5::text[], $6::text[], $7::bigint[], $8::float8[])
         AS t(id, user_id, project_id, bytes, ttl)
  RETURNING id, user_id, expires_at
), checked AS (
  SELECT CASE WHEN count(*) FILTER (WHERE as_decided) = cardinality($1::text[]) THEN count(*)
              ELSE ('quota rows changed under their locks during a batched reservation: '
                    || count(*) FILTER (WHERE as_decided) || ' of ' || cardinality($1::text[])
                    || ' as decided')::bigint END AS users
    FROM held
)
SELECT m.id, m.user_id, m.expires_at, c.users FROM checked c LEFT JOIN made m ON true";

#[derive(Debug, Clone)]
pub struct Reserve {
  pub user: UserId,
  pub project: ProjectId,
  pub bytes: i64,
  pub ttl_ms: i64,
  pub id: uuid::Uuid,
}

/// Answers a batch of reservations (any users), one answer per call in order. `Err` only when
/// the batch failed as a whole (nothing of it committed); `Batcher` then retries each alone.
pub async fn reserve_many(
  pool: &Pool,
  calls: Vec<Reserve>,
  default_limit: i64,
) -> Result<Vec<Result<Reservation>>> {
  together_then_alone(
    pool,
    &calls,
    |conn, calls| Box::pin(hold_together(conn, calls)),
    |conn, call| Box::pin(reserve_alone(conn, call, default_limit)),
  )
  .await
}

async fn reserve_alone(
  conn: &mut PgConnection,
  call: &Reserve,
  default_limit: i64,
) -> Result<Reservation> {
  reservations::reserve(
    conn,
    &call.user,
    &call.project,
    call.bytes,
    call.ttl_ms,
    default_limit,
    Mode::Enforce,
    Some(call.id),
  )
  .await
}

/// A reservation known to the batch: made before it, or decided in it (its expiry known once
/// inserted).
struct Known {
  project: String,
  bytes: i64,
  expires_at: Option<DateTime<Utc>>,
}

/// Holds `calls` in one transaction, deciding each in order against its user's locked row as
/// `reservations::reserve` would one after another. `None` for a call left to the single path.
async fn hold_together(
  conn: &mut PgConnection,
  calls: &[Reserve],
) -> Result<Vec<Option<Result<Reservation>>>> {
  let users: Vec<&str> = distinct(calls.iter().map(|c| c.user.as_str()));
  let projects: Vec<&str> = distinct(calls.iter().map(|c| c.project.as_str()));
  let key_users: Vec<&str> = calls.iter().map(|c| c.user.as_str()).collect();
  let ids: Vec<uuid::Uuid> = calls.iter().map(|c| c.id).collect();

  let tx = conn.pipelined();
  // Pipelined behind the BEGIN; PostgreSQL runs them in order, so both reads see the state
  // after the locks.
  let lock_params: [&(dyn ToSql + Sync); 1] = [&users];
  let owner_params: [&(dyn ToSql + Sync); 1] = [&projects];
  let prior_params: [&(dyn ToSql + Sync); 2] = [&key_users, &ids];
  let (locked, owners, priors) = tokio::try_join!(
    tx.query(LOCK_QUOTAS, &lock_params),
    tx.query(OWNERS, &owner_params),
    tx.query(PRIORS, &prior_params),
  )?;

  let mut rows: HashMap<String, Usage> = HashMap::new();
  for row in &locked {
    let expired: bool = row.get(4);
    if !expired {
      rows.insert(row.get(0), Usage::from_row(row, 1));
    }
  }
  let owners: HashMap<String, String> = owners.iter().map(|r| (r.get(0), r.get(1))).collect();
  let mut known: HashMap<(String, uuid::Uuid), Known> = priors
    .iter()
    .map(|r| {
      let known = Known {
        project: r.get(2),
        bytes: r.get(3),
        expires_at: Some(r.get(4)),
      };
      ((r.get(0), r.get(1)), known)
    })
    .collect();

  let mut answers = Vec::with_capacity(calls.len());
  let mut totals: HashMap<&str, i64> = HashMap::new();
  let mut new = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
  for call in calls {
    let Some(usage) = rows.get_mut(call.user.as_str()) else {
      answers.push(None);
      continue;
    };
    let answer = decide(call, &owners, &mut known, usage);
    if let Ok(made) = &answer {
      if !made.duplicate {
        *totals.entry(call.user.as_str()).or_default() += call.bytes;
        new.0.push(call.id);
        new.1.push(call.user.as_str());
        new.2.push(call.project.as_str());
        new.3.push(call.bytes);
        new.4.push(call.ttl_ms as f64);
      }
    }
    answers.push(Some(answer));
  }

  if new.0.is_empty() {
    // Nothing to write (retries and refusals only): the COMMIT alone ends the transaction.
    tx.commit_with(async { Ok(()) }).await?;
  } else {
    let mut held = (Vec::new(), Vec::new(), Vec::new());
    for (user, bytes) in totals {
      held.0.push(user);
      held.1.push(bytes);
      held.2.push(rows[user].reserved_bytes);
    }
    let hold_params: [&(dyn ToSql + Sync); 8] = [
      &held.0, &held.1, &held.2, &new.0, &new.1, &new.2, &new.3, &new.4,
    ];
    let inserted = tx.commit_with(tx.query(HOLD, &hold_params)).await?;
    for row in &inserted {
      if let Some(made) = known.get_mut(&(row.get(1), row.get(0))) {
        made.expires_at = Some(row.get(2));
      }
    }
  }

  // Expiries are known now, also for a retry of a call made earlier in this batch.
  for (call, answer) in calls.iter().zip(answers.iter_mut()) {
    if let Some(Ok(made)) = answer {
      let key = (call.user.as_str().to_owned(), call.id);
      match known.get(&key).and_then(|k| k.expires_at) {
        Some(expires_at) => made.expires_at = expires_at,
        None => {
          return Err(QuotaError::Internal(
            "a batched reservation was not inserted".into(),
          ))
        }
      }
    }
  }
  Ok(answers)
}

/// One call's answer, as `reservations::reserve` decides it, against its user's usage so far.
/// Its `expires_at` is filled in once the batch is written.
fn decide(
  call: &Reserve,
  owners: &HashMap<String, String>,
  known: &mut HashMap<(String, uuid::Uuid), Known>,
  usage: &mut Usage,
) -> Result<Reservation> {
  let project = call.project.as_str();
  let key = (call.user.as_str().to_owned(), call.id);
  if let Some(prior) = known.get(&key) {
    if prior.project != project || prior.bytes != call.bytes {
      return Err(reservations::key_reused(&call.id));
    }
    return Ok(answer(call, true, *usage));
  }
  check_owner(owners.get(project).cloned(), &call.user, &call.project)?;
  if !usage.fits(call.bytes) {
    return Err(QuotaError::QuotaExceeded(usage.shortfall(call.bytes)));
  }
  usage.reserved_bytes += call.bytes;
  let made = Known {
    project: project.to_owned(),
    bytes: call.bytes,
    expires_at: None,
  };
  known.insert(key, made);
  Ok(answer(call, false, *usage))
}

fn answer(call: &Reserve, duplicate: bool, usage: Usage) -> Reservation {
  Reservation {
    reservation_id: call.id,
    user_id: call.user.as_str().to_owned(),
    project_id: call.project.to_string(),
    bytes: call.bytes,
    expires_at: DateTime::<Utc>::MIN_UTC,
    duplicate,
    would_refuse: false,
    usage,
    mode: Mode::Enforce,
  }
}

/// Each item once (a batch's users or projects), in no particular order.
pub(crate) fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
  items.collect::<HashSet<_>>().into_iter().collect()
}
