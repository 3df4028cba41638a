//! The one error type of the library. Every variant has a stable string code that callers
//! match on; the numbers behind a refusal travel as fields, never only inside the message.

use serde_json::{json, Map, Value};

use crate::format::format_bytes;

/// Numbers that explain a quota refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaShortfall {
  pub requested_bytes: i64,
  pub used_bytes: i64,
  pub reserved_bytes: i64,
  pub limit_bytes: i64,
}

impl QuotaShortfall {
  pub fn remaining_bytes(&self) -> i64 {
    (self.limit_bytes - self.used_bytes - self.reserved_bytes).max(0)
  }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum QuotaError {
  #[error("{0}")]
  InvalidArgument(String),
  #[error("{}", quota_exceeded_message(.0))]
  QuotaExceeded(QuotaShortfall),
  #[error("{0}")]
  NotFound(String),
  #[error("{0}")]
  Forbidden(String),
  /// The request collides with an earlier one: `reason` says how (see [`ConflictReason`]).
  #[error("{message}")]
  Conflict {
    reason: ConflictReason,
    message: String,
  },
  /// A reservation's TTL passed before it was committed.
  #[error("{0}")]
  ReservationExpired(String),
  #[error("{0}")]
  MigrationRequired(String),
  #[error("{0}")]
  MigrationFailed(String),
  /// The database cannot be reached or refused the connection; `sql_state` when the server
  /// said why (`57P01` shutting down, `53300` too many connections, `28P01` bad password, …).
  #[error("{message}")]
  DbUnavailable {
    message: String,
    sql_state: Option<String>,
  },
  /// A connection did not become free in time (`sql_state` none), or PostgreSQL cancelled a
  /// statement (`57014` for `statement_timeout`, `55P03` for `lock_timeout`).
  #[error("{message}")]
  DbTimeout {
    message: String,
    sql_state: Option<String>,
  },
  /// A database error we do not classify further; `details` keeps what PostgreSQL said.
  #[error("{message}")]
  Db {
    message: String,
    details: Option<Box<DbDetails>>,
  },
  #[error("{0}")]
  Storage(String),
  /// A path on disk is not what we created (a planted symlink, a file where a directory should be).
  #[error("{0}")]
  UnsafePath(String),
  #[error("{0}")]
  ClientClosed(String),
  #[error("{0}")]
  Internal(String),
}

/// What PostgreSQL said about an error, kept as fields (`sqlState`, `constraint`, …) so callers
/// and logs read them without parsing a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbDetails {
  pub sql_state: Option<String>,
  pub constraint: Option<String>,
  pub table: Option<String>,
  pub column: Option<String>,
  pub detail: Option<String>,
  /// The driver's error and its sources, outermost first.
  pub causes: Vec<String>,
}

/// Why a call is a `CONFLICT`: a stable, machine-readable string next to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictReason {
  /// An idempotency key (upload, deletion, reservation, copy) was used before for a different
  /// request.
  KeyReused,
  /// The reservation was already committed, cancelled or expired.
  AlreadySettled,
  /// The target (a project to copy into) already holds something.
  TargetNotEmpty,
  /// A presigned upload would replace a file that already exists (and is counted): delete it
  /// first.
  FileExists,
  /// An upload to the project is in flight (a live reservation), or one started meanwhile.
  UploadInFlight,
  /// What the request refers to is not in the state it needs (e.g. an upload recorded for
  /// another project).
  Mismatch,
}

impl ConflictReason {
  pub fn as_str(self) -> &'static str {
    match self {
      ConflictReason::KeyReused => "KEY_REUSED",
      ConflictReason::AlreadySettled => "ALREADY_SETTLED",
      ConflictReason::TargetNotEmpty => "TARGET_NOT_EMPTY",
      ConflictReason::Mismatch => "MISMATCH",
      ConflictReason::UploadInFlight => "UPLOAD_IN_FLIGHT",
      ConflictReason::FileExists => "FILE_EXISTS",
    }
  }
}

pub type Result<T, E = QuotaError> = std::result::Result<T, E>;

fn quota_exceeded_message(s: &QuotaShortfall) -> String {
  format!(
    "Storage quota exceeded: {} more would not fit; only {} of your {} is free",
    format_bytes(s.requested_bytes),
    format_bytes(s.remaining_bytes()),
    format_bytes(s.limit_bytes)
  )
}

