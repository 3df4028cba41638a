//! Client configuration: validated once, with the database password kept out of every
//! message and log line.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{QuotaError, Result};
use crate::ids::{parse_bytes, MAX_BYTES};
use crate::rollout::{Mode, Rollout};
use crate::tls::{settings_from_url, TlsSettings};

pub const DEFAULT_QUOTA_BYTES: i64 = 1_073_741_824;
pub const DEFAULT_POOL_SIZE: u32 = 10;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 5_000;
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u32 = 10_000;
pub const DEFAULT_APPLICATION_NAME: &str = "storage-quota";
pub const DEFAULT_RESERVATION_TTL_MS: i64 = 60 * 60 * 1000;
/// Longest reservation: a week. Longer holds are leaks, not uploads.
pub const MAX_RESERVATION_TTL_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Largest timeout accepted, in ms: 2^31 − 1, as the JS schema (and `setTimeout`) allow.
pub const MAX_TIMEOUT_MS: u32 = 2_147_483_647;

/// A whole number from `min` to `max`; anything else (NaN, 1.5, -1, 1e12) is INVALID_ARGUMENT.
pub fn parse_whole(name: &str, value: f64, min: u32, max: u32) -> Result<u32> {
  if value.is_finite() && value.fract() == 0.0 && value >= min.into() && value <= max.into() {
    Ok(value as u32)
  } else {
    Err(QuotaError::invalid(format!(
      "{name} must be a whole number from {min} to {max}, got {value}"
    )))
  }
}

/// Options as they arrive from JS, every one optional.
#[derive(Debug, Default, Clone)]
pub struct RawOptions {
  pub database_url: Option<String>,
  pub storage_root: Option<String>,
  pub default_quota_bytes: Option<f64>,
  /// Numbers arrive as JS numbers and are checked here: napi's own `u32` conversion would
  /// wrap -1 to 4294967295 and truncate 1.5 to 1 without a word.
  pub pool_size: Option<f64>,
  pub connect_timeout_ms: Option<f64>,
  pub statement_timeout_ms: Option<f64>,
  pub application_name: Option<String>,
  pub mode: Option<String>,
  pub rollout_percent: Option<u32>,
  pub reservation_ttl_ms: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Config {
  /// `None` when no URL was given; calls then fail with `DB_UNAVAILABLE` instead of the
  /// constructor throwing, so importing a module that creates a client never breaks a build.
  pub database_url: Option<String>,
  pub storage_root: PathBuf,
  pub default_quota_bytes: i64,
  pub pool_size: u32,
  pub connect_timeout: Duration,
  pub statement_timeout: Duration,
  pub application_name: String,
  pub rollout: Rollout,
  pub reservation_ttl_ms: i64,
}

/// A reservation TTL in ms: whole, from 1 s to a week.
pub fn parse_ttl_ms(value: f64) -> Result<i64> {
  if !value.is_finite()
    || value.fract() != 0.0
    || !(1000.0..=MAX_RESERVATION_TTL_MS as f64).contains(&value)
  {
    return Err(QuotaError::invalid(format!(
      "ttlMs must be a whole number of milliseconds from 1000 to {MAX_RESERVATION_TTL_MS}, got {value}"
    )));
  }
  Ok(value as i64)
}

impl Config {
  pub fn from_options(raw: RawOptions) -> Result<Self> {
    let default_quota_bytes = match raw.default_quota_bytes {
      Some(value) => parse_bytes("defaultQuotaBytes", value)?,
      None => DEFAULT_QUOTA_BYTES,
    };
    debug_assert!(default_quota_bytes <= MAX_BYTES);
    let pool_size = match raw.pool_size {
      Some(value) => parse_whole("poolSize", value, 1, 1000)?,
      None => DEFAULT_POOL_SIZE,
    };
    let connect_timeout_ms = match raw.connect_timeout_ms {
      Some(value) => parse_whole("connectTimeoutMs", value, 1, MAX_TIMEOUT_MS)?,
      None => DEFAULT_CONNECT_TIMEOUT_MS,
    };
    let statement_timeout_ms = match raw.statement_timeout_ms {
      Some(value) => parse_whole("statementTimeoutMs", value, 0, MAX_TIMEOUT_MS)?,
      None => DEFAULT_STATEMENT_TIMEOUT_MS,
    };
    let application_name = raw
      .application_name
      .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_owned());
    if application_name.len() > 63
      || !application_name
        .bytes()
        .all(|b| b.is_ascii_graphic() || b == b' ')
    {
      return Err(QuotaError::invalid(
        "applicationName must be at most 63 printable ASCII characters",
      ));
    }
    let storage_root = raw.storage_root.unwrap_or_else(|| "./storage".to_owned());
    if storage_root.is_empty() || storage_root.contains('\0') {
      return Err(QuotaError::invalid("storageRoot must be a non-empty path"));
    }
    let storage_root = std::path::absolute(&storage_root)
      .map_err(|e| QuotaError::invalid(format!("storageRoot cannot be resolved: {e}")))?;
    let mode = match raw.mode.as_deref() {
      Some(mode) => Mode::parse(mode)?,
      None => Mode::Enforce,
    };
    let percent = raw.rollout_percent.unwrap_or(100);
    if percent > 100 {
      return Err(QuotaError::invalid("rolloutPercent must be from 0 to 100"));
    }
    let reservation_ttl_ms = match raw.reservation_ttl_ms {
      Some(value) => parse_ttl_ms(value)?,
      None => DEFAULT_RESERVATION_TTL_MS,
    };
    Ok(Config {
      rollout: Rollout { mode, percent },
      reservation_ttl_ms,
      database_url: raw.database_url.filter(|url| !url.trim().is_empty()),
      storage_root,
      default_quota_bytes,
      pool_size,
      connect_timeout: Duration::from_millis(connect_timeout_ms.into()),
      statement_timeout: Duration::from_millis(statement_timeout_ms.into()),
      application_name,
    })
  }

