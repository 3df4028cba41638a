//! Single-statement reads over a few shared connections, picked round-robin.
//!
//! A pooled connection is checked out exclusively, so each read waits a full round trip on its
//! own connection and PostgreSQL wakes one backend per read. tokio-postgres pipelines the
//! queries of concurrent callers that share one `Client`: on a shared connection many reads
//! travel in one packet and one backend answers them back to back. Only reads that are a
//! single statement outside a transaction may go here; writes and transactions keep using the
//! exclusive pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_postgres::{Client, Statement};

use crate::error::{QuotaError, Result};

/// One shared connection and the statements prepared on it for one schema generation.
pub struct SharedClient {
  pub client: Client,
  statements: Mutex<(u64, HashMap<&'static str, Statement>)>,
  generation: Arc<AtomicU64>,
}

impl SharedClient {
  /// The prepared form of `sql` on this connection, prepared again after a schema change.
  pub async fn prepared(&self, sql: &'static str) -> Result<Statement> {
    let current = self.generation.load(Ordering::Acquire);
    {
      let mut cache = self.statements.lock().unwrap_or_else(|e| e.into_inner());
      if cache.0 != current {
        *cache = (current, HashMap::new());
      }
      if let Some(statement) = cache.1.get(sql) {
        return Ok(statement.clone());
      }
    }
    // Two callers may prepare the same statement at once; both results are valid.
    let statement = self.client.prepare(sql).await?;
    let mut cache = self.statements.lock().unwrap_or_else(|e| e.into_inner());
    if cache.0 == current {
      cache.1.insert(sql, statement.clone());
    }
    Ok(statement)
  }
}

/// Opens a connection; the pool's manager does it the same way for its own connections.
pub type Connect = Arc<
  dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Client>> + Send>>
    + Send
    + Sync,
>;

pub struct SharedReads {
  slots: Vec<tokio::sync::Mutex<Option<Arc<SharedClient>>>>,
  next: AtomicUsize,
  connect: Connect,
  generation: Arc<AtomicU64>,
}

impl SharedReads {
  pub fn new(connections: usize, connect: Connect, generation: Arc<AtomicU64>) -> Self {
    SharedReads {
      slots: (0..connections)
        .map(|_| tokio::sync::Mutex::new(None))
        .collect(),
      next: AtomicUsize::new(0),
      connect,
      generation,
    }
  }

  pub fn is_enabled(&self) -> bool {
    !self.slots.is_empty()
  }

  /// The next shared connection, opened (or reopened after it broke) on demand.
  pub async fn client(&self) -> Result<Arc<SharedClient>> {
    if self.slots.is_empty() {
      return Err(QuotaError::Internal("no shared read connections".into()));
    }
    let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
    let mut slot = self.slots[index].lock().await;
    if let Some(shared) = slot.as_ref() {
      if !shared.client.is_closed() {
        return Ok(shared.clone());
      }
    }
    let client = (self.connect)().await?;
    let shared = Arc::new(SharedClient {
      client,
      statements: Mutex::new((self.generation.load(Ordering::Acquire), HashMap::new())),
      generation: self.generation.clone(),
    });
    *slot = Some(shared.clone());
    Ok(shared)
  }
}

/// `quota::check_quota` over a shared connection: the same statement and the same answer.
/// A connection that broke since its last use is replaced once before giving up.
pub async fn check_quota(
  reads: &crate::pool::Pool,
  user: &crate::ids::UserId,
  bytes: i64,
  default_limit: i64,
) -> Result<Option<crate::quota::QuotaCheck>> {
  use crate::quota::{QuotaCheck, Usage, SELECT_USAGE};
  let mut attempts = 0;
  let row = loop {
    attempts += 1;
    let Some(shared) = reads.shared().await? else {
      return Ok(None);
    };
    let statement = shared.prepared(SELECT_USAGE).await?;
    match shared.client.query_opt(&statement, &[&user.as_str()]).await {
      Ok(row) => break row,
      Err(_) if attempts < 2 && shared.client.is_closed() => continue,
      Err(error) => return Err(error.into()),
    }
  };
  let usage = row.map_or(
    Usage {
      used_bytes: 0,
      reserved_bytes: 0,
      limit_bytes: default_limit,
    },
    |row| Usage {
      used_bytes: row.get(0),
      reserved_bytes: row.get(1),
      limit_bytes: row.get(2),
    },
  );
  Ok(Some(QuotaCheck {
    allowed: usage.fits(bytes),
    requested_bytes: bytes,
    usage,
  }))
}
