//! The database layer: connection settings, TLS, the pool, driver-error classification and the
//! migrations runner. Knows nothing of quotas; the domain (`crate::quota`) sends its SQL through it.

pub mod config;
mod errors;
pub mod migrate;
pub mod online;
pub mod pipeline;
pub mod pool;
pub mod project_source;
pub mod session;
pub mod tls;
