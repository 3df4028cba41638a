//! The tokio runtime napi-rs runs our `async fn`s on, sized for this addon: the work is I/O
//! (PostgreSQL round trips, a few file operations on the blocking pool) driven by one JS
//! thread, so a worker per CPU core (napi-rs's default) buys nothing on a many-core server
//! and costs a thread stack and a glibc malloc arena each.
//!
//! One worker: with two, a call's task and the socket it waits on were often woken on
//! different threads, one more hand-over per call. Measured side by side (BENCHMARKS.md, "One
//! worker, one batch in flight"): `checkQuota` at 1 caller p50 0.131 ms against 0.182 ms with
//! two workers (`pg` 0.123 ms), and 21-34 % more reads per second at 16 and 64 callers.

use napi::bindgen_prelude::create_custom_tokio_runtime;

/// Workers of the runtime: at most this many, fewer on a machine with fewer cores.
const MAX_WORKERS: usize = 1;

fn workers() -> usize {
  // Only for A/B runs of bench/ (BENCHMARKS.md): `STORAGE_QUOTA_BENCH_WORKERS=N`.
  if let Some(n) = std::env::var("STORAGE_QUOTA_BENCH_WORKERS")
    .ok()
    .and_then(|v| v.parse::<usize>().ok())
    .filter(|n| *n > 0)
  {
    return n;
  }
  std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS))
}

#[napi_derive::module_init]
fn init() {
  // Building can fail only when the OS refuses threads; napi-rs then builds its default one.
  if let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
    .worker_threads(workers())
    .thread_name("storage-quota")
    .enable_all()
    .build()
  {
    create_custom_tokio_runtime(runtime);
  }
}
