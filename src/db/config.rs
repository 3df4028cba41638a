//! How to reach PostgreSQL: the connection string, pool size and timeouts, validated once by
//! the client's configuration, and turned into a driver configuration here. The password never
//! appears in a message or log line.

use std::time::Duration;

use crate::db::tls::{settings_from_url, TlsSettings};
use crate::error::{QuotaError, Result};

#[derive(Debug, Clone)]
pub struct ConnectionConfig {
  /// `None` when no URL was given; calls then fail with `DB_UNAVAILABLE` instead of the
  /// constructor throwing, so importing a module that creates a client never breaks a build.
  pub database_url: Option<String>,
  pub pool_size: u32,
  /// Connections kept open even when idle (0: none, the pool empties when idle).
  pub min_connections: u32,
  /// An idle connection is closed after this long (`None`: kept).
  pub idle_timeout: Option<Duration>,
  /// A connection is closed after this long, idle or not, once returned (`None`: kept).
  pub max_lifetime: Option<Duration>,
  pub connect_timeout: Duration,
  pub statement_timeout: Duration,
  pub application_name: String,
  /// `false`: pooler mode even without `?pgbouncer=true` in the URL (see `session`).
  pub statement_cache: bool,
}

/// What `postgres_config` makes of a `ConnectionConfig` (its `Debug` hides the password).
#[derive(Debug)]
pub struct DriverSettings {
  pub config: tokio_postgres::Config,
  pub tls: TlsSettings,
  /// Behind a transaction pooler: unnamed statements, no startup options (see `session`).
  pub pooler: bool,
}

impl ConnectionConfig {
  /// The driver configuration. Parse errors are reported without echoing the URL, which may
  /// hold a password.
  pub fn postgres_config(&self) -> Result<DriverSettings> {
    let url = self.database_url.as_deref().ok_or_else(|| {
      QuotaError::unavailable(
        "no database configured: set DATABASE_URL or POSTGRES_URL (the CLI also reads them from .env and .env.local, or takes --database-url URL), or pass databaseUrl to createClient()",
      )
    })?;
    let (url, pgbouncer) = take_pgbouncer_flag(url)?;
    let url = url.as_str();
    let pooler = pgbouncer || !self.statement_cache;
    let tls = settings_from_url(url)?;
    let mut config: tokio_postgres::Config = tls.url.parse().map_err(|_| {
      QuotaError::unavailable(
        "the database URL is not a valid PostgreSQL connection string (expected postgres://user:password@host:port/database)",
      )
    })?;
    config.connect_timeout(self.connect_timeout);
    config.application_name(&self.application_name);
    // Every statement of ours is short; a stuck one must not hold a pooled connection forever.
    // Poolers refuse startup options (PgBouncer: "unsupported startup parameter: options");
    // there each transaction sets it (`session`).
    let timeout_ms = self.statement_timeout.as_millis();
    if !pooler {
      config.options(format!("-c statement_timeout={timeout_ms}"));
    }
    // Plain TCP unless the string asks for TLS (tokio-postgres alone would default to prefer).
    if url.contains("://") || !url.contains("sslmode") {
      config.ssl_mode(tls.ssl_mode());
    }
    Ok(DriverSettings {
      config,
      tls,
      pooler,
    })
  }
}

/// Reads and removes `pgbouncer=true|false` from a URL's query (Prisma's name for "behind a
/// transaction pooler"; tokio-postgres would refuse the unknown parameter).
fn take_pgbouncer_flag(url: &str) -> Result<(String, bool)> {
  let Some((base, query)) = url.split_once('?') else {
    return Ok((url.to_owned(), false));
  };
  let mut flag = false;
  let mut kept = Vec::new();
  for pair in query.split('&').filter(|p| !p.is_empty()) {
    match pair.split_once('=').unwrap_or((pair, "")) {
      ("pgbouncer", "true" | "1") => flag = true,
      ("pgbouncer", "false" | "0") => flag = false,
      ("pgbouncer", _) => {
        return Err(QuotaError::unavailable(
          "the pgbouncer URL parameter must be true or false",
        ))
      }
      _ => kept.push(pair),
    }
  }
  let url = if kept.is_empty() {
    base.to_owned()
  } else {
    format!("{base}?{}", kept.join("&"))
  };
  Ok((url, flag))
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
  fn target_description_has_no_credentials() {
    let config: tokio_postgres::Config =
      "postgres://me:s3cret@db.example:6543/app".parse().unwrap();
    assert_eq!(describe_target(&config), "db.example:6543/app");
  }

  #[test]
  fn pgbouncer_flag_is_read_and_removed() {
    let (url, flag) =
      take_pgbouncer_flag("postgres://u@db:6543/app?sslmode=require&pgbouncer=true").unwrap();
    assert!(flag);
    assert_eq!(url, "postgres://u@db:6543/app?sslmode=require");
    assert!(
      !take_pgbouncer_flag("postgres://u@db/app?pgbouncer=false")
        .unwrap()
        .1
    );
    assert!(!take_pgbouncer_flag("postgres://u@db/app").unwrap().1);
    assert!(take_pgbouncer_flag("postgres://u@db/app?pgbouncer=maybe").is_err());
  }
}
