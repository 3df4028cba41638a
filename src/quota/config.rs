//! Client configuration: validated once, with the database password kept out of every
//! message and log line.

use std::path::PathBuf;
use std::time::Duration;

use crate::db::config::ConnectionConfig;
use crate::db::project_source::ProjectSource;
use crate::error::{QuotaError, Result};
use crate::ids::{parse_bytes, parse_whole, MAX_BYTES};
use crate::rollout::{Mode, Rollout};
use crate::storage::{RawS3Options, StorageConfig};

pub const DEFAULT_QUOTA_BYTES: i64 = 1_073_741_824;
pub const DEFAULT_POOL_SIZE: u32 = 10;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 5_000;
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u32 = 10_000;
/// An idle connection is closed after 30 s: a container keeps the ones it uses, a serverless
/// function that goes quiet gives its connections back (to the pooler, or to PostgreSQL).
pub const DEFAULT_IDLE_TIMEOUT_MS: u32 = 30_000;
/// Connections are renewed after 30 minutes (a failover, a pooler's `server_lifetime`, a DNS
/// change are picked up without a restart).
pub const DEFAULT_MAX_LIFETIME_MS: u32 = 30 * 60_000;
pub const DEFAULT_APPLICATION_NAME: &str = "storage-quota";
pub const DEFAULT_RESERVATION_TTL_MS: i64 = 60 * 60 * 1000;
/// Longest reservation: a week. Longer holds are leaks, not uploads.
pub const MAX_RESERVATION_TTL_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Largest timeout accepted, in ms: 2^31 − 1, as the JS schema (and `setTimeout`) allow.
pub const MAX_TIMEOUT_MS: u32 = 2_147_483_647;

/// Options as they arrive from JS, every one optional.
#[derive(Debug, Default, Clone)]
pub struct RawOptions {
  pub database_url: Option<String>,
  pub storage_root: Option<String>,
  pub default_quota_bytes: Option<f64>,
  /// Numbers arrive as JS numbers and are checked here: napi's own `u32` conversion would
  /// wrap -1 to 4294967295 and truncate 1.5 to 1 without a word.
  pub pool_size: Option<f64>,
  pub min_connections: Option<f64>,
  pub idle_timeout_ms: Option<f64>,
  pub max_lifetime_ms: Option<f64>,
  pub statement_cache: Option<bool>,
  pub connect_timeout_ms: Option<f64>,
  pub statement_timeout_ms: Option<f64>,
  pub application_name: Option<String>,
  pub mode: Option<String>,
  pub rollout_percent: Option<u32>,
  pub reservation_ttl_ms: Option<f64>,
  pub history_retention_days: Option<f64>,
  pub storage: Option<RawStorage>,
  pub projects: Option<RawProjects>,
}

/// The `projects` option as it arrives from JS: `standalone`, or the app's table and columns.
#[derive(Debug, Default, Clone)]
pub struct RawProjects {
  pub standalone: bool,
  pub table: Option<String>,
  pub id: Option<String>,
  pub owner: Option<String>,
}

/// The `storage` option as it arrives from JS.
#[derive(Debug, Default, Clone)]
pub struct RawStorage {
  pub backend: String,
  pub s3: RawS3Options,
}

#[derive(Debug, Clone)]
pub struct Config {
  pub storage_root: PathBuf,
  /// Where project paths point: `Local { root: storage_root }` unless `storage` says otherwise.
  pub storage: StorageConfig,
  pub default_quota_bytes: i64,
  /// How to reach PostgreSQL.
  pub db: ConnectionConfig,
  pub rollout: Rollout,
  pub reservation_ttl_ms: i64,
  /// Where the app's projects are (see `db::project_source`).
  pub project_source: ProjectSource,
  /// How long settled reservations and ledger entries are kept (`pruneHistory`), in days.
  pub history_retention_days: i64,
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
    let min_connections = match raw.min_connections {
      Some(value) => parse_whole("minConnections", value, 0, pool_size)?,
      None => 0,
    };
    // 0 means "never": no idle timeout, no lifetime limit.
    let optional_ms = |name: &str, value: Option<f64>, default: u32| -> Result<Option<Duration>> {
      let ms = match value {
        Some(value) => parse_whole(name, value, 0, MAX_TIMEOUT_MS)?,
        None => default,
      };
      Ok((ms > 0).then(|| Duration::from_millis(ms.into())))
    };
    let idle_timeout = optional_ms(
      "idleTimeoutMs",
      raw.idle_timeout_ms,
      DEFAULT_IDLE_TIMEOUT_MS,
    )?;
    let max_lifetime = optional_ms(
      "maxLifetimeMs",
      raw.max_lifetime_ms,
      DEFAULT_MAX_LIFETIME_MS,
    )?;
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
    let history_retention_days = match raw.history_retention_days {
      Some(value) => parse_whole("historyRetentionDays", value, 1, 36_500)?.into(),
      None => crate::quota::retention::DEFAULT_RETENTION_DAYS,
    };
    let storage = storage_config(raw.storage, &storage_root)?;
    let project_source = match raw.projects {
      None => ProjectSource::Default,
      Some(p) if p.standalone && p.table.is_none() && p.id.is_none() && p.owner.is_none() => {
        ProjectSource::Standalone
      }
      Some(RawProjects {
        standalone: false,
        table: Some(table),
        id,
        owner,
      }) => ProjectSource::table(&table, id.as_deref(), owner.as_deref())?,
      Some(_) => {
        return Err(QuotaError::invalid(
          "projects must be 'standalone' or { table, id?, owner? }",
        ))
      }
    };
    Ok(Config {
      rollout: Rollout { mode, percent },
      reservation_ttl_ms,
      project_source,
      history_retention_days,
      storage_root,
      storage,
      default_quota_bytes,
      db: ConnectionConfig {
        database_url: raw.database_url.filter(|url| !url.trim().is_empty()),
        pool_size,
        min_connections,
        idle_timeout,
        max_lifetime,
        connect_timeout: Duration::from_millis(connect_timeout_ms.into()),
        statement_timeout: Duration::from_millis(statement_timeout_ms.into()),
        application_name,
        statement_cache: raw.statement_cache.unwrap_or(true),
      },
    })
  }
}

/// The backend from the `storage` option: `local` (the default) or `s3` with a bucket.
fn storage_config(raw: Option<RawStorage>, root: &std::path::Path) -> Result<StorageConfig> {
  match raw {
    None => Ok(StorageConfig::Local { root: root.into() }),
    Some(raw) => StorageConfig::parse(raw.s3, &raw.backend, root),
  }
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
    let message = config.db.postgres_config().unwrap_err().to_string();
    assert!(!message.contains("s3cret"), "{message}");
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
      pool_size: Some(4.0),
      min_connections: Some(5.0),
      ..Default::default()
    }));
    assert!(bad(RawOptions {
      idle_timeout_ms: Some(-1.0),
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
    let storage = |backend: &str, bucket: Option<&str>| RawOptions {
      storage: Some(RawStorage {
        backend: backend.into(),
        s3: RawS3Options {
          bucket: bucket.map(Into::into),
          ..Default::default()
        },
      }),
      ..Default::default()
    };
    assert!(bad(storage("s3", None)));
    assert!(bad(storage("gcs", Some("bucket"))));
    assert!(bad(storage("local", Some("bucket"))));
    assert!(bad(storage("s3", Some("Not_A_Bucket"))));
    assert!(!bad(storage("s3", Some("my-bucket"))));
  }
}
