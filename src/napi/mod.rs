//! The N-API binding, and nothing else: `types` holds the argument and result shapes (their
//! `///` docs become the generated typings), `client` and `storage` the exported class's
//! methods, `error` the one conversion of a library error into a JS error, `idle` the allocator
//! trim once no call runs. Each method converts its arguments, delegates to
//! `quota::client::Client` and converts the answer back.

mod client;
mod convert;
mod error;
mod idle;
mod packed;
mod runtime;
mod storage;
mod together;
mod types;
