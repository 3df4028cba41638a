//! The quota lifecycle beyond one-step uploads: reservations, deletions and overwrites, and the
//! project operations of the app's server actions (register, copy, remove).

use super::{batched, batching_enabled, Client};
use crate::error::{QuotaError, Result};
use crate::ids::{parse_bytes, parse_upload_id, upload_key_or_new, ProjectId, UserId};
use crate::quota::coalesce_cancel;
use crate::quota::coalesce_commit;
use crate::quota::coalesce_deletion::Deletion;
use crate::quota::coalesce_reserve;
use crate::quota::config::parse_ttl_ms;
use crate::quota::copies;
use crate::quota::deletions::{self, DeletionTarget, Overwritten, Released, RemovedProject};
use crate::quota::projects::{self, ProjectStoragePath};
use crate::quota::reservations::{self, Reservation, Settled};
use crate::quota::usage::{self, Usage};
use crate::rollout::Mode;

#[derive(Debug, Clone)]
pub struct RegisteredProject {
  pub path: ProjectStoragePath,
  /// Bytes charged for the project's initial size (0 when none was given).
  pub counted_bytes: i64,
  pub usage: Usage,
}

pub(super) fn parse_reservation_id(raw: &str) -> Result<uuid::Uuid> {
  crate::ids::parse_uuid("reservationId", raw)
}

impl Client {
  pub async fn reserve_upload(
    &self,
    user_id: &str,
    project_id: &str,
    bytes: f64,
    ttl_ms: Option<f64>,
    reservation_id: Option<&str>,
  ) -> Result<Reservation> {
    let args = self.reserve_args(user_id, project_id, bytes, ttl_ms, reservation_id)?;
    let (mode, limit) = (self.mode_for(&args.user), self.default_limit());
    if mode == Mode::Enforce && batching_enabled() {
      return batched::only(self.reserves_together(vec![args.batched()]).await);
    }
    let ReserveArgs {
      user,
      project,
      bytes,
      ttl_ms: ttl,
      id,
    } = args;
    self
      .with_conn(async |conn| {
        reservations::reserve(&mut conn.0, &user, &project, bytes, ttl, limit, mode, id).await
      })
      .await
  }

  /// `reserveUpload`'s arguments, checked in its order (the reservation id first); the TTL is
  /// the client's when none is given.
  pub(super) fn reserve_args(
    &self,
    user_id: &str,
    project_id: &str,
    bytes: f64,
    ttl_ms: Option<f64>,
    reservation_id: Option<&str>,
  ) -> Result<ReserveArgs> {
    let id = reservation_id.map(parse_reservation_id).transpose()?;
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let bytes = parse_bytes("bytes", bytes)?;
    let ttl_ms = match ttl_ms {
      Some(ttl) => parse_ttl_ms(ttl)?,
      None => self.config.reservation_ttl_ms,
    };
    Ok(ReserveArgs {
      user,
      project,
      bytes,
      ttl_ms,
      id,
    })
  }

  /// Commits the owner's reservation. The owner is required: a reservation id alone must not
  /// let one user settle another's upload.
  pub async fn commit_upload(
    &self,
    user_id: &str,
    reservation_id: &str,
    actual_bytes: Option<f64>,
  ) -> Result<Settled> {
    let call = commit_of(user_id, reservation_id, actual_bytes)?;
    let mode = self.mode_for(&call.owner);
    if mode == Mode::Enforce && batching_enabled() {
      let committed = batched::only(self.commits_together(vec![call.clone()]).await)?;
      if let Some(settled) = committed {
        return Ok(settled);
      }
      // A presigned upload: its own path below (the object's size first, then the commit).
    }
    let coalesce_commit::Commit { owner, id, actual } = call;
    if let Some(settled) = self.commit_presigned(&owner, &id, mode).await? {
      return Ok(settled);
    }
    self
      .with_conn(async |conn| {
        reservations::commit(&mut conn.0, &owner, &id, actual, mode, None).await
      })
      .await
  }

