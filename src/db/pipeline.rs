//! A transaction in two round trips: its `BEGIN` goes out with its first statements and its
//! `COMMIT` with its last ones (tokio-postgres sends a request as soon as its future is first
//! polled, so statements whose futures are polled together travel together). For a batch that
//! locks and reads, decides, then writes, that is two round trips where `Transaction` takes four.
//!
//! What pipelining the `COMMIT` changes: when a statement fails, PostgreSQL aborts the
//! transaction and answers the `COMMIT` behind it with `ROLLBACK`, not with an error, so whether
//! the transaction committed is known only from the statements' own answers. `commit_with`
//! therefore waits for every answer and reports the transaction as committed only when the
//! writes and every statement before them succeeded. A consistency check that must stop the
//! commit has to be an error of a statement (see `quota::coalesce`), not a test of its rows
//! afterwards.
//!
//! Behind a transaction pooler the `SET LOCAL statement_timeout` goes with the `BEGIN`, and
//! nothing is pipelined behind the `COMMIT` (see `session`).

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::future::maybe_done;
use tokio_postgres::Row;

use crate::db::session::{after_first_poll, run, Got, Param, PgConnection, PgResult, Want};
use crate::error::{QuotaError, Result};

/// A transaction whose `BEGIN` and `COMMIT` share round trips with its statements. Rolled back
/// when dropped before `commit_with`.
pub struct Pipelined<'a> {
  conn: &'a PgConnection,
  /// `BEGIN` still has to go out, ahead of the next statement.
  begin_pending: AtomicBool,
  /// `BEGIN` went out and neither `COMMIT` nor `ROLLBACK` did yet.
  open: AtomicBool,
  /// A statement failed: the server aborted the transaction.
  failed: AtomicBool,
}

impl PgConnection {
  /// A transaction whose `BEGIN` goes out with its first statement (see `pipeline`).
  pub fn pipelined(&mut self) -> Pipelined<'_> {
    Pipelined {
      conn: self,
      begin_pending: AtomicBool::new(true),
      open: AtomicBool::new(false),
      failed: AtomicBool::new(false),
    }
  }
}

impl Pipelined<'_> {
  pub async fn query(&self, sql: &str, params: &[Param<'_>]) -> PgResult<Vec<Row>> {
    match self.send(sql, params, Want::Rows).await? {
      Got::Rows(rows) => Ok(rows),
      _ => unreachable!("send answers in the shape asked for"),
    }
  }

  /// Sends `COMMIT` right behind `writes` (their statements and it in one round trip) and waits
  /// for every answer. `Ok` only when the transaction committed: each statement of it
  /// succeeded, so the `COMMIT` was not answered with `ROLLBACK`.
  pub async fn commit_with<T>(&self, writes: impl Future<Output = PgResult<T>>) -> Result<T> {
    let conn = self.conn;
    let commit = async {
      let guard = conn.state.order.lock().await;
      after_first_poll(guard, conn.client.batch_execute("COMMIT")).await
    };
    let (written, committed) = tokio::join!(biased; writes, commit);
    self.ended();
    let written = written.inspect_err(|_| self.failed.store(true, Ordering::Release))?;
    committed?;
    if self.failed.load(Ordering::Acquire) {
      return Err(QuotaError::Internal(
        "a statement of a pipelined transaction failed; it was rolled back".into(),
      ));
    }
    Ok(written)
  }

  fn ended(&self) {
    self.open.store(false, Ordering::Release);
    self.conn.state.open.store(false, Ordering::Release);
  }

  async fn send(&self, sql: &str, params: &[Param<'_>], want: Want) -> PgResult<Got> {
    let (client, state) = (&self.conn.client, &self.conn.state);
    let guard = state.order.lock().await;
    let begin = self.begin_pending.swap(false, Ordering::AcqRel).then(|| {
      // Until COMMIT or ROLLBACK is sent, the pool must not hand the connection out again.
      self.open.store(true, Ordering::Release);
      state.open.store(true, Ordering::Release);
      state.sending.begin.as_deref().unwrap_or("BEGIN")
    });
    let begin = async move {
      match begin {
        Some(begin) => client.batch_execute(begin).await,
        None => Ok(()),
      }
    };
    let mut begin = pin!(maybe_done(begin));
    // Queued now, ahead of the prepare the statement may need first.
    poll_fn(|cx| {
      let _ = begin.as_mut().poll(cx);
      Poll::Ready(())
    })
    .await;
    let result = match state.ready(client, true, sql).await {
      Ok(ready) => {
        after_first_poll(guard, async {
          let (_, result) =
            tokio::join!(biased; begin.as_mut(), run(client, &ready, sql, params, want));
          let began = begin.as_mut().take_output().unwrap_or(Ok(()));
          began.and(result)
        })
        .await
      }
      Err(error) => Err(error),
    };
    if result.is_err() {
      self.failed.store(true, Ordering::Release);
    }
    result
  }
}

impl Drop for Pipelined<'_> {
  fn drop(&mut self) {
    if !self.open.load(Ordering::Acquire) {
      return;
    }
    // Queue a ROLLBACK without waiting for it (as tokio-postgres' own `Transaction` does): its
    // message is sent on the first poll, and the next statement on this connection goes out
    // behind it. No statement future can be alive here: each borrows `self`.
    let mut rollback = pin!(self.conn.client.batch_execute("ROLLBACK"));
    let _ = rollback
      .as_mut()
      .poll(&mut Context::from_waker(std::task::Waker::noop()));
    self.ended();
  }
}
