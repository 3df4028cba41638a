//! `copyProject`: claim the new project, hold its size, copy into a staging directory, rename
//! it into place, then count it. One call at a time per new project (`quota::copies`); a
//! failing call undoes exactly what it made (its staging or renamed directory, its path
//! record, its reservation, its claim) and nothing another call made. On an object store the
//! same claim, lock, reservation and undo hold; the files step is a server-side copy of each
//! object into the (empty) target prefix instead of the staging directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{blocking, Client};
use crate::db::pool::{Checkout, PgConnection, Pool};
use crate::error::{ConflictReason, QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::copies::{self, Claim};
use crate::quota::projects::ProjectStoragePath;
use crate::quota::reservations::{self, LedgerEntry};
use crate::quota::usage::{read_usage, Usage};
use crate::storage::local::staging::{self, Staging};
use crate::storage::local::tree::TreeStats;
use crate::storage::local::usage::project_usage;
use crate::storage::StorageBackend;

/// The claim's `(dev, ino)` for a copy into an object store: no inode, but "objects may be
/// under the target prefix", so an undo (this call's or a later one's) deletes them.
const OBJECTS_PLACED: (u64, u64) = (0, 0);

/// Past [`copies::LEASE_STATEMENT_BOUND`], for the commit of a lease whose reply was lost to
/// reach the server and be done.
const LEASE_SETTLE_MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct CopiedProject {
  pub path: ProjectStoragePath,
  pub copied_bytes: i64,
  /// Regular files copied.
  pub files: i64,
  /// Symlinks, sockets, FIFOs and devices in the source: neither followed nor copied.
  pub skipped: i64,
  pub duplicate: bool,
  pub usage: Usage,
}

/// What one call has made so far, for its undo.
#[derive(Default)]
struct Made {
  /// The staging directory, once renamed into place: `(st_dev, st_ino)`.
  placed: Option<(u64, u64)>,
  path_record: Option<uuid::Uuid>,
}

struct Job {
  user: UserId,
  source: ProjectId,
  target: ProjectId,
  /// The local storage root (empty for an object store).
  root: std::path::PathBuf,
  /// The object store, when the client's backend is one (then `root` is unused).
  store: Option<Arc<dyn StorageBackend>>,
}

impl Client {
  /// Copies a project's files into a new project of the same user and counts them. The size
  /// is reserved before anything is copied, so a copy that does not fit is refused with
  /// nothing made.
  pub async fn copy_project(
    &self,
    user_id: &str,
    source_project_id: &str,
    new_project_id: &str,
  ) -> Result<CopiedProject> {
    let user = UserId::parse(user_id)?;
    let (source, target) = (
      ProjectId::parse(source_project_id)?,
      ProjectId::parse(new_project_id)?,
    );
    if source == target {
      return Err(QuotaError::invalid(
        "a project cannot be copied onto itself",
      ));
    }
    let backend = self.storage_backend()?;
    let job = Job {
      user,
      source,
      target,
      root: backend.local_root().map(Into::into).unwrap_or_default(),
      store: backend.local_root().is_none().then_some(backend),
    };
    if job.store.is_some() {
      // Its size is read from the bucket: it must be this client's object-store project.
      self.allocate(&job.user, &job.source).await?;
    }
    let pool = self.pool()?;
    {
      let mut conn = pool.get().await?;
      copies::check_owners(&mut conn.0, &job.user, &job.source, &job.target).await?;
    }
    let (mut conn, held) = self.lock_target(&pool, &job).await?;
    let conn = &mut conn.0;
    let result = self.copy_locked(conn, &job).await;
    // A cut connection took the advisory lock with it; otherwise give it back. A lease is a row:
    // when this connection cannot delete it (cut mid-copy, as in an outage), it is given back
    // from another one, or every retry of this copy would wait for it until the reservation TTL.
    match held {
      Some(holder) => {
        if copies::release_lease(conn, &job.user, &job.target, &holder)
          .await
          .is_err()
        {
          let ttl = Duration::from_millis(self.config.reservation_ttl_ms as u64);
          copies::give_back_lease(
            pool.clone(),
            job.user.clone(),
            job.target.clone(),
            holder,
            Instant::now(),
            ttl,
          );
        }
      }
      None => drop(copies::unlock(conn, &job.user, &job.target).await),
    }
    result
  }

  /// A connection holding the (user, new project) lock. Another call holding it is waited for
  /// by polling with backoff, holding no connection in between, at most the reservation TTL
  /// (a copy taking longer has outlived its reservation anyway).
  async fn lock_target<'p>(
    &self,
    pool: &'p Arc<Pool>,
    job: &Job,
  ) -> Result<(Checkout<'p>, Option<uuid::Uuid>)> {
    let deadline = Instant::now() + Duration::from_millis(self.config.reservation_ttl_ms as u64);
    let mut backoff = Duration::from_millis(2);
    loop {
      if pool.pooler() {
        let holder = uuid::Uuid::new_v4();
        let mut conn = pool.get().await?;
        let ttl = self.config.reservation_ttl_ms;
        let sent = Instant::now();
        match copies::try_lease(&mut conn.0, &job.user, &job.target, &holder, ttl).await {
          Ok(true) => return Ok((conn, Some(holder))),
          Ok(false) => {}
          Err(error) => {
            // Maybe taken all the same (its reply lost after the commit): every retry of this
            // copy would wait for it until the reservation TTL, so give it back.
            copies::give_back_lease(
              pool.clone(),
              job.user.clone(),
              job.target.clone(),
              holder,
              sent + copies::LEASE_STATEMENT_BOUND + LEASE_SETTLE_MARGIN,
              Duration::from_millis(ttl as u64),
            );
            return Err(error);
          }
        }
      } else {
        let mut conn = pool.get().await?;
        if copies::try_lock(&mut conn.0, &job.user, &job.target).await? {
          return Ok((conn, None));
        }
      }
      if Instant::now() + backoff > deadline {
        return Err(QuotaError::timeout(format!(
          "another copy into project {} has been running for longer than the reservation TTL",
          job.target
        )));
      }
      tokio::time::sleep(backoff).await;
      backoff = (backoff * 2).min(Duration::from_millis(100));
    }
  }

  async fn copy_locked(&self, conn: &mut PgConnection, job: &Job) -> Result<CopiedProject> {
    if let Some(claim) = copies::read(conn, &job.user, &job.target).await? {
      if let Some(done) = self.settle_claim(conn, job, claim).await? {
        return Ok(done);
      }
    }
    let size = match &job.store {
      Some(store) => store.usage(&job.user, &job.source).await?.bytes,
      None => {
        let (root, user, source) = (job.root.clone(), job.user.clone(), job.source.clone());
        blocking(move || Ok(project_usage(&root, &user, &source)?.bytes)).await?
      }
    };
    let token = uuid::Uuid::new_v4();
    copies::insert(conn, &job.user, &job.source, &job.target, &token).await?;
    let mut made = Made::default();
    let result = self.copy_claimed(conn, job, &token, size, &mut made).await;
    if result.is_err() {
      // The call's own error is the answer; a failed undo leaves the claim for the next call.
      let _ = self.undo(conn, job, &token, made).await;
    }
    result
  }

  async fn copy_claimed(
    &self,
    conn: &mut PgConnection,
    job: &Job,
    token: &uuid::Uuid,
    size: i64,
    made: &mut Made,
  ) -> Result<CopiedProject> {
    let (mode, limit) = (self.mode_for(&job.user), self.default_limit());
    let ttl = self.config.reservation_ttl_ms;
    reservations::reserve(
      conn,
      &job.user,
      &job.target,
      size,
      ttl,
      limit,
      mode,
      Some(*token),
    )
    .await?;

    let stats = match &job.store {
      Some(store) => self.copy_objects(conn, job, store, token, made).await?,
      None => {
        let (root, user, tok) = (job.root.clone(), job.user.clone(), *token);
        let staging = blocking(move || Staging::create(&root, &user, &tok)).await?;
        let identity = staging.identity;
        // Dropping `staging` on failure leaves the directory for the undo, which removes it by
        // name.
        copies::set_identity(conn, &job.user, token, identity).await?;
        // Marked before the rename: the undo removes the target only if it is this very
        // directory.
        made.placed = Some(identity);
        let (source, target) = (job.source.clone(), job.target.clone());
        blocking(move || staging.fill_and_place(&source, &target)).await?
      }
    };

    let (path, created) = self.allocate_on(conn, &job.user, &job.target).await?;
    if created {
      made.path_record = Some(path.id);
    }
    // One ledger entry per copy made: a project removed and copied into again gets a new one.
    let key = format!("copy {} {token}", job.target);
    let entry = LedgerEntry {
      key: &key,
      kind: "copy",
    };
    let settled =
      reservations::commit(conn, &job.user, token, Some(stats.bytes), mode, Some(entry)).await?;
    // Counted: from here on the copy stands even if recording its outcome fails (the next
    // call for the project finds the committed reservation and records it).
    let _ = copies::finish(conn, &job.user, token, &stats).await;
    Ok(CopiedProject {
      path,
      copied_bytes: settled.committed_bytes,
      files: stats.files,
      skipped: stats.skipped,
      duplicate: false,
      usage: settled.usage,
    })
  }

  /// The object-store files step: the target prefix must be empty; the claim is marked before
  /// the first object is copied, so an undo (ours or a later call's) deletes whatever landed.
  async fn copy_objects(
    &self,
    conn: &mut PgConnection,
    job: &Job,
    store: &Arc<dyn StorageBackend>,
    token: &uuid::Uuid,
    made: &mut Made,
  ) -> Result<TreeStats> {
    if !store.list(&job.user, &job.target).await?.is_empty() {
      return Err(QuotaError::conflict(
        ConflictReason::TargetNotEmpty,
        format!(
          "project {} already has files; copy into a new, empty project",
          job.target
        ),
      ));
    }
    copies::set_identity(conn, &job.user, token, OBJECTS_PLACED).await?;
    made.placed = Some(OBJECTS_PLACED);
    let bytes = store
      .copy_project(&job.user, &job.source, &job.target)
      .await?;
    let files = store.list(&job.user, &job.target).await?.len() as i64;
    Ok(TreeStats {
      bytes,
      files,
      directories: 0,
      skipped: 0,
    })
  }

  /// What an earlier call left in the claim row. `Some` answers this call (`duplicate`);
  /// `None` means the earlier call died before counting anything and was cleaned up after.
  async fn settle_claim(
    &self,
    conn: &mut PgConnection,
    job: &Job,
    claim: Claim,
  ) -> Result<Option<CopiedProject>> {
    let committed = matches!(&claim.reservation, Some((status, _)) if status == "committed");
    if claim.done || committed {
      copies::same_source(&claim, &job.source, &job.target)?;
      let mut stats = claim.stats;
      if !claim.done {
        // Counted, then its call died before recording the outcome: record it now.
        let found = match &job.store {
          Some(store) => store.usage(&job.user, &job.target).await?,
          None => {
            let (root, user, target) = (job.root.clone(), job.user.clone(), job.target.clone());
            blocking(move || project_usage(&root, &user, &target)).await?
          }
        };
        stats = TreeStats {
          bytes: claim.reservation.and_then(|(_, b)| b).unwrap_or(0),
          files: found.files,
          skipped: found.skipped,
          directories: found.directories,
        };
        copies::finish(conn, &job.user, &claim.token, &stats).await?;
      }
      let (path, _) = self.allocate_on(conn, &job.user, &job.target).await?;
      let usage = read_usage(conn, &job.user)
        .await?
        .unwrap_or(Usage::empty(self.default_limit()));
      return Ok(Some(CopiedProject {
        path,
        copied_bytes: stats.bytes,
        files: stats.files,
        skipped: stats.skipped,
        duplicate: true,
        usage,
      }));
    }
    // Still `copying` although we hold the lock: its call lost its connection or its process.
    // Undo what it made, known by its token: reservation, staging or renamed directory, claim.
    let made = Made {
      placed: claim.identity,
      path_record: None,
    };
    self.undo(conn, job, &claim.token, made).await?;
    Ok(None)
  }

  /// Undoes what the call with `token` made. The reservation decides: cancelled (or never
  /// made) means nothing was counted, so its files, path record and claim go; committed means
  /// the copy stands after all (a reply lost after the commit); unreachable means nobody can
  /// tell yet, so everything stays for the next call for the project to settle. Database steps
  /// go through `conn` while it works, then a fresh connection (the lock may be gone with
  /// `conn`, but every step is keyed by the token, so it touches nothing another call made).
  async fn undo(
    &self,
    conn: &mut PgConnection,
    job: &Job,
    token: &uuid::Uuid,
    made: Made,
  ) -> Result<()> {
    let user = &job.user;
    let mode = self.mode_for(user);
    let cancelled = match reservations::cancel(conn, user, token, mode).await {
      Err(
        QuotaError::DbUnavailable { .. } | QuotaError::DbTimeout { .. } | QuotaError::Db { .. },
      ) => {
        self
          .with_conn(async |c| reservations::cancel(&mut c.0, user, token, mode).await)
          .await
      }
      other => other,
    };
    match cancelled {
      // Committed after all: the copy stands (the next call records its outcome).
      Ok(settled) if settled.status == "committed" => return Ok(()),
      Err(QuotaError::Conflict {
        reason: ConflictReason::AlreadySettled,
        ..
      }) => return Ok(()),
      Ok(_) | Err(QuotaError::NotFound(_)) => {}
      Err(error) => return Err(error),
    }
    if let Some(store) = &job.store {
      // Only this claim's copy can be under the prefix: it was empty, and the lock is ours.
      if made.placed.is_some() {
        store.remove_project(&job.user, &job.target).await?;
      }
    } else {
      let (root, owner, target, tok) = (
        job.root.clone(),
        job.user.clone(),
        job.target.clone(),
        *token,
      );
      blocking(move || {
        staging::remove_staging(&root, &owner, &tok)?;
        if let Some(identity) = made.placed {
          staging::remove_copied(&root, &owner, &target, identity)?;
        }
        Ok(())
      })
      .await?;
    }
    if let Some(path_id) = made.path_record {
      if copies::drop_path(conn, &path_id).await.is_err() {
        self
          .with_conn(async |c| copies::drop_path(&mut c.0, &path_id).await)
          .await?;
      }
    }
    if copies::release(conn, user, token).await.is_err() {
      self
        .with_conn(async |c| copies::release(&mut c.0, user, token).await)
        .await?;
    }
    Ok(())
  }
}
