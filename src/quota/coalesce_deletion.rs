//! Group commit for `recordDeletion` (and the release `deleteProjectFile` makes once its file is
//! gone), across users: the scheme of `coalesce`. While a deletion's transaction is in flight,
//! further deletions of any users queue (`batch::Batcher`); then one transaction locks their
//! quota rows in `user_id` order (`coalesce::LOCK_QUOTAS`), reads the projects' owners, the
//! users' project counters and the ledger entries under the keys the calls name (pipelined behind
//! the locks, so they read the state after them), decides each call in arrival order with the
//! rules and in the order of `deletions::record_deletion` (owner, then the upload named, then the
//! deletion's key, then the release, capped at the project's counter and the user's usage), and
//! writes the quota rows and the ledger entries in one statement pipelined with the `COMMIT`. The
//! ledger's trigger (migration 0003) moves the project counters in that same statement; the batch
//! moves its copy of them as it decides, so two deletions of one project or under one key in a
//! batch see each other as they would one after another.
//!
//! Releases are made in every rollout mode (the single path takes none), so every mode takes this
//! path. A user without a quota row (nothing was ever counted: the single path answers 0 once the
//! owner check passes) takes the single path after the batch commits, in arrival order. Expired
//! reservations still counted do not matter: a release changes used bytes only, and the single
//! path sends no sweep either. A lone call is the single path.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;

use crate::db::pool::{PgConnection, Pool};
use crate::error::Result;
use crate::ids::{ProjectId, UserId};
use crate::quota::batch::together_then_alone;
use crate::quota::coalesce::{unless_as_decided, LOCK_QUOTAS, OWNERS};
use crate::quota::coalesce_reserve::distinct;
use crate::quota::deletions::{
  self, releasable, release_owner, retried, DeletionTarget, Prior, Released,
};
use crate::quota::usage::Usage;

/// The project counters of the batch's (user, project) pairs. A pair without one has counted
/// nothing and, for a project without a row, is not the user's (`deletions::release_owner`).
const COUNTERS: &str = "
SELECT u.user_id, u.project_id, u.used_bytes
  FROM unnest($1::text[], $2::text[]) AS k(user_id, project_id)
  JOIN quota_project_usage u ON u.user_id = k.user_id AND u.project_id = k.project_id";
/// The ledger entries under the keys the batch names: the uploads deleted by id, and the
/// deletions' own keys (a retry, or a conflict).
const PRIORS: &str = "
SELECT l.user_id, l.idempotency_key, l.bytes, l.project_id, l.requested_bytes
  FROM unnest($1::text[], $2::text[]) AS k(user_id, key)
  JOIN quota_ledger l ON l.user_id = k.user_id AND l.idempotency_key = k.key";
/// The batch's writes in one statement: per user the bytes given back (each quota row must come
/// out as decided, `$3`: see `coalesce::unless_as_decided`), then the ledger entries as the
/// single path writes them (`requested_bytes`: what the deletion asked for).
const RELEASE: &str = concat!(
  "
WITH released AS (
  UPDATE user_quotas q SET used_bytes = q.used_bytes - t.bytes, updated_at = now()
    FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(user_id, bytes, decided)
   WHERE q.user_id = t.user_id
  RETURNING q.used_bytes = t.decided AS as_decided
), entered AS (
  INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes, requested_bytes)
  SELECT t.user_id, t.project_id, t.key, 'deletion', -t.bytes, t.wanted
    FROM unnest($4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[])
         AS t(user_id, project_id, key, bytes, wanted)
)",
  unless_as_decided!("released", "deletion")
);

#[derive(Debug, Clone)]
pub struct Deletion {
  pub user: UserId,
  pub project: ProjectId,
  pub target: DeletionTarget,
}

/// Answers a batch of deletions (any users), one answer per call in order. `Err` only when the
/// batch failed as a whole (nothing of it committed); `Batcher` then retries each alone.
pub async fn delete_many(
  pool: &Pool,
  calls: Vec<Deletion>,
  default_limit: i64,
) -> Result<Vec<Result<Released>>> {
  together_then_alone(
    pool,
    &calls,
    |conn, calls| Box::pin(release_together(conn, calls)),
    |conn, call| {
      Box::pin(deletions::record_deletion(
        conn,
        &call.user,
        &call.project,
        &call.target,
        default_limit,
      ))
    },
  )
  .await
}

/// A (user, key) or (user, project) pair of the batch.
type Pair = (String, String);

/// What the batch knows, as it changes it: per (user, project) the counter (a pair that has
/// one is known to the user), per (user, key) the ledger entry.
struct Known {
  owners: HashMap<String, String>,
  counters: HashMap<Pair, i64>,
  priors: HashMap<Pair, Prior>,
}

/// Writes to send for the batch: per user the bytes given back, per release its ledger entry.
#[derive(Default)]
struct Writes<'a> {
  totals: HashMap<&'a str, i64>,
  users: Vec<&'a str>,
  projects: Vec<&'a str>,
  keys: Vec<&'a str>,
  released: Vec<i64>,
  wanted: Vec<i64>,
}