  /// The driver configuration. Parse errors are reported without echoing the URL, which may
  /// hold a password.
  pub fn postgres_config(&self) -> Result<(tokio_postgres::Config, TlsSettings)> {
    let url = self.database_url.as_deref().ok_or_else(|| {
      QuotaError::DbUnavailable(
        "no database configured: pass databaseUrl to createClient() or set DATABASE_URL".into(),
      )
    })?;
    let tls = settings_from_url(url)?;
    let mut config: tokio_postgres::Config = tls.url.parse().map_err(|_| {
      QuotaError::DbUnavailable(
        "the database URL is not a valid PostgreSQL connection string (expected postgres://user:password@host:port/database)".into(),
      )
    })?;
    config.connect_timeout(self.connect_timeout);
    config.application_name(&self.application_name);
    // Every statement of ours is short; a stuck one must not hold a pooled connection forever.
    let timeout_ms = self.statement_timeout.as_millis();
    config.options(format!("-c statement_timeout={timeout_ms}"));
    // Plain TCP unless the string asks for TLS (tokio-postgres alone would default to prefer).
    if url.contains("://") || !url.contains("sslmode") {
      config.ssl_mode(tls.ssl_mode());
    }
    Ok((config, tls))
  }
}

/// `host:port/database` of a driver config, for messages. Never includes user or password.
pub fn describe_target(config: &tokio_postgres::Config) -> String {
  let host = config
    .get_hosts()
    .first()
    .map(|host| match host {
      tokio_postgres::config::Host::Tcp(name) => name.clone(),
      #[cfg(unix)]
      tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    })
    .unwrap_or_else(|| "localhost".into());
  let port = config.get_ports().first().copied().unwrap_or(5432);
  let database = config.get_dbname().unwrap_or("(default)");
  format!("{host}:{port}/{database}")
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn bad_url_never_echoes_the_password() {
    let config = Config::from_options(RawOptions {
      database_url: Some("postgres://me:s3cret@[bad/db?x=".into()),
      ..Default::default()
    })
    .unwrap();
    let message = config.postgres_config().unwrap_err().to_string();
    assert!(!message.contains("s3cret"), "{message}");
  }

  #[test]
  fn target_description_has_no_credentials() {
    let config: tokio_postgres::Config =
      "postgres://me:s3cret@db.example:6543/app".parse().unwrap();
    assert_eq!(describe_target(&config), "db.example:6543/app");
  }

  #[test]
  fn rejects_out_of_range_options() {
    let bad = |raw: RawOptions| Config::from_options(raw).is_err();
    assert!(bad(RawOptions {
      pool_size: Some(0.0),
      ..Default::default()
    }));
    assert!(bad(RawOptions {
      default_quota_bytes: Some(-1.0),
      ..Default::default()
    }));
    assert!(bad(RawOptions {
      connect_timeout_ms: Some(0.0),
      ..Default::default()
    }));
    // napi would have turned these into 4294967295, 1 and 0.
    assert!(bad(RawOptions {
      connect_timeout_ms: Some(-1.0),
      ..Default::default()
    }));
    assert!(bad(RawOptions {
      statement_timeout_ms: Some(1.5),
      ..Default::default()
    }));
    assert!(bad(RawOptions {
      pool_size: Some(f64::NAN),
      ..Default::default()
    }));
    assert!(bad(RawOptions {
      storage_root: Some(String::new()),
      ..Default::default()
    }));
  }
}
