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
    let receiver = {
      let mut state = self.state();
      if state.in_flight >= self.max_in_flight {
        let (sender, receiver) = oneshot::channel();
        state.queue.push((request.clone(), sender));
        Some(receiver)
      } else {
        state.in_flight += 1;
        None
      }
    };
    if let Some(receiver) = receiver {
      return receiver.await.unwrap_or_else(|_| {
        Err(QuotaError::Internal(
          "a batched call was dropped without an answer".into(),
        ))
      });
    }
    let run = Arc::new(run);
    // Whatever queued while this call is in flight is handed to a task that sends it, even if
    // this call's future is dropped or panics: the guard's drop does it.
    let (batcher, drain_run) = (self.clone(), run.clone());
    let hand_off = HandOff(Some(Box::new(move || {
      if let Some(first) = batcher.next_batch() {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
          runtime.spawn(drain(batcher, drain_run, first));
        }
      }
    })));
    let answer = send(&*run, vec![request]).await.pop();
    drop(hand_off);
    answer.unwrap_or_else(|| Err(QuotaError::Internal("a batch answered no result".into())))
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
  let mut unreachable: Option<String> = None;
  for request in requests {
    if let Some(message) = &unreachable {
      answers.push(Err(QuotaError::DbUnavailable(message.clone())));
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
    if let Err(QuotaError::DbUnavailable(message)) = &answer {
      unreachable = Some(message.clone());
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
mod tests {
  use super::*;
  use std::sync::atomic::{AtomicUsize, Ordering};

  /// Doubles each number; fails any request of 13 on its own, and any batch holding one.
  async fn doubled(
    requests: Vec<i64>,
    batches: Arc<Mutex<Vec<usize>>>,
  ) -> Result<Vec<Result<i64>>> {
    batches.lock().unwrap().push(requests.len());
    tokio::task::yield_now().await;
    if requests.len() > 1 && requests.contains(&13) {
      return Err(QuotaError::Internal("poisoned batch".into()));
    }
    Ok(
      requests
        .into_iter()
        .map(|n| {
          if n == 13 {
            Err(QuotaError::invalid("13"))
          } else {
            Ok(n * 2)
          }
        })
        .collect(),
    )
  }

  type Answers = std::pin::Pin<Box<dyn Future<Output = Result<Vec<Result<i64>>>> + Send>>;

  fn runner(
    batches: &Arc<Mutex<Vec<usize>>>,
  ) -> impl Fn(Vec<i64>) -> Answers + Send + Sync + 'static {
    let batches = batches.clone();
    move |requests| Box::pin(doubled(requests, batches.clone()))
  }

  #[tokio::test]
  async fn alone_a_call_goes_out_at_once() {
    let batcher = Arc::new(Batcher::default());
    let batches = Arc::new(Mutex::new(Vec::new()));
    assert_eq!(batcher.call(21, runner(&batches)).await.unwrap(), 42);
    assert_eq!(batcher.call(5, runner(&batches)).await.unwrap(), 10);
    assert_eq!(*batches.lock().unwrap(), vec![1, 1]);
  }

  #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
  async fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
    let batcher = Arc::new(Batcher::default());
    let batches = Arc::new(Mutex::new(Vec::new()));
    let calls: Vec<_> = (0..200i64)
      .map(|n| {
        let (batcher, run) = (batcher.clone(), runner(&batches));
        tokio::spawn(async move { (n, batcher.call(n, run).await) })
      })
      .collect();
    for call in calls {
      let (n, answer) = call.await.unwrap();
      match n {
        13 => assert_eq!(answer.unwrap_err().code(), "INVALID_ARGUMENT"),
        _ => assert_eq!(answer.unwrap(), n * 2),
      }
    }
    let batches = batches.lock().unwrap();
    assert!(batches.iter().any(|&size| size > 1), "{batches:?}");
    // Every request was sent, the poisoned batch once more one by one.
    assert!(batches.iter().sum::<usize>() >= 200);
    assert!(batcher.state().queue.is_empty() && batcher.state().in_flight == 0);
  }

  #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
  async fn a_batch_failing_as_a_whole_falls_back_per_call() {
    let batcher = Arc::new(Batcher::<i64, i64>::default());
    let sent = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let (first_sent, gate_for_run) = (sent.clone(), gate.clone());
    let run = move |requests: Vec<i64>| {
      let (sent, gate) = (first_sent.clone(), gate_for_run.clone());
      async move {
        if sent.fetch_add(1, Ordering::SeqCst) == 0 {
          gate.notified().await; // hold the first call in flight until the others queued
        }
        if requests.len() > 1 && requests.contains(&13) {
          return Err(QuotaError::Internal("poisoned batch".into()));
        }
        Ok(
          requests
            .into_iter()
            .map(|n| {
              if n == 13 {
                Err(QuotaError::invalid("13"))
              } else {
                Ok(n)
              }
            })
            .collect(),
        )
      }
    };
    let run = Arc::new(run);
    let leader = {
      let (batcher, run) = (batcher.clone(), run.clone());
      tokio::spawn(async move { batcher.call(1, move |r| run(r)).await })
    };
    while sent.load(Ordering::SeqCst) == 0 {
      tokio::task::yield_now().await;
    }
    let followers: Vec<_> = [2, 13, 4]
      .into_iter()
      .map(|n| {
        let (batcher, run) = (batcher.clone(), run.clone());
        tokio::spawn(async move { batcher.call(n, move |r| run(r)).await })
      })
      .collect();
    while batcher.state().queue.len() < 3 {
      tokio::task::yield_now().await;
    }
    gate.notify_one();
    assert_eq!(leader.await.unwrap().unwrap(), 1);
    let answers: Vec<_> = futures_join(followers).await;
    assert_eq!(answers[0].as_ref().unwrap(), &2);
    assert_eq!(answers[1].as_ref().unwrap_err().code(), "INVALID_ARGUMENT");
    assert_eq!(answers[2].as_ref().unwrap(), &4);
    // 1 alone, the batch of 3 that failed whole, then 3 alone.
    assert_eq!(sent.load(Ordering::SeqCst), 5);
  }

  #[tokio::test]
  async fn an_unreachable_database_fails_the_rest_of_a_failed_batch_at_once() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let run = {
      let sent = sent.clone();
      move |requests: Vec<i64>| {
        let sent = sent.clone();
        async move {
          sent.lock().unwrap().push(requests.len());
          Err::<Vec<Result<i64>>, _>(QuotaError::DbUnavailable("connection refused".into()))
        }
      }
    };
    let answers = send(&run, vec![1, 2, 3, 4]).await;
    assert!(answers
      .iter()
      .all(|a| a.as_ref().unwrap_err().code() == "DB_UNAVAILABLE"));
    // The batch, then one call alone; the other three were not sent again.
    assert_eq!(*sent.lock().unwrap(), vec![4, 1]);
  }

  #[tokio::test]
  async fn one_call_timing_out_in_the_fallback_does_not_fail_its_neighbours() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let run = {
      let sent = sent.clone();
      move |requests: Vec<i64>| {
        let sent = sent.clone();
        async move {
          sent.lock().unwrap().push(requests.len());
          match requests.as_slice() {
            [2] => Err(QuotaError::DbTimeout(
              "canceling statement due to statement timeout".into(),
            )),
            [n] => Ok(vec![Ok(*n)]),
            _ => Err(QuotaError::Internal("poisoned batch".into())),
          }
        }
      }
    };
    let answers = send(&run, vec![1, 2, 3, 4]).await;
    assert_eq!(answers[0].as_ref().unwrap(), &1);
    assert_eq!(answers[1].as_ref().unwrap_err().code(), "DB_TIMEOUT");
    assert_eq!(answers[2].as_ref().unwrap(), &3);
    assert_eq!(answers[3].as_ref().unwrap(), &4);
    assert_eq!(*sent.lock().unwrap(), vec![4, 1, 1, 1, 1]);
  }

  #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
  async fn up_to_max_in_flight_calls_go_out_without_waiting() {
    let batcher = Arc::new(Batcher::<i64, i64>::new(2));
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let run = {
      let (started, gate) = (started.clone(), gate.clone());
      Arc::new(move |requests: Vec<i64>| {
        let (started, gate) = (started.clone(), gate.clone());
        async move {
          started.fetch_add(1, Ordering::SeqCst);
          gate.acquire().await.unwrap().forget();
          Ok(requests.into_iter().map(Ok).collect())
        }
      })
    };
    let calls: Vec<_> = (0..3)
      .map(|n| {
        let (batcher, run) = (batcher.clone(), run.clone());
        tokio::spawn(async move { batcher.call(n, move |r| run(r)).await })
      })
      .collect();
    // Two statements start at once; the third call waits in the queue for one of them.
    while started.load(Ordering::SeqCst) < 2 || batcher.state().queue.is_empty() {
      tokio::task::yield_now().await;
    }
    assert_eq!(started.load(Ordering::SeqCst), 2);
    gate.add_permits(3);
    let answers = futures_join(calls).await;
    assert_eq!(
      answers.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
      vec![0, 1, 2]
    );
    assert_eq!(batcher.state().in_flight, 0);
  }

  async fn futures_join(handles: Vec<tokio::task::JoinHandle<Result<i64>>>) -> Vec<Result<i64>> {
    let mut out = Vec::new();
    for handle in handles {
      out.push(handle.await.unwrap());
    }
    out
  }
}