  pub async fn cancel_upload(&self, user_id: &str, reservation_id: &str) -> Result<Settled> {
    let owner = UserId::parse(user_id)?;
    let id = parse_reservation_id(reservation_id)?;
    let mode = self.mode_for(&owner);
    let settled = if mode == Mode::Enforce && batching_enabled() {
      let call = coalesce_cancel::Cancel {
        owner: owner.clone(),
        id,
      };
      batched::only(self.cancels_together(vec![call]).await)?
    } else {
      self
        .with_conn(async |conn| reservations::cancel(&mut conn.0, &owner, &id, mode).await)
        .await?
    };
    // A presigned upload's object goes with its reservation (best effort: the sweep retries).
    let _ = self.delete_abandoned_objects(Some((&owner, &id))).await;
    Ok(settled)
  }

  /// Marks expired reservations and deletes the objects of abandoned presigned uploads.
  pub async fn sweep_expired_reservations(&self) -> Result<u64> {
    let swept = self
      .with_conn(async |conn| reservations::sweep_all(&mut conn.0).await)
      .await?;
    self.delete_abandoned_objects(None).await?;
    Ok(swept)
  }

  /// Releases a deleted file's bytes: by the upload id that recorded it, or by a byte count
  /// (with an optional idempotency key).
  pub async fn record_deletion(
    &self,
    user_id: &str,
    project_id: &str,
    bytes: Option<f64>,
    upload_id: Option<&str>,
    deletion_id: Option<&str>,
  ) -> Result<Released> {
    let call = deletion_of(user_id, project_id, bytes, upload_id, deletion_id)?;
    self.release(call).await
  }

  /// Gives back a deletion's bytes together with the other deletions in flight, of any users
  /// (see `coalesce_deletion`; releases are made in every mode). `recordDeletion` and
  /// `deleteProjectFile` both release through here.
  pub(super) async fn release(&self, call: Deletion) -> Result<Released> {
    if !batching_enabled() {
      let (pool, limit) = (self.pool()?, self.default_limit());
      let mut conn = pool.get().await?;
      let (user, project) = (&call.user, &call.project);
      return deletions::record_deletion(&mut conn.0, user, project, &call.target, limit).await;
    }
    batched::only(self.release_together(vec![call]).await)
  }

  /// An upload that replaces content of `replaced_bytes`: charged `bytes − replaced_bytes`.
  pub async fn record_overwrite(
    &self,
    user_id: &str,
    project_id: &str,
    bytes: f64,
    replaced_bytes: f64,
    upload_id: Option<&str>,
  ) -> Result<Overwritten> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let bytes = parse_bytes("bytes", bytes)?;
    let replaced = parse_bytes("replacesBytes", replaced_bytes)?;
    let upload_id = upload_key_or_new(upload_id)?;
    let (mode, limit) = (self.mode_for(&user), self.default_limit());
    self
      .with_conn(async |conn| {
        deletions::record_overwrite(
          &mut conn.0,
          &user,
          &project,
          bytes,
          replaced,
          &upload_id,
          limit,
          mode,
        )
        .await
      })
      .await
  }

  /// A new project: quota check, storage path, initial size counted (once per project).
  pub async fn register_project(
    &self,
    user_id: &str,
    project_id: &str,
    size_bytes: Option<f64>,
  ) -> Result<RegisteredProject> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let size = size_bytes
      .map(|b| parse_bytes("sizeBytes", b))
      .transpose()?
      .unwrap_or(0);
    let (mode, limit) = (self.mode_for(&user), self.default_limit());
    if size > 0 && mode == Mode::Enforce {
      let check = self
        .with_conn(async |conn| usage::check_quota(&mut conn.0, &user, &[size], limit, mode).await)
        .await?;
      if !check.allowed {
        return Err(QuotaError::QuotaExceeded(check.usage.shortfall(size)));
      }
    }
    if self.standalone() {
      self
        .with_conn(async |conn| projects::register_standalone(&mut conn.0, &user, &project).await)
        .await?;
    }
    let path = self.allocate(&user, &project).await?;
    // A project that existed when its owner was seeded has its size counted as a baseline
    // already (from the app's size column): its initial size is not charged a second time.
    let has_baseline = self
      .with_conn(async |conn| {
        let row = conn
          .0
          .query_opt(
            // Per project (earlier versions), or a share of the user's entry (0009).
            "SELECT 1 FROM quota_ledger WHERE user_id = $1
               AND (idempotency_key = $2 OR idempotency_key = 'baseline' AND baseline_projects ? $3)",
            &[&user.as_str(), &format!("baseline {project}"), &project.as_str()],
          )
          .await?;
        Ok(row.is_some())
      })
      .await?;
    if size == 0 || has_baseline {
      let usage = self.usage_of(&user).await?;
      return Ok(RegisteredProject {
        path,
        counted_bytes: 0,
        usage,
      });
    }
    let key = format!("register {project}");
    let upload = self
      .with_conn(async |conn| {
        usage::record_upload(&mut conn.0, &user, &project, size, &key, limit, mode).await
      })
      .await?;
    Ok(RegisteredProject {
      path,
      counted_bytes: if upload.counted { upload.bytes } else { 0 },
      usage: upload.usage,
    })
  }

  /// Releases the project's bytes, cancels its pending reservations and, when `delete_files`,
  /// deletes its files (its directory, or every object under its prefix) where its record
  /// says they are.
  pub async fn remove_project(
    &self,
    user_id: &str,
    project_id: &str,
    delete_files: bool,
  ) -> Result<RemovedProject> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let limit = self.default_limit();
    let removed = self
      .with_conn(async |conn| deletions::remove_project(&mut conn.0, &user, &project, limit).await)
      .await?;
    if delete_files {
      let recorded = self
        .with_conn(async |conn| {
          Ok(
            crate::quota::objects::project_record(&mut conn.0, &user, &project)
              .await
              .ok()
              .map(|record| record.backend),
          )
        })
        .await?;
      let backend = match recorded {
        Some(name) => self.backend_named(&name)?,
        None => self.storage_backend()?,
      };
      backend.remove_project(&user, &project).await?;
      // Its files are gone: a later copy into it must copy again, not answer `duplicate`.
      self
        .with_conn(async |conn| copies::forget(&mut conn.0, &user, &project).await)
        .await?;
    }
    if self.standalone() {
      self
        .with_conn(async |conn| projects::unregister_standalone(&mut conn.0, &user, &project).await)
        .await?;
    }
    Ok(removed)
  }
}

