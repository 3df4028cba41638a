#![deny(clippy::all)]
//! storage-quota: per-user storage quotas and safe per-project storage paths, enforced in
//! PostgreSQL, for Node.js. The N-API surface is thin: `napi_types` holds the argument and
//! result shapes (their `///` docs become the generated typings), `napi_client` the exported
//! class and the one place errors become JS errors. The work happens in the plain modules.

pub mod client;
pub mod config;
pub mod deletions;
pub mod disk;
pub mod error;
pub mod format;
pub mod ids;
pub mod limits;
mod log;
pub mod migrate;
mod napi_client;
mod napi_types;
pub mod paths;
pub mod pool;
pub mod projects;
pub mod quota;
pub mod reconcile;
pub mod reservations;
pub mod rollout;
mod tls;
