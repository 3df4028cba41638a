//! The database side of `copyProject`: one claim row per new project (`quota_project_copies`),
//! and a session advisory lock per (user, new project) held by the call doing the copy.
//!
//! Every call for one new project waits for the lock (polling it without holding a pooled
//! connection, so waiters cannot starve the pool), so only one works at a time; what it finds
//! in the claim row decides: nothing (copy), `done` (answer `duplicate` with the stored
//! outcome, or `CONFLICT` for another source), or `copying` (the call that held the lock died
//! with its connection: clean up after it by its token, then copy). The lock lives with the
//! session, so a crashed process or a cut connection releases it at once; and a call's
//! deciding writes (commit, done) go through the session that holds the lock, so a call that
//! lost its lock can no longer make them. Behind a transaction pooler (no sessions to hold a
//! lock) the lock is a lease row instead (`try_lease`), given back at the end (also when taking
//! it failed with its outcome unknown) or taken over once expired after the reservation TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::pool::{PgConnection, Pool};
use crate::error::{ConflictReason, QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::owner::check_owner;
use crate::storage::local::tree::TreeStats;

/// The claim row of a copy into a new project.
#[derive(Debug, Clone)]
pub struct Claim {
  /// `None` only for copies made before the claim table existed.
  pub source: Option<String>,
  /// The call's token: its reservation id and the name of its staging directory.
  pub token: uuid::Uuid,
  pub done: bool,
  pub stats: TreeStats,
  /// The staging directory's `(st_dev, st_ino)`, once made: what may be removed after a crash.
  pub identity: Option<(u64, u64)>,
  /// The status and committed bytes of the call's reservation, if it still exists.
  pub reservation: Option<(String, Option<i64>)>,
}

/// Behind a transaction pooler a session lock would stay with whichever server connection took
/// it (and holding a transaction open instead pins a server for the whole copy: copies waiting
/// for a server while holding one deadlock the pooler), so the lock is a lease row there, taken
/// over once expired.
const TRY_LEASE: &str = "
INSERT INTO quota_copy_leases (user_id, project_id, holder, expires_at)
VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond')
ON CONFLICT (user_id, project_id) DO UPDATE
   SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
 WHERE quota_copy_leases.expires_at < now()
RETURNING holder";

/// How long a lease statement may run on the server (`statement_timeout`, set for its own
/// transaction). It bounds how late a lease whose reply was lost can still be committed, so
/// `give_back_lease` knows when a delete that found nothing is conclusive.
pub const LEASE_STATEMENT_BOUND: Duration = Duration::from_secs(5);

/// Takes the lease for `holder` if no live lease exists. An error leaves the outcome unknown
/// (a reply lost after the commit still took it): give it back with `give_back_lease`,
/// `not_before` the time it was sent plus [`LEASE_STATEMENT_BOUND`].
///
/// Its own transaction, committed only after the insert answered: a connection cut while the
/// insert waits (on another call's uncommitted lease) aborts it, where a pipelined or implicit
/// commit would still take the lease for a call that has already failed.
pub async fn try_lease(
  conn: &mut PgConnection,
  user: &UserId,
  target: &ProjectId,
  holder: &uuid::Uuid,
  ttl_ms: i64,
) -> Result<bool> {
  let tx = conn.transaction().await?;
  tx.batch_execute(&format!(
    "SET LOCAL statement_timeout = {}",
    LEASE_STATEMENT_BOUND.as_millis()
  ))
  .await?;
  let row = tx
    .query_opt(
      TRY_LEASE,
      &[&user.as_str(), &target.as_str(), holder, &ttl_ms],
    )
    .await?;
  tx.commit().await?;
  Ok(row.is_some())
}

/// Deletes `holder`'s lease; whether there was one to delete.
pub async fn release_lease(
  conn: &mut PgConnection,
  user: &UserId,
  target: &ProjectId,
  holder: &uuid::Uuid,
) -> Result<bool> {
  let deleted = conn
    .execute(
      "DELETE FROM quota_copy_leases WHERE user_id = $1 AND project_id = $2 AND holder = $3",
      &[&user.as_str(), &target.as_str(), holder],
    )
    .await?;
  Ok(deleted > 0)
}

fn lock_key(user: &UserId, target: &ProjectId) -> String {
  format!("storage-quota copy {user}/{target}")
}

/// Owners first: `NOT_FOUND` or `FORBIDDEN` before anything is locked or written.
pub async fn check_owners(
  conn: &mut PgConnection,
  user: &UserId,
  source: &ProjectId,
  target: &ProjectId,
) -> Result<()> {
  let rows = conn
    .query(
      "SELECT p.id, p.user_id FROM unnest($1::text[]) AS x(id), storage_quota_project(x.id) p",
      &[&vec![source.as_str(), target.as_str()]],
    )
    .await?;
  for project in [source, target] {
    let owner = rows
      .iter()
      .find(|row| row.get::<_, &str>(0) == project.as_str())
      .map(|row| row.get::<_, String>(1));
    check_owner(owner, user, project)?;
  }
  Ok(())
}

/// Takes the (user, new project) lock for this session if no other session holds it.
pub async fn try_lock(conn: &mut PgConnection, user: &UserId, target: &ProjectId) -> Result<bool> {
  let row = conn
    .query_one(
      "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
      &[&lock_key(user, target)],
    )
    .await?;
  Ok(row.get(0))
}

pub async fn unlock(conn: &mut PgConnection, user: &UserId, target: &ProjectId) -> Result<()> {
  conn
    .execute(
      "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
      &[&lock_key(user, target)],
    )
    .await?;
  Ok(())
}

pub async fn read(
  conn: &mut PgConnection,
  user: &UserId,
  target: &ProjectId,
) -> Result<Option<Claim>> {
  let row = conn
    .query_opt(
      "SELECT c.source_project_id, c.token, c.status = 'done', c.copied_bytes, c.files, c.skipped,
              c.dir_dev, c.dir_ino, r.status, r.committed_bytes
         FROM quota_project_copies c
         LEFT JOIN quota_reservations r ON r.id = c.token AND r.user_id = c.user_id
        WHERE c.user_id = $1 AND c.project_id = $2",
      &[&user.as_str(), &target.as_str()],
    )
    .await?;
  Ok(row.map(|row| {
    Claim {
      source: row.get(0),
      token: row.get(1),
      done: row.get(2),
      stats: TreeStats {
        bytes: row.get::<_, Option<i64>>(3).unwrap_or(0),
        files: row.get::<_, Option<i64>>(4).unwrap_or(0),
        skipped: row.get::<_, Option<i64>>(5).unwrap_or(0),
        directories: 0,
      },
      identity: match (row.get::<_, Option<i64>>(6), row.get::<_, Option<i64>>(7)) {
        (Some(dev), Some(ino)) => Some((dev as u64, ino as u64)),
        _ => None,
      },
      reservation: row
        .get::<_, Option<String>>(8)
        .map(|status| (status, row.get(9))),
    }
  }))
}

/// `CONFLICT` (`KEY_REUSED`) when the new project was already copied from another source.
pub fn same_source(claim: &Claim, source: &ProjectId, target: &ProjectId) -> Result<()> {
  match &claim.source {
    Some(claimed) if claimed != source.as_str() => Err(QuotaError::conflict(
      ConflictReason::KeyReused,
      format!(
        "project {target} is already a copy of project {claimed}; copy into a new project id"
      ),
    )),
    _ => Ok(()),
  }
}

pub async fn insert(
  conn: &mut PgConnection,
  user: &UserId,
  source: &ProjectId,
  target: &ProjectId,
  token: &uuid::Uuid,
) -> Result<()> {
  conn
    .execute(
      "INSERT INTO quota_project_copies (user_id, project_id, source_project_id, token)
       VALUES ($1, $2, $3, $4)",
      &[&user.as_str(), &target.as_str(), &source.as_str(), token],
    )
    .await?;
  Ok(())
}

/// Records where the call's staging directory is, before anything is copied into it.
pub async fn set_identity(
  conn: &mut PgConnection,
  user: &UserId,
  token: &uuid::Uuid,
  identity: (u64, u64),
) -> Result<()> {
  conn
    .execute(
      "UPDATE quota_project_copies SET dir_dev = $3, dir_ino = $4 WHERE user_id = $1 AND token = $2",
      &[
        &user.as_str(),
        token,
        &(identity.0 as i64),
        &(identity.1 as i64),
      ],
    )
    .await?;
  Ok(())
}

/// Marks the call's claim done with its outcome, which later calls for the project answer.
pub async fn finish(
  conn: &mut PgConnection,
  user: &UserId,
  token: &uuid::Uuid,
  stats: &TreeStats,
) -> Result<()> {
  conn
    .execute(
      "UPDATE quota_project_copies
          SET status = 'done', copied_bytes = $3, files = $4, skipped = $5, settled_at = now()
        WHERE user_id = $1 AND token = $2",
      &[
        &user.as_str(),
        token,
        &stats.bytes,
        &stats.files,
        &stats.skipped,
      ],
    )
    .await?;
  Ok(())
}

/// Drops the call's claim (only its own, by token), after a failure was undone.
pub async fn release(conn: &mut PgConnection, user: &UserId, token: &uuid::Uuid) -> Result<()> {
  conn
    .execute(
      "DELETE FROM quota_project_copies WHERE user_id = $1 AND token = $2 AND status = 'copying'",
      &[&user.as_str(), token],
    )
    .await?;
  Ok(())
}

/// Forgets finished copies into a project whose files were removed (`removeProject`), so a
/// later copy into it copies again instead of answering `duplicate`.
pub async fn forget(conn: &mut PgConnection, user: &UserId, project: &ProjectId) -> Result<()> {
  conn
    .execute(
      "DELETE FROM quota_project_copies WHERE user_id = $1 AND project_id = $2 AND status = 'done'",
      &[&user.as_str(), &project.as_str()],
    )
    .await?;
  Ok(())
}

/// Deletes a path record this call created, when its copy is undone.
pub async fn drop_path(conn: &mut PgConnection, path_id: &uuid::Uuid) -> Result<()> {
  conn
    .execute(
      "DELETE FROM project_storage_paths WHERE id = $1",
      &[path_id],
    )
    .await?;
  Ok(())
}

/// Deletes this call's copy lease from a fresh connection, retrying with backoff (the database
/// may still be down) until it is gone or it would have expired anyway. Safe whenever it runs:
/// the copy that held (or tried to take) the lease has ended, so the next copy into the project
/// may take over and undo what it left.
///
/// A delete that finds the lease ends it. One that finds nothing ends it only from `not_before`
/// on: before then a lease whose reply was lost may still be committed (`try_lease`).
pub fn give_back_lease(
  pool: Arc<Pool>,
  user: UserId,
  target: ProjectId,
  holder: uuid::Uuid,
  not_before: Instant,
  ttl: Duration,
) {
  let Ok(runtime) = tokio::runtime::Handle::try_current() else {
    return;
  };
  runtime.spawn(async move {
    let deadline = Instant::now() + ttl;
    let mut backoff = Duration::from_millis(10);
    while Instant::now() < deadline {
      let asked = Instant::now();
      if let Ok(mut conn) = pool.get().await {
        match release_lease(&mut conn.0, &user, &target, &holder).await {
          Ok(true) => return,
          Ok(false) if asked >= not_before => return,
          _ => {}
        }
      }
      tokio::time::sleep(backoff).await;
      backoff = (backoff * 2).min(Duration::from_secs(1));
    }
  });
}
