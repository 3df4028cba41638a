#![deny(clippy::all)]
//! storage-quota: per-user storage quotas and safe per-project storage paths, enforced in
//! PostgreSQL, for Node.js.
//!
//! Layers, arrows pointing down only (`tests/layers.rs` checks it):
//! - `napi`: the N-API binding; converts arguments and results and delegates;
//! - `quota`: the domain (charges, reservations, deletions, limits, reconcile, project records);
//! - `db` and `storage`: PostgreSQL (pool, TLS, migrations) and where files live (local disk,
//!   object store), neither importing the other;
//! - `error`, `ids`, `format`, `rollout`, `log`: pure helpers that import nothing above them.

pub mod db;
pub mod error;
pub mod format;
pub mod ids;
mod log;
mod napi;
pub mod quota;
pub mod rollout;
pub mod storage;