impl QuotaError {
  /// The stable code callers match on. Never change a published one.
  pub fn code(&self) -> &'static str {
    match self {
      QuotaError::InvalidArgument(_) => "INVALID_ARGUMENT",
      QuotaError::QuotaExceeded(_) => "QUOTA_EXCEEDED",
      QuotaError::NotFound(_) => "NOT_FOUND",
      QuotaError::Forbidden(_) => "FORBIDDEN",
      QuotaError::Conflict { .. } => "CONFLICT",
      QuotaError::ReservationExpired(_) => "RESERVATION_EXPIRED",
      QuotaError::MigrationRequired(_) => "MIGRATION_REQUIRED",
      QuotaError::MigrationFailed(_) => "MIGRATION_FAILED",
      QuotaError::DbUnavailable { .. } => "DB_UNAVAILABLE",
      QuotaError::DbTimeout { .. } => "DB_TIMEOUT",
      QuotaError::Db { .. } => "DB_ERROR",
      QuotaError::Storage(_) => "STORAGE_ERROR",
      QuotaError::UnsafePath(_) => "UNSAFE_PATH",
      QuotaError::ClientClosed(_) => "CLIENT_CLOSED",
      QuotaError::Internal(_) => "INTERNAL",
    }
  }

  pub fn conflict(reason: ConflictReason, message: impl Into<String>) -> Self {
    QuotaError::Conflict {
      reason,
      message: message.into(),
    }
  }

  /// A `DB_ERROR` of our own making (no driver error behind it).
  pub fn db(message: impl Into<String>) -> Self {
    QuotaError::Db {
      message: message.into(),
      details: None,
    }
  }

  /// `DB_UNAVAILABLE` with no word from the server (a network failure, a bad URL, …).
  pub fn unavailable(message: impl Into<String>) -> Self {
    QuotaError::DbUnavailable {
      message: message.into(),
      sql_state: None,
    }
  }

  /// `DB_TIMEOUT` of our own (no statement was cancelled).
  pub fn timeout(message: impl Into<String>) -> Self {
    QuotaError::DbTimeout {
      message: message.into(),
      sql_state: None,
    }
  }

  pub fn invalid(message: impl Into<String>) -> Self {
    QuotaError::InvalidArgument(message.into())
  }

  /// The error as one JSON object: `code`, `message` and the numbers behind it. The binding
  /// sets these as the properties of the JS error it builds (src/napi/error.rs).
  pub fn to_payload(&self) -> Value {
    let mut object = Map::new();
    object.insert("code".into(), json!(self.code()));
    object.insert("message".into(), json!(self.to_string()));
    if let QuotaError::Conflict { reason, .. } = self {
      object.insert("reason".into(), json!(reason.as_str()));
    }
    if let QuotaError::QuotaExceeded(s) = self {
      object.insert("requestedBytes".into(), json!(s.requested_bytes));
      object.insert("usedBytes".into(), json!(s.used_bytes));
      object.insert("reservedBytes".into(), json!(s.reserved_bytes));
      object.insert("limitBytes".into(), json!(s.limit_bytes));
      object.insert("remainingBytes".into(), json!(s.remaining_bytes()));
    }
    if let QuotaError::DbUnavailable {
      sql_state: Some(state),
      ..
    }
    | QuotaError::DbTimeout {
      sql_state: Some(state),
      ..
    } = self
    {
      object.insert("sqlState".into(), json!(state));
    }
    if let QuotaError::Db {
      details: Some(d), ..
    } = self
    {
      let fields = [
        ("sqlState", &d.sql_state),
        ("constraint", &d.constraint),
        ("table", &d.table),
        ("column", &d.column),
        ("detail", &d.detail),
      ];
      for (name, value) in fields {
        if let Some(value) = value {
          object.insert(name.into(), json!(value));
        }
      }
      if !d.causes.is_empty() {
        object.insert("causes".into(), json!(d.causes));
      }
    }
    Value::Object(object)
  }
}

impl From<std::io::Error> for QuotaError {
  fn from(error: std::io::Error) -> Self {
    QuotaError::Storage(format!("storage error: {error}"))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn quota_exceeded_reads_like_a_sentence() {
    let error = QuotaError::QuotaExceeded(QuotaShortfall {
      requested_bytes: 13_107_200,
      used_bytes: 1_073_741_824 - 3_250_586,
      reserved_bytes: 0,
      limit_bytes: 1_073_741_824,
    });
    assert_eq!(
      error.to_string(),
      "Storage quota exceeded: 12.5 MB more would not fit; only 3.1 MB of your 1 GB is free"
    );
    let payload = error.to_payload();
    assert_eq!(payload["code"], "QUOTA_EXCEEDED");
    assert_eq!(payload["remainingBytes"], 3_250_586);
  }
}
