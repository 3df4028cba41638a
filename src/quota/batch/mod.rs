//! Group commit's mechanism, without any SQL: while a statement of a kind is in flight (or a set
//! number of them), further calls of that kind queue in the process; when one ends, everything
//! queued goes out together as one statement, and each caller gets exactly its own answer. A call with nothing in flight goes
//! out at once, so at concurrency 1 nothing ever waits. One database round trip (and, for writes,
//! one commit) then serves many callers across users.
//!
//! The kind decides what a batch means: `run` gets the requests in arrival order and must answer
//! one result per request, in the same order. A batch that fails as a whole is retried one
//! request at a time, so one bad neighbour never fails the others.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use futures::future::BoxFuture;

use crate::db::pool::{PgConnection, Pool};
use crate::error::{QuotaError, Result};

/// Most requests sent in one statement; the rest wait for the next one.
pub const MAX_BATCH: usize = 512;

type Waiter<Req, Resp> = (Req, oneshot::Sender<Result<Resp>>);

struct State<Req, Resp> {
  /// Statements of this kind in flight (or about to be sent by a task draining the queue).
  in_flight: usize,
  queue: Vec<Waiter<Req, Resp>>,
}

pub struct Batcher<Req, Resp> {
  state: Mutex<State<Req, Resp>>,
  /// How many statements of this kind may be in flight at once; calls beyond queue.
  max_in_flight: usize,
}

impl<Req, Resp> Batcher<Req, Resp> {
  /// At most `max_in_flight` statements at once (at least 1).
  pub fn new(max_in_flight: usize) -> Self {
    Batcher {
      state: Mutex::new(State {
        in_flight: 0,
        queue: Vec::new(),
      }),
      max_in_flight: max_in_flight.max(1),
    }
  }
}

impl<Req, Resp> Default for Batcher<Req, Resp> {
  /// One statement in flight: the batches are as large as they can be.
  fn default() -> Self {
    Batcher::new(1)
  }
}

impl<Req, Resp> Batcher<Req, Resp>
where
  Req: Clone + Send + 'static,
  Resp: Send + 'static,
{
  fn state(&self) -> std::sync::MutexGuard<'_, State<Req, Resp>> {
    self.state.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// Sends `request` now if nothing of this kind is in flight, else with the next batch.
  /// `run` sends a batch (one or more requests) and answers each, in order; every call to one
  /// batcher must pass an equivalent `run` (a queued request goes out with the leader's).
  pub async fn call<F, Fut>(self: &Arc<Self>, request: Req, run: F) -> Result<Resp>
  where
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Result<Resp>>>> + Send + 'static,
  {
    let answer = self.call_many(vec![request], run).await.pop();
    answer.unwrap_or_else(|| Err(QuotaError::Internal("a batch answered no result".into())))
  }

  /// `call` for several requests at once (the JS layer's batch of calls made in one turn of the
  /// event loop): sent together now if nothing of this kind is in flight, else queued together
  /// for the next batch. One answer per request, in order.
  pub async fn call_many<F, Fut>(self: &Arc<Self>, requests: Vec<Req>, run: F) -> Vec<Result<Resp>>
  where
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Result<Resp>>>> + Send + 'static,
  {
    let receivers = {
      let mut state = self.state();
      if state.in_flight >= self.max_in_flight {
        let mut receivers = Vec::with_capacity(requests.len());
        for request in &requests {
          let (sender, receiver) = oneshot::channel();
          state.queue.push((request.clone(), sender));
          receivers.push(receiver);
        }
        Some(receivers)
      } else {
        state.in_flight += 1;
        None
      }
    };
    if let Some(receivers) = receivers {
      let mut answers = Vec::with_capacity(receivers.len());
      for receiver in receivers {
        answers.push(receiver.await.unwrap_or_else(|_| {
          Err(QuotaError::Internal(
            "a batched call was dropped without an answer".into(),
          ))
        }));
      }
      return answers;
    }
    let run = Arc::new(run);
    // Whatever queued while these requests are in flight is handed to a task that sends it, even
    // if this call's future is dropped or panics: the guard's drop does it.
    let (batcher, drain_run) = (self.clone(), run.clone());
    let hand_off = HandOff(Some(Box::new(move || {
      if let Some(first) = batcher.next_batch() {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
          runtime.spawn(drain(batcher, drain_run, first));
        }
      }
    })));
    let answers = send(&*run, requests).await;
    drop(hand_off);
    answers
  }

  /// Takes the next batch, or gives up this statement's place when nothing is queued.
  fn next_batch(&self) -> Option<Vec<Waiter<Req, Resp>>> {
    let mut state = self.state();
    if state.queue.is_empty() {
      state.in_flight -= 1;
      return None;
    }
    let take = state.queue.len().min(MAX_BATCH);
    let rest = state.queue.split_off(take);
    Some(std::mem::replace(&mut state.queue, rest))
  }
}

