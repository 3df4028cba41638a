//! The batcher's unit tests: batching, fallback per call, in-flight limits.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Doubles each number; fails any request of 13 on its own, and any batch holding one.
async fn doubled(requests: Vec<i64>, batches: Arc<Mutex<Vec<usize>>>) -> Result<Vec<Result<i64>>> {
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
        Err::<Vec<Result<i64>>, _>(QuotaError::unavailable("connection refused"))
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
          [2] => Err(QuotaError::timeout(
            "canceling statement due to statement timeout",
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
