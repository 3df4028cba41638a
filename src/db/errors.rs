//! Driver errors as the library's errors, classified by SQLSTATE. A lost connection is also
//! reported to the pool here (see `pool::connection_lost`), which is why this mapping lives in
//! the database layer and not beside `QuotaError`.

use tokio_postgres::error::SqlState;

use crate::db::pool;
use crate::error::{DbDetails, QuotaError, QuotaShortfall};

/// The guard's refusal (SQLSTATE SQ001, migrations 0001–0003): its numbers travel in DETAIL as
/// JSON since 0003; before that they are unknown (zeros) but the code is still QUOTA_EXCEEDED.
fn guard_refusal(db: Option<&tokio_postgres::error::DbError>) -> QuotaError {
  let numbers: serde_json::Value = db
    .and_then(|db| db.detail())
    .and_then(|detail| serde_json::from_str(detail).ok())
    .unwrap_or_default();
  let field = |name: &str| {
    numbers
      .get(name)
      .and_then(serde_json::Value::as_i64)
      .unwrap_or(0)
  };
  QuotaError::QuotaExceeded(QuotaShortfall {
    requested_bytes: field("requestedBytes"),
    used_bytes: field("usedBytes"),
    reserved_bytes: field("reservedBytes"),
    limit_bytes: field("limitBytes"),
  })
}

fn details(error: &tokio_postgres::Error) -> DbDetails {
  use std::error::Error as _;
  let db = error.as_db_error();
  let mut causes = vec![error.to_string()];
  let mut source = error.source();
  while let Some(cause) = source {
    causes.push(cause.to_string());
    source = cause.source();
  }
  DbDetails {
    sql_state: error.code().map(|state| state.code().to_owned()),
    constraint: db.and_then(|db| db.constraint()).map(str::to_owned),
    table: db.and_then(|db| db.table()).map(str::to_owned),
    column: db.and_then(|db| db.column()).map(str::to_owned),
    detail: db.and_then(|db| db.detail()).map(str::to_owned),
    causes,
  }
}

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
        QuotaError::unavailable(format!("lost the connection to PostgreSQL: {error}"))
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
    if state.code() == "SQ001" {
      return guard_refusal(error.as_db_error());
    }
    if *state == SqlState::UNDEFINED_TABLE
      || *state == SqlState::UNDEFINED_COLUMN
      || *state == SqlState::UNDEFINED_FUNCTION
    {
      QuotaError::MigrationRequired(format!(
        "the storage-quota tables are missing or out of date; run migrate() (or `storage-quota migrate`) first ({detail})"
      ))
    } else if *state == SqlState::QUERY_CANCELED || *state == SqlState::LOCK_NOT_AVAILABLE {
      QuotaError::DbTimeout {
        message: format!("PostgreSQL cancelled the statement: {detail}"),
        sql_state: Some(state.code().to_owned()),
      }
    } else if state.code().starts_with("08")
      || state.code().starts_with("57P")
      || state.code().starts_with("28")
      || *state == SqlState::INVALID_CATALOG_NAME
      || *state == SqlState::TOO_MANY_CONNECTIONS
    {
      QuotaError::DbUnavailable {
        message: format!("PostgreSQL is unavailable: {detail}"),
        sql_state: Some(state.code().to_owned()),
      }
    } else {
      QuotaError::Db {
        message: format!("PostgreSQL error {}: {detail}", state.code()),
        details: Some(Box::new(details(&error))),
      }
    }
  }
}