/// Runs one batch; if it fails as a whole, each request alone. Always one answer per request.
async fn send<Req, Resp, F, Fut>(run: &F, requests: Vec<Req>) -> Vec<Result<Resp>>
where
  Req: Clone,
  F: Fn(Vec<Req>) -> Fut,
  Fut: Future<Output = Result<Vec<Result<Resp>>>>,
{
  let count = requests.len();
  let whole = match run(requests.clone()).await {
    Ok(answers) if answers.len() == count => return answers,
    Ok(answers) => QuotaError::Internal(format!(
      "a batch of {count} answered {} results",
      answers.len()
    )),
    Err(error) => error,
  };
  if count == 1 {
    return vec![Err(whole)];
  }
  let mut answers = Vec::with_capacity(count);
  // Once one call alone finds the database unreachable, the rest are answered so at once: sent
  // one after another they would each wait out the connect timeout (the callers retry, as after
  // any call that lost its connection). A timeout is not passed on: a statement that waited out
  // `statementTimeoutMs` on one user's lock says nothing about the other users' calls.
  let mut unreachable: Option<QuotaError> = None;
  for request in requests {
    if let Some(error) = &unreachable {
      answers.push(Err(error.clone()));
      continue;
    }
    let mut one = match run(vec![request]).await {
      Ok(one) if one.len() == 1 => one,
      Ok(_) => vec![Err(QuotaError::Internal(
        "a batch of 1 answered another number of results".into(),
      ))],
      Err(error) => vec![Err(error)],
    };
    let answer = one.remove(0);
    if let Err(error @ QuotaError::DbUnavailable { .. }) = &answer {
      unreachable = Some(error.clone());
    }
    answers.push(answer);
  }
  answers
}

/// What a batch decided in one transaction: per request its answer, or `None` for one left to
/// the single path. `Err` when the transaction failed as a whole.
pub type Decided<'a, Resp> = BoxFuture<'a, Result<Vec<Option<Result<Resp>>>>>;

/// The driver every batched write kind shares, on one pooled connection: a lone request goes
/// through `alone` (the kind's single statement, so at concurrency 1 nothing changes); more go
/// through `together` (one transaction deciding each, `None` for a request it leaves to the
/// single path), then each request left over through `alone`, in arrival order, after that
/// transaction committed. `Err` only when `together` failed as a whole (nothing of it
/// committed); `Batcher` then answers each request alone.
///
/// The two steps are boxed futures (not async closures) so that the whole stays `Send` for any
/// connection and request lifetime.
pub async fn together_then_alone<Req, Resp>(
  pool: &Pool,
  requests: &[Req],
  together: impl for<'a> FnOnce(&'a mut PgConnection, &'a [Req]) -> Decided<'a, Resp>,
  alone: impl for<'a> Fn(&'a mut PgConnection, &'a Req) -> BoxFuture<'a, Result<Resp>>,
) -> Result<Vec<Result<Resp>>> {
  let mut conn = pool.get().await?;
  if let [request] = requests {
    return Ok(vec![alone(&mut conn.0, request).await]);
  }
  let decided = together(&mut conn.0, requests).await?;
  if decided.len() != requests.len() {
    return Err(QuotaError::Internal(format!(
      "a batch of {} decided {} requests",
      requests.len(),
      decided.len()
    )));
  }
  let mut answers = Vec::with_capacity(requests.len());
  for (request, answer) in requests.iter().zip(decided) {
    answers.push(match answer {
      Some(answer) => answer,
      None => alone(&mut conn.0, request).await,
    });
  }
  Ok(answers)
}

/// Runs its closure when dropped: hands the queue on however the leading call ends.
struct HandOff(Option<Box<dyn FnOnce() + Send>>);

impl Drop for HandOff {
  fn drop(&mut self) {
    if let Some(hand_off) = self.0.take() {
      hand_off();
    }
  }
}

/// Sends batch after batch until the queue is empty, then leaves the kind idle.
async fn drain<Req, Resp, F, Fut>(
  batcher: Arc<Batcher<Req, Resp>>,
  run: Arc<F>,
  first: Vec<Waiter<Req, Resp>>,
) where
  Req: Clone + Send + 'static,
  Resp: Send + 'static,
  F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
  Fut: Future<Output = Result<Vec<Result<Resp>>>> + Send + 'static,
{
  let mut batch = Some(first);
  while let Some(waiters) = batch {
    let (requests, senders): (Vec<Req>, Vec<_>) = waiters.into_iter().unzip();
    let answers = send(&*run, requests).await;
    for (sender, answer) in senders.into_iter().zip(answers) {
      let _ = sender.send(answer);
    }
    batch = batcher.next_batch();
  }
}

#[cfg(test)]
mod tests;
