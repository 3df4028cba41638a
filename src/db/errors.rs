//! Driver errors as the library's errors, classified by SQLSTATE. A lost connection is also
//! reported to the pool here (see `pool::connection_lost`), which is why this mapping lives in
//! the database layer and not beside `QuotaError`.

use tokio_postgres::error::SqlState;

use crate::db::pool;
use crate::error::QuotaError;

/// Classifies a driver error by its SQLSTATE so callers can tell "retry later" from "fix your setup".
impl From<tokio_postgres::Error> for QuotaError {
  fn from(error: tokio_postgres::Error) -> Self {
    let Some(state) = error.code() else {
      use std::error::Error as _;
      // No SQLSTATE: either the connection failed (closed socket, server gone, timeout) or the
      // driver refused a value on our side, which is a bug of ours, not an outage.
      let io_failure = error
        .source()
        .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some());
      return if error.is_closed() || io_failure {
        pool::connection_lost();
        QuotaError::DbUnavailable(format!("lost the connection to PostgreSQL: {error}"))
      } else {
        QuotaError::Internal(format!("database client error: {error}"))
      };
    };
    if state.code().starts_with("57P") || state.code().starts_with("08") {
      // The server terminated this connection (shutdown, restart, pg_terminate_backend).
      pool::connection_lost();
    }
    let detail = error
      .as_db_error()
      .map(|db| db.message().to_string())
      .unwrap_or_else(|| error.to_string());
    if *state == SqlState::UNDEFINED_TABLE
      || *state == SqlState::UNDEFINED_COLUMN
      || *state == SqlState::UNDEFINED_FUNCTION
    {
      QuotaError::MigrationRequired(format!(
        "the storage-quota tables are missing or out of date; run migrate() (or `storage-quota migrate`) first ({detail})"
      ))
    } else if *state == SqlState::QUERY_CANCELED || *state == SqlState::LOCK_NOT_AVAILABLE {
      QuotaError::DbTimeout(format!("PostgreSQL cancelled the statement: {detail}"))
    } else if state.code().starts_with("08")
      || state.code().starts_with("57P")
      || state.code().starts_with("28")
      || *state == SqlState::INVALID_CATALOG_NAME
      || *state == SqlState::TOO_MANY_CONNECTIONS
    {
      QuotaError::DbUnavailable(format!("PostgreSQL is unavailable: {detail}"))
    } else {
      QuotaError::Db(format!("PostgreSQL error {}: {detail}", state.code()))
    }
  }
}
