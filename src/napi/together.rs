//! `NativeClient`'s methods for calls the JS layer hands over together (the `checkQuota` or
//! `recordUpload` calls of one turn of the event loop): one entry per call in the answer, in
//! order, each its value or its own JS `Error` (`error::Answers`).

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::client::NativeClient;
use super::convert::*;
use super::error::Answers;
use super::packed::{Packed, PackedUpload};
use super::types::*;
use crate::quota::client::{CommitCall, DeletionCall, RecordCall, ReserveCall};

#[napi]
impl NativeClient {
  /// `checkQuota` for several calls at once (the JS layer's batch of one event-loop turn).
  /// `sizes` holds every call's sizes one after another, `counts[i]` how many are the i-th
  /// call's. Answered packed (`packed::Packed`; `lib/packed.js` unpacks): one entry per
  /// call, in order, its answer or its error.
  #[napi(
    ts_return_type = "Promise<{ values: Float64Array, texts: null, errors: Array<Error | undefined> | null }>"
  )]
  pub async fn check_quota_many(
    &self,
    user_ids: Vec<String>,
    sizes: Vec<f64>,
    counts: Vec<u32>,
  ) -> Result<Packed<crate::quota::usage::QuotaCheck>> {
    let _busy = super::idle::Busy::enter();
    // Sizes missing for a call make its list short (or empty): that call alone is
    // INVALID_ARGUMENT.
    let mut rest = sizes.as_slice();
    let calls: Vec<(String, Vec<f64>)> = user_ids
      .into_iter()
      .enumerate()
      .map(|(i, user)| {
        let count = counts.get(i).map_or(0, |&n| n as usize).min(rest.len());
        let (own, after) = rest.split_at(count);
        rest = after;
        (user, own.to_vec())
      })
      .collect();
    Ok(Packed(self.inner.check_quota_many(&calls).await))
  }

  /// `recordUpload` for several calls at once: one entry per call, in order, its answer or its
  /// error. `uploadIds[i]` and `replacesBytes[i]` are the i-th call's options (or null).
  /// Answered packed (`packed::Packed`; `lib/packed.js` unpacks).
  #[napi(
    ts_return_type = "Promise<{ values: Float64Array, texts: Array<string | undefined> | null, errors: Array<Error | undefined> | null }>"
  )]
  pub async fn record_upload_many(
    &self,
    user_ids: Vec<String>,
    project_ids: Vec<String>,
    bytes: Vec<f64>,
    upload_ids: Vec<Option<String>>,
    replaces_bytes: Vec<Option<f64>>,
  ) -> Result<Packed<PackedUpload>> {
    let _busy = super::idle::Busy::enter();
    // A call missing a project or a size gets an empty project id or NaN: INVALID_ARGUMENT.
    let mut upload_ids = upload_ids.into_iter();
    let calls: Vec<RecordCall> = user_ids
      .into_iter()
      .enumerate()
      .map(|(i, user_id)| RecordCall {
        user_id,
        project_id: project_ids.get(i).cloned().unwrap_or_default(),
        bytes: bytes.get(i).copied().unwrap_or(f64::NAN),
        upload_id: upload_ids.next().flatten(),
        replaces_bytes: replaces_bytes.get(i).copied().flatten(),
      })
      .collect();
    let answers = self.inner.record_many(&calls).await;
    Ok(Packed(
      answers
        .into_iter()
        .zip(&calls)
        .map(|(answer, call)| {
          answer.map(|uploaded| PackedUpload {
            tell_id: call.upload_id.as_deref() != Some(uploaded.upload_id.as_str()),
            uploaded,
          })
        })
        .collect(),
    ))
  }

  /// `reserveUpload` (not presigned) for several calls at once: one entry per call, in order,
  /// its reservation or its error. `ttlMs[i]` and `reservationIds[i]` may be null.
  #[napi(ts_return_type = "Promise<Array<Reservation | Error>>")]
  pub async fn reserve_upload_many(
    &self,
    user_ids: Vec<String>,
    project_ids: Vec<String>,
    bytes: Vec<f64>,
    ttl_ms: Vec<Option<f64>>,
    reservation_ids: Vec<Option<String>>,
  ) -> Result<Answers<Reservation>> {
    let _busy = super::idle::Busy::enter();
    let mut reservation_ids = reservation_ids.into_iter();
    // A call missing a project or a size gets an empty project id or NaN: INVALID_ARGUMENT.
    let calls: Vec<ReserveCall> = user_ids
      .into_iter()
      .enumerate()
      .map(|(i, user_id)| ReserveCall {
        user_id,
        project_id: project_ids.get(i).cloned().unwrap_or_default(),
        bytes: bytes.get(i).copied().unwrap_or(f64::NAN),
        ttl_ms: ttl_ms.get(i).copied().flatten(),
        reservation_id: reservation_ids.next().flatten(),
      })
      .collect();
    let answers = self.inner.reserve_many(&calls).await;
    Ok(Answers(
      answers
        .into_iter()
        .map(|a| a.map(|r| reservation_to_js(r, None)))
        .collect(),
    ))
  }

  /// `commitUpload` for several calls at once: one entry per call, in order, the settled
  /// reservation or its error. `actualBytes[i]` may be null.
  #[napi(ts_return_type = "Promise<Array<SettledReservation | Error>>")]
  pub async fn commit_upload_many(
    &self,
    user_ids: Vec<String>,
    reservation_ids: Vec<String>,
    actual_bytes: Vec<Option<f64>>,
  ) -> Result<Answers<SettledReservation>> {
    let _busy = super::idle::Busy::enter();
    let calls: Vec<CommitCall> = user_ids
      .into_iter()
      .enumerate()
      .map(|(i, user_id)| CommitCall {
        user_id,
        reservation_id: reservation_ids.get(i).cloned().unwrap_or_default(),
        actual_bytes: actual_bytes.get(i).copied().flatten(),
      })
      .collect();
    let answers = self.inner.commit_many(&calls).await;
    Ok(Answers(
      answers.into_iter().map(|a| a.map(settled_to_js)).collect(),
    ))
  }

  /// `recordDeletion` for several calls at once: one entry per call, in order, what it released
  /// or its error. `bytes[i]`, `uploadIds[i]` and `deletionIds[i]` may be null.
  #[napi(ts_return_type = "Promise<Array<Released | Error>>")]
  pub async fn record_deletion_many(
    &self,
    user_ids: Vec<String>,
    project_ids: Vec<String>,
    bytes: Vec<Option<f64>>,
    upload_ids: Vec<Option<String>>,
    deletion_ids: Vec<Option<String>>,
  ) -> Result<Answers<Released>> {
    let _busy = super::idle::Busy::enter();
    let (mut upload_ids, mut deletion_ids) = (upload_ids.into_iter(), deletion_ids.into_iter());
    // A call missing a project gets an empty project id: INVALID_ARGUMENT.
    let calls: Vec<DeletionCall> = user_ids
      .into_iter()
      .enumerate()
      .map(|(i, user_id)| DeletionCall {
        user_id,
        project_id: project_ids.get(i).cloned().unwrap_or_default(),
        bytes: bytes.get(i).copied().flatten(),
        upload_id: upload_ids.next().flatten(),
        deletion_id: deletion_ids.next().flatten(),
      })
      .collect();
    let answers = self.inner.record_deletion_many(&calls).await;
    Ok(Answers(
      answers.into_iter().map(|a| a.map(released_to_js)).collect(),
    ))
  }
}