/// `recordDeletion`'s arguments, checked: the upload it removes (its bytes optional), or a number
/// of bytes under `deletion_id` (a new UUID when absent).
pub(super) fn deletion_of(
  user_id: &str,
  project_id: &str,
  bytes: Option<f64>,
  upload_id: Option<&str>,
  deletion_id: Option<&str>,
) -> Result<Deletion> {
  let user = UserId::parse(user_id)?;
  let project = ProjectId::parse(project_id)?;
  let bytes = bytes.map(|b| parse_bytes("bytes", b)).transpose()?;
  let upload_id = upload_id.map(parse_upload_id).transpose()?;
  let deletion_id = upload_key_or_new(deletion_id)?;
  let target = match (upload_id, bytes) {
    (Some(upload_id), bytes) => DeletionTarget::Upload { upload_id, bytes },
    (None, Some(bytes)) => DeletionTarget::Bytes { bytes, deletion_id },
    (None, None) => {
      return Err(QuotaError::invalid(
        "recordDeletion needs the bytes deleted, or the uploadId of the upload deleted",
      ))
    }
  };
  Ok(Deletion {
    user,
    project,
    target,
  })
}

/// `reserveUpload`'s arguments, checked (`Client::reserve_args`).
pub(super) struct ReserveArgs {
  pub user: UserId,
  pub project: ProjectId,
  pub bytes: i64,
  pub ttl_ms: i64,
  pub id: Option<uuid::Uuid>,
}

impl ReserveArgs {
  /// The batch's request: an id made now when none was given.
  pub(super) fn batched(self) -> coalesce_reserve::Reserve {
    coalesce_reserve::Reserve {
      user: self.user,
      project: self.project,
      bytes: self.bytes,
      ttl_ms: self.ttl_ms,
      id: self.id.unwrap_or_else(uuid::Uuid::new_v4),
    }
  }
}

/// `commitUpload`'s arguments, checked: the owner, the reservation and the actual bytes.
pub(super) fn commit_of(
  user_id: &str,
  reservation_id: &str,
  actual_bytes: Option<f64>,
) -> Result<coalesce_commit::Commit> {
  Ok(coalesce_commit::Commit {
    owner: UserId::parse(user_id)?,
    id: parse_reservation_id(reservation_id)?,
    actual: actual_bytes
      .map(|b| parse_bytes("actualBytes", b))
      .transpose()?,
  })
}
