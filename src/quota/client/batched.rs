//! The client's way into each kind's batches (`batch::Batcher`): one method per kind sends a list
//! of requests with the other calls of that kind queued, on the client's pool, and answers each in
//! order. A lone call (a list of one, `only`) and the calls the JS layer hands over together
//! (`together`) go in through the same method.

use std::future::Future;

use super::*;
use crate::quota::coalesce_deletion::{self, Deletion};
use crate::quota::deletions::Released;

impl Client {
  /// `requests` into `batcher`'s next batch, which `run` sends on the pool. `Err` only when no
  /// pool could be had (the client is closed).
  async fn batched<Req, Resp, F, Fut>(
    &self,
    batcher: &Arc<Batcher<Req, Resp>>,
    requests: Vec<Req>,
    run: F,
  ) -> Result<Vec<Result<Resp>>>
  where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
    F: Fn(Arc<Pool>, Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Result<Resp>>>> + Send + 'static,
  {
    let pool = self.pool()?;
    Ok(
      batcher
        .call_many(requests, move |requests| run(pool.clone(), requests))
        .await,
    )
  }

  /// The usages of `users` (`None`: no quota row yet), read in one statement with the other
  /// reads queued.
  pub(super) async fn read_usages_together(
    &self,
    users: Vec<String>,
  ) -> Result<Vec<Result<Option<Usage>>>> {
    self
      .batched(&self.reads, users, |pool, users| async move {
        let mut conn = pool.get().await?;
        usage::read_usages(&mut conn.0, &users).await
      })
      .await
  }

  /// Enforce-mode uploads, charged with the other uploads queued (see `coalesce`).
  pub(super) async fn uploads_together(
    &self,
    uploads: Vec<coalesce::Upload>,
  ) -> Result<Vec<Result<RecordedUpload>>> {
    let limit = self.default_limit();
    self
      .batched(&self.uploads, uploads, move |pool, uploads| async move {
        coalesce::record_uploads(&pool, uploads, limit).await
      })
      .await
  }

  /// Enforce-mode reservations, held with the other reservations queued (see
  /// `coalesce_reserve`).
  pub(super) async fn reserves_together(
    &self,
    reserves: Vec<coalesce_reserve::Reserve>,
  ) -> Result<Vec<Result<Reservation>>> {
    let limit = self.default_limit();
    self
      .batched(&self.reserves, reserves, move |pool, calls| async move {
        coalesce_reserve::reserve_many(&pool, calls, limit).await
      })
      .await
  }

  /// Enforce-mode commits, settled with the other commits queued (see `coalesce_commit`;
  /// `None`: a presigned upload, left to its own path).
  pub(super) async fn commits_together(
    &self,
    commits: Vec<coalesce_commit::Commit>,
  ) -> Result<Vec<Result<coalesce_commit::Committed>>> {
    self
      .batched(&self.commits, commits, |pool, calls| async move {
        coalesce_commit::commit_many(&pool, calls).await
      })
      .await
  }

  /// Enforce-mode cancels, settled with the other cancels queued (see `coalesce_cancel`).
  pub(super) async fn cancels_together(
    &self,
    cancels: Vec<coalesce_cancel::Cancel>,
  ) -> Result<Vec<Result<Settled>>> {
    self
      .batched(&self.cancels, cancels, |pool, calls| async move {
        coalesce_cancel::cancel_many(&pool, calls).await
      })
      .await
  }

  /// Deletions of any mode, released with the other deletions queued (see
  /// `coalesce_deletion`).
  pub(super) async fn release_together(
    &self,
    deletions: Vec<Deletion>,
  ) -> Result<Vec<Result<Released>>> {
    let limit = self.default_limit();
    self
      .batched(&self.deletions, deletions, move |pool, calls| async move {
        coalesce_deletion::delete_many(&pool, calls, limit).await
      })
      .await
  }
}

/// The answer of a list of one request.
pub(super) fn only<T>(answers: Result<Vec<Result<T>>>) -> Result<T> {
  answers?
    .pop()
    .unwrap_or_else(|| Err(QuotaError::Internal("a batch answered no result".into())))
}
