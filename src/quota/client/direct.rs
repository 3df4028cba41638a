//! Direct uploads to an object store under the quota: the reservation holds the declared
//! bytes and hands out a presigned `PUT` URL for one object of the project, expiring with the
//! reservation; commit charges the object's real size (a `HEAD`), not what the client said,
//! and deletes it when it does not fit; the sweep deletes the objects of reservations that
//! were never committed.

use std::time::Duration;

use super::Client;
use crate::error::{ConflictReason, QuotaError, Result};
use crate::ids::{ProjectId, UserId};
use crate::quota::objects;
use crate::quota::reservations::{self, Reservation, Settled};
use crate::rollout::Mode;
use crate::storage::candidate::file_name;

/// A reservation with the URL to `PUT` the file to.
#[derive(Debug, Clone)]
pub struct PresignedReservation {
  pub reservation: Reservation,
  /// Presigned `PUT` URL, valid until the reservation expires.
  pub upload_url: String,
  /// The object's path relative to the project.
  pub file: String,
  /// The object's full `s3://` URL.
  pub path: String,
}

impl Client {
  /// `reserveUpload(…, { presign: true, fileName })`: holds the bytes, then presigns a `PUT` of
  /// `file` in the project that expires when the reservation does.
  #[allow(clippy::too_many_arguments)]
  pub async fn reserve_presigned_upload(
    &self,
    user_id: &str,
    project_id: &str,
    file: &str,
    bytes: f64,
    ttl_ms: Option<f64>,
    reservation_id: Option<&str>,
  ) -> Result<PresignedReservation> {
    let user = UserId::parse(user_id)?;
    let project = ProjectId::parse(project_id)?;
    let file = file_name(file)?;
    // The project must live in this client's object store before anything is held.
    let record = self.allocate(&user, &project).await?;
    let backend = self.backend_named(&record.backend)?;
    // A PUT would replace it silently while its bytes stay counted: refuse before holding any.
    // (Two presigns of one new name both pass; the second commit finds the first's object.)
    if backend.file_size(&user, &project, &file).await?.is_some() {
      return Err(QuotaError::conflict(
        ConflictReason::FileExists,
        format!("project {project} already has a file {file:?}; delete it first (deleteProjectFile) to replace it"),
      ));
    }
    let reservation = self
      .reserve_upload(user_id, project_id, bytes, ttl_ms, reservation_id)
      .await?;
    let id = reservation.reservation_id;
    let attached = self
      .with_conn(async |conn| objects::attach_object(&mut conn.0, &user, &id, &file).await)
      .await;
    // Expiring with the reservation: at most its remaining lifetime, rounded down.
    let remaining = (reservation.expires_at - chrono::Utc::now())
      .to_std()
      .unwrap_or_default();
    let signed = match attached {
      Ok(()) if remaining >= Duration::from_secs(1) => {
        backend
          .presign_put(
            &user,
            &project,
            &file,
            Duration::from_secs(remaining.as_secs()),
          )
          .await
      }
      Ok(()) => Err(QuotaError::ReservationExpired(format!(
        "reservation {id} expires in less than a second; reserve again"
      ))),
      Err(error) => Err(error),
    };
    match signed {
      Ok(upload_url) => {
        let path = format!("{}{file}", record.path);
        Ok(PresignedReservation {
          reservation,
          upload_url,
          file,
          path,
        })
      }
      Err(error) => {
        // Nothing can be uploaded without the URL: give the bytes back at once.
        if !matches!(error, QuotaError::Conflict { .. }) {
          let _ = self.cancel_upload(user_id, &id.to_string()).await;
        }
        Err(error)
      }
    }
  }

  /// Commit of a presigned reservation: charges the object's real size. `None` when the
  /// reservation has no object, is settled or is another user's (the ordinary commit answers).
  pub(super) async fn commit_presigned(
    &self,
    owner: &UserId,
    id: &uuid::Uuid,
    mode: Mode,
  ) -> Result<Option<Settled>> {
    let Some(reserved) = self
      .with_conn(async |conn| objects::reserved_object(&mut conn.0, owner, id).await)
      .await?
    else {
      return Ok(None);
    };
    let Some(file) = reserved.object_key.clone() else {
      return Ok(None);
    };
    if reserved.status != "pending" || reserved.user_id != owner.as_str() {
      return Ok(None);
    }
    let user = UserId::parse(&reserved.user_id)?;
    let project = ProjectId::parse(&reserved.project_id)?;
    let backend = self.backend_named(reserved.backend.as_deref().unwrap_or("s3"))?;
    let size = backend
      .file_size(&user, &project, &file)
      .await?
      .ok_or_else(|| {
        QuotaError::conflict(
          ConflictReason::Mismatch,
          format!("nothing was uploaded to {file:?} for reservation {id}; PUT the file first"),
        )
      })?;
    let committed = self
      .with_conn(async |conn| {
        reservations::commit(&mut conn.0, owner, id, Some(size), mode, None).await
      })
      .await;
    // More than fits was uploaded: it must not stay in the bucket uncounted. Only where the
    // quota is enforced: shadow and off modes never take a user's file away.
    if matches!(&committed, Err(QuotaError::QuotaExceeded(_)))
      && self.mode_for(&user) == Mode::Enforce
    {
      backend.delete(&user, &project, &file).await?;
    }
    committed.map(Some)
  }

  /// Deletes the objects of presigned reservations that ended without a commit (one, or every
  /// one), and forgets them. An object a later upload of the same name committed stays. Objects
  /// in a store this client is not configured for are left to a client that is (a local-only
  /// `storage-quota sweep` still sweeps the reservations themselves).
  pub(super) async fn delete_abandoned_objects(
    &self,
    only: Option<(&UserId, &uuid::Uuid)>,
  ) -> Result<u64> {
    let mut deleted = 0;
    loop {
      let page = self
        .with_conn(async |conn| objects::abandoned_objects(&mut conn.0, only).await)
        .await?;
      let mut forgotten = 0;
      for object in &page {
        let Ok(backend) = self.backend_named(object.backend.as_deref().unwrap_or("s3")) else {
          continue;
        };
        if object.delete {
          let user = UserId::parse(&object.user_id)?;
          let project = ProjectId::parse(&object.project_id)?;
          backend.delete(&user, &project, &object.object_key).await?;
          deleted += 1;
        }
        let id = object.reservation_id;
        self
          .with_conn(async |conn| objects::forget_object(&mut conn.0, &object.user_id, &id).await)
          .await?;
        forgotten += 1;
      }
      if forgotten == 0 {
        return Ok(deleted);
      }
    }
  }
}