/// Releases `calls` in one transaction, deciding each in order against its user's locked row as
/// `deletions::record_deletion` would one after another. `None` for a call left to the single
/// path.
async fn release_together(
  conn: &mut PgConnection,
  calls: &[Deletion],
) -> Result<Vec<Option<Result<Released>>>> {
  let keys: Vec<String> = calls.iter().map(|c| c.target.key()).collect();
  let users: Vec<&str> = distinct(calls.iter().map(|c| c.user.as_str()));
  let projects: Vec<&str> = distinct(calls.iter().map(|c| c.project.as_str()));
  let pair_users: Vec<&str> = calls.iter().map(|c| c.user.as_str()).collect();
  let pair_projects: Vec<&str> = calls.iter().map(|c| c.project.as_str()).collect();
  // The deletions' own keys, then the uploads named by id.
  let mut key_users = pair_users.clone();
  let mut key_names: Vec<&str> = keys.iter().map(String::as_str).collect();
  for call in calls {
    if let Some(upload_id) = call.target.upload_id() {
      key_users.push(call.user.as_str());
      key_names.push(upload_id);
    }
  }

  let tx = conn.pipelined();
  // Pipelined behind the BEGIN; PostgreSQL runs them in order, so the reads see the state
  // after the locks.
  let lock_params: [&(dyn ToSql + Sync); 1] = [&users];
  let owner_params: [&(dyn ToSql + Sync); 1] = [&projects];
  let counter_params: [&(dyn ToSql + Sync); 2] = [&pair_users, &pair_projects];
  let prior_params: [&(dyn ToSql + Sync); 2] = [&key_users, &key_names];
  let (locked, owners, counters, priors) = tokio::try_join!(
    tx.query(LOCK_QUOTAS, &lock_params),
    tx.query(OWNERS, &owner_params),
    tx.query(COUNTERS, &counter_params),
    tx.query(PRIORS, &prior_params),
  )?;

  let mut rows: HashMap<String, Usage> = locked
    .iter()
    .map(|row| (row.get(0), Usage::from_row(row, 1)))
    .collect();
  let mut known = Known {
    owners: owners.iter().map(|r| (r.get(0), r.get(1))).collect(),
    counters: counters
      .iter()
      .map(|r| ((r.get(0), r.get(1)), r.get(2)))
      .collect(),
    priors: priors
      .iter()
      .map(|r| {
        let prior = Prior {
          bytes: r.get(2),
          project: r.get(3),
          requested: r.get(4),
        };
        ((r.get(0), r.get(1)), prior)
      })
      .collect(),
  };

  let mut answers = Vec::with_capacity(calls.len());
  let mut writes = Writes::default();
  for (call, key) in calls.iter().zip(&keys) {
    let Some(usage) = rows.get_mut(call.user.as_str()) else {
      answers.push(None);
      continue;
    };
    answers.push(Some(decide(call, key, &mut known, usage, &mut writes)));
  }

  if writes.keys.is_empty() {
    // Nothing to write (retries and refusals only): the COMMIT alone ends the transaction.
    tx.commit_with(async { Ok(()) }).await?;
  } else {
    let mut released = (Vec::new(), Vec::new(), Vec::new());
    for (user, bytes) in &writes.totals {
      released.0.push(*user);
      released.1.push(*bytes);
      released.2.push(rows[*user].used_bytes);
    }
    let params: [&(dyn ToSql + Sync); 8] = [
      &released.0,
      &released.1,
      &released.2,
      &writes.users,
      &writes.projects,
      &writes.keys,
      &writes.released,
      &writes.wanted,
    ];
    tx.commit_with(tx.query(RELEASE, &params)).await?;
  }
  Ok(answers)
}

/// One deletion's answer, as `deletions::record_deletion` decides it, against its user's usage
/// and what the batch knows so far; a release is added to `writes` and to `known` (its ledger
/// entry, and the counter the ledger's trigger moves, creating it if there was none).
fn decide<'a>(
  call: &'a Deletion,
  key: &'a str,
  known: &mut Known,
  usage: &mut Usage,
  writes: &mut Writes<'a>,
) -> Result<Released> {
  let (user, project) = (call.user.as_str(), call.project.as_str());
  let pair = (user.to_owned(), project.to_owned());
  let owner = known.owners.get(project).cloned();
  release_owner(
    owner,
    known.counters.contains_key(&pair),
    &call.user,
    &call.project,
  )?;
  let upload = call
    .target
    .upload_id()
    .and_then(|id| known.priors.get(&(user.to_owned(), id.to_owned())));
  let wanted = call.target.wanted(&call.project, upload)?;
  let entry = (user.to_owned(), key.to_owned());
  if let Some(prior) = known.priors.get(&entry) {
    let released_bytes = retried(prior, &call.project, wanted)?;
    return Ok(Released {
      released_bytes,
      duplicate: true,
      usage: *usage,
    });
  }
  let counter = known.counters.entry(pair).or_insert(0);
  let released = releasable(wanted, *counter, usage.used_bytes);
  *counter -= released;
  usage.used_bytes -= released;
  let prior = Prior {
    bytes: -released,
    project: Some(project.to_owned()),
    requested: Some(wanted),
  };
  known.priors.insert(entry, prior);
  *writes.totals.entry(user).or_default() += released;
  writes.users.push(user);
  writes.projects.push(project);
  writes.keys.push(key);
  writes.released.push(released);
  writes.wanted.push(wanted);
  Ok(Released {
    released_bytes: released,
    duplicate: false,
    usage: *usage,
  })
}
