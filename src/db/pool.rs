//! The addon's own connection pool: bb8 over tokio-postgres, tuned for latency.
//!
//! - no `test_on_check_out` round trip: a broken connection shows itself on use and is dropped;
//! - LIFO checkout, so the warm connection just returned is the one reused;
//! - statements prepared once per connection and kept with it;
//! - a failed connection attempt fails the calls waiting for one at once with `DB_UNAVAILABLE`
//!   (bb8 alone would keep them waiting until the timeout and then say only "timed out").

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bb8::{ManageConnection, PooledConnection, QueueStrategy, RunError};
use tokio::sync::Notify;
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::db::config::{describe_target, ConnectionConfig};
pub use crate::db::session::PgConnection;
use crate::db::session::Sending;
use crate::error::{QuotaError, Result};
use crate::log;

/// Bumped whenever a call sees its connection cut by the server or the network. The cut
/// connection's task may not have noticed the closed socket yet when the next call checks it
/// out (`is_closed()` still false), so connections last checked before a cut get one round
/// trip before reuse: without it an immediate retry failed 4 times in 20.
static LOST_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Called by the error mapping when a statement failed because the connection was lost.
pub fn connection_lost() {
  LOST_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// Shared between the manager and its error sink: the last connection failure (a
/// `DB_UNAVAILABLE`, with the server's SQLSTATE if it sent one) with when its attempt began, and
/// a signal for the calls waiting on a connection.
#[derive(Debug, Default)]
struct ConnectFailures {
  last: Mutex<Option<(QuotaError, Instant)>>,
  notify: Notify,
}

impl ConnectFailures {
  /// Records a failed attempt and gives its error back.
  fn record(&self, failure: QuotaError, began: Instant) -> QuotaError {
    *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((failure.clone(), began));
    self.notify.notify_waiters();
    failure
  }

  fn last(&self) -> Option<QuotaError> {
    let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
    last.as_ref().map(|(failure, _)| failure.clone())
  }

  /// Whether the last failed attempt began at or after `since`.
  fn failed_since(&self, since: Instant) -> bool {
    let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
    last.as_ref().is_some_and(|(_, began)| *began >= since)
  }
}

pub struct Manager {
  config: tokio_postgres::Config,
  /// `None` for plain TCP (`sslmode` disable): connections then never run TLS code, so a
  /// process that uses none keeps rustls' pages out of memory (link/cold.ld).
  tls: Option<MakeRustlsConnect>,
  target: String,
  connect_timeout: Duration,
  failures: Arc<ConnectFailures>,
  generation: Arc<std::sync::atomic::AtomicU64>,
  sending: Arc<Sending>,
}

impl ManageConnection for Manager {
  type Connection = (PgConnection, u64);
  type Error = QuotaError;

  async fn connect(&self) -> Result<Self::Connection> {
    let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
    let began = Instant::now();
    // The whole of it (TCP, TLS, startup and authentication) within `connectTimeoutMs`:
    // `Config::connect_timeout` bounds only the TCP connect, and an attempt stuck after it (a
    // server or pooler that accepts and never answers) would hold one of the pool's places
    // for good.
    let attempt = async {
      match &self.tls {
        Some(tls) => self
          .config
          .connect(tls.clone())
          .await
          .map(|(client, connection)| (client, Box::pin(connection) as Connection)),
        None => self
          .config
          .connect(NoTls)
          .await
          .map(|(client, connection)| (client, Box::pin(connection) as Connection)),
      }
    };
    let Ok(connected) = tokio::time::timeout(self.connect_timeout, attempt).await else {
      let failure = QuotaError::unavailable(format!(
        "could not connect to PostgreSQL at {}: no answer within {} ms",
        self.target,
        self.connect_timeout.as_millis()
      ));
      return Err(self.failures.record(failure, began));
    };
    let (client, connection) = connected.map_err(|error| {
        let cause = connect_cause(&error);
        // PgBouncer's answer to the `options` we send a direct connection.
        let hint = if cause.contains("unsupported startup parameter") {
          "; behind PgBouncer or another pooler, add ?pgbouncer=true to the URL (or pass statementCache: false)"
        } else {
          ""
        };
        let failure = QuotaError::DbUnavailable {
          message: format!(
            "could not connect to PostgreSQL at {}: {cause}{hint}",
            self.target
          ),
          // The server's reason, when it refused us (`28P01`, `3D000`, `53300`, `57P03`, …).
          sql_state: error.code().map(|state| state.code().to_owned()),
        };
        self.failures.record(failure, began)
      })?;
    let target = self.target.clone();
    tokio::spawn(async move {
      // bb8-postgres drops this error silently; we report it once per connection.
      if let Err(error) = connection.await {
        // `connect_cause` keeps the server's reason ("terminating connection due to
        // administrator command"), which a bare "db error" would hide.
        log::warn(
          "connection_lost",
          &[
            ("target", target.as_str()),
            ("error", &connect_cause(&error)),
          ],
        );
      }
    });
    let connection = PgConnection::new(
      client,
      self.sending.clone(),
      LOST_EPOCH.load(Ordering::Acquire),
    );
    Ok((connection, generation))
  }

  async fn is_valid(&self, conn: &mut Self::Connection) -> Result<()> {
    conn.0.ping().await?;
    Ok(())
  }

  fn has_broken(&self, conn: &mut Self::Connection) -> bool {
    conn.0.is_broken()
  }
}

/// A connection's I/O task, over plain TCP or TLS.
type Connection = std::pin::Pin<
  Box<dyn std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>> + Send>,
>;

/// tokio-postgres says "error connecting to server: Connection refused (os error 111)"; keep
/// the cause, which never contains the password.
fn connect_cause(error: &tokio_postgres::Error) -> String {
  use std::error::Error as _;
  match error.source() {
    Some(source) => format!("{error}: {source}"),
    None => error.to_string(),
  }
}

pub struct Pool {
  pool: bb8::Pool<Manager>,
  failures: Arc<ConnectFailures>,
  generation: Arc<std::sync::atomic::AtomicU64>,
  sending: Arc<Sending>,
  target: String,
  pool_size: u32,
  acquire_timeout_ms: u128,
  connect_timeout: std::time::Duration,
}

pub type Checkout<'a> = PooledConnection<'a, Manager>;

impl Pool {
  /// Builds the pool without connecting; connections open on first use. Must run inside the
  /// tokio runtime (bb8 spawns its reaper there).
  pub fn new(config: &ConnectionConfig) -> Result<Self> {
    let settings = config.postgres_config()?;
    let target = describe_target(&settings.config);
    let failures = Arc::new(ConnectFailures::default());
    let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sending = Arc::new(Sending::new(settings.pooler, config.statement_timeout));
    let tls = match settings.config.get_ssl_mode() {
      SslMode::Disable => None,
      _ => Some(settings.tls.connector()?),
    };
    let manager = Manager {
      config: settings.config,
      tls,
      target: target.clone(),
      connect_timeout: config.connect_timeout,
      failures: failures.clone(),
      generation: generation.clone(),
      sending: sending.clone(),
    };
    let mut builder = bb8::Pool::builder()
      .max_size(config.pool_size)
      .min_idle((config.min_connections > 0).then_some(config.min_connections))
      .idle_timeout(config.idle_timeout)
      .max_lifetime(config.max_lifetime)
      .test_on_check_out(false)
      .queue_strategy(QueueStrategy::Lifo)
      .retry_connection(false)
      .connection_timeout(config.connect_timeout);
    // bb8 closes idle and old connections when its reaper runs (every 30 s by default): often
    // enough that an idle timeout of a few seconds is kept to within half of it.
    let shortest = [config.idle_timeout, config.max_lifetime]
      .into_iter()
      .flatten()
      .min();
    if let Some(shortest) = shortest {
      let rate = (shortest / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
      builder = builder.reaper_rate(rate);
    }
    let pool = builder.build_unchecked(manager);
    Ok(Pool {
      pool,
      failures,
      generation,
      sending,
      target,
      pool_size: config.pool_size,
      acquire_timeout_ms: config.connect_timeout.as_millis(),
      connect_timeout: config.connect_timeout,
    })
  }

  /// A connection, or `DB_UNAVAILABLE` as soon as an attempt to open one fails, or
  /// `DB_TIMEOUT` when every connection stays busy past the timeout.
  pub async fn get(&self) -> Result<Checkout<'_>> {
    // An idle connection the server closed (restart, failover, idle kill) is skipped, not handed
    // out to fail the caller's statement: dropping it returns it to bb8, whose `has_broken`
    // discards it. Bounded: at most every pooled connection once, then a fresh one.
    for _ in 0..self.pool_size {
      let mut checkout = self.get_one().await?;
      if checkout.0.is_broken() {
        continue;
      }
      let epoch = LOST_EPOCH.load(Ordering::Acquire);
      if checkout.0.checked_epoch == epoch {
        return Ok(checkout);
      }
      // A connection was cut since this one last worked: make sure it still does.
      let probe = checkout.0.ping();
      if let Ok(Ok(_)) = tokio::time::timeout(self.connect_timeout, probe).await {
        checkout.0.checked_epoch = epoch;
        return Ok(checkout);
      }
    }
    self.get_one().await
  }

  async fn get_one(&self) -> Result<Checkout<'_>> {
    // Fails fast on an attempt to connect that failed while this call waited, but only one
    // that began after the call did: an older attempt (one that hung until its timeout, say)
    // says nothing about the connection this call would get, so the call asks the pool again.
    let began = Instant::now();
    let deadline = tokio::time::Instant::from_std(began + self.connect_timeout);
    let result = loop {
      let mut failed = pin!(self.failures.notify.notified());
      failed.as_mut().enable();
      tokio::select! {
        biased;
        result = tokio::time::timeout_at(deadline, self.pool.get()) => {
          break result.unwrap_or(Err(RunError::TimedOut));
        }
        _ = failed => {
          if self.failures.failed_since(began) {
            return Err(self.unavailable());
          }
        }
      }
    };
    let mut checkout = match result {
      Ok(checkout) => checkout,
      Err(RunError::User(error)) => return Err(error),
      Err(RunError::TimedOut) => {
        if self.pool.state().connections == 0 {
          return Err(self.unavailable());
        }
        return Err(QuotaError::timeout(format!(
          "no database connection became free within {} ms (all {} in use); raise poolSize or connectTimeoutMs",
          self.acquire_timeout_ms, self.pool_size
        )));
      }
    };
    let current = self.generation.load(std::sync::atomic::Ordering::Acquire);
    if checkout.1 != current {
      checkout.0.forget_statements();
      checkout.1 = current;
    }
    Ok(checkout)
  }

  fn unavailable(&self) -> QuotaError {
    self.failures.last().unwrap_or_else(|| {
      QuotaError::unavailable(format!("no connection to {} could be opened", self.target))
    })
  }

  /// Invalidates every connection's prepared statements (after a schema change).
  pub fn schema_changed(&self) {
    self
      .generation
      .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    self.sending.schema_changed();
  }

  /// Behind a transaction pooler (see `session`).
  pub fn pooler(&self) -> bool {
    self.sending.unnamed()
  }

  /// Connections open now (idle or in use).
  pub fn open_connections(&self) -> u32 {
    self.pool.state().connections
  }
}
