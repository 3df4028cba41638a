//! The quota domain: usage and charges, reservations, deletions, limits, reconciliation,
//! coalescing, project records, and the `Client` that ties them to a pool and a storage
//! backend. Plain Rust; SQL sits next to the function that sends it, and every database
//! function takes a connection so tests and the client run the same code.

pub mod app_table;
pub mod backfill;
pub mod batch;
pub mod client;
pub mod coalesce;
pub mod coalesce_cancel;
pub mod coalesce_commit;
pub mod coalesce_deletion;
pub mod coalesce_reserve;
pub mod config;
pub mod copies;
pub mod deletions;
pub mod limits;
pub mod modes;
pub mod objects;
pub mod owner;
pub mod projects;
pub mod reconcile;
pub mod reservations;
pub mod retention;
pub mod seed;
pub mod settle;
pub mod usage;
