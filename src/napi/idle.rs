//! Gives the allocator's retained memory back once the addon goes idle. A burst of concurrent
//! calls allocates each call's future and buffers; glibc keeps what they free in its arenas
//! (1.5 MB after a burst of 64 calls, BENCHMARKS.md), so after `IDLE` with no call in flight
//! the runtime calls `malloc_trim(0)`: never on a call's path, at most once per idle period.
//! glibc on Linux only; elsewhere this counts calls and does nothing else.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How long no call must have run before the trim. A trim after a burst of 64 calls is ~60
/// `madvise` calls, 2 ms under strace (BENCHMARKS.md), on a worker, once per idle period.
const IDLE: Duration = Duration::from_millis(100);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Bumped by every call that starts: an idle period is one in which it does not move.
static STARTED: AtomicU64 = AtomicU64::new(0);
/// Whether a timer is waiting for an idle period to end.
static ARMED: AtomicBool = AtomicBool::new(false);

/// Held for the duration of one async call.
pub(crate) struct Busy(());

impl Busy {
  pub(crate) fn enter() -> Self {
    IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
    STARTED.fetch_add(1, Ordering::AcqRel);
    Busy(())
  }
}

impl Drop for Busy {
  fn drop(&mut self) {
    if IN_FLIGHT.fetch_sub(1, Ordering::AcqRel) == 1 {
      arm();
    }
  }
}

/// Starts the idle timer unless one is waiting; it trims once nothing started for `IDLE`.
fn arm() {
  if !trims() || ARMED.swap(true, Ordering::AcqRel) {
    return;
  }
  // A call dropped outside the runtime (its promise's environment torn down) has no timer to
  // start; the next call that ends on the runtime starts it.
  let Ok(runtime) = tokio::runtime::Handle::try_current() else {
    ARMED.store(false, Ordering::Release);
    return;
  };
  runtime.spawn(async {
    loop {
      let seen = STARTED.load(Ordering::Acquire);
      tokio::time::sleep(IDLE).await;
      if IN_FLIGHT.load(Ordering::Acquire) > 0 {
        break; // busy again: the call that ends this busy period arms again
      }
      if STARTED.load(Ordering::Acquire) == seen {
        trim();
        break;
      }
    }
    ARMED.store(false, Ordering::Release);
    // A busy period that ended while this timer was about to stop found it armed.
    if IN_FLIGHT.load(Ordering::Acquire) == 0
      && STARTED.load(Ordering::Acquire) != TRIMMED_AT.load(Ordering::Acquire)
    {
      arm();
    }
  });
}

/// `STARTED` when the last trim ran: no second trim for the same idle period.
static TRIMMED_AT: AtomicU64 = AtomicU64::new(0);

/// Only for A/B runs of bench/ (BENCHMARKS.md): `STORAGE_QUOTA_BENCH_IDLE_TRIM=0`.
fn trims() -> bool {
  static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
  *ON.get_or_init(|| std::env::var("STORAGE_QUOTA_BENCH_IDLE_TRIM").map_or(true, |v| v != "0"))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
  extern "C" {
    /// glibc: returns free memory at the top of each arena and free pages inside them to the
    /// kernel.
    fn malloc_trim(pad: usize) -> std::ffi::c_int;
  }
  TRIMMED_AT.store(STARTED.load(Ordering::Acquire), Ordering::Release);
  // SAFETY: takes no pointers; glibc locks each arena while it trims it.
  unsafe {
    malloc_trim(0);
  }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {
  TRIMMED_AT.store(STARTED.load(Ordering::Acquire), Ordering::Release);
}
