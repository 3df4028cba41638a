//! How statements reach PostgreSQL: the one place deciding between named prepared statements
//! and unnamed ones, and where a transaction gets its statement timeout.
//!
//! - Direct connections (the default): each statement is prepared once per connection and kept,
//!   and `statement_timeout` comes with the connection's startup options.
//! - Pooler mode (`?pgbouncer=true` in the URL, or `statementCache: false`): PgBouncer and
//!   Supavisor in transaction mode give each transaction whichever server connection is free,
//!   so a statement prepared in one transaction may be missing (or be another client's) in the
//!   next, and PgBouncer refuses the `options` startup parameter. Statements are sent unnamed
//!   (parse, bind and execute in one message: `query_typed`); the timeout is a `SET LOCAL` sent
//!   with a transaction's first statement; a statement outside a transaction travels as its own
//!   `BEGIN; SET LOCAL …` / statement / `COMMIT`, in one round trip; and nothing is pipelined
//!   across a transaction's end (PgBouncer before 1.21 may give the server connection to
//!   another client as soon as it reports "idle").
//!
//! Statements started concurrently on one connection (`try_join!`) reach the server in the
//! order they were started, also when one of them has to be prepared first: callers rely on
//! that order (a sweep before the lock it must precede).

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::MutexGuard;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient, Row, Statement, Transaction};

/// One statement parameter, as tokio-postgres takes them.
pub type Param<'a> = &'a (dyn ToSql + Sync);
pub(super) type PgResult<T> = std::result::Result<T, tokio_postgres::Error>;

/// How a pool's connections send statements; shared by all of them.
#[derive(Debug)]
pub struct Sending {
  unnamed: bool,
  /// `SET LOCAL statement_timeout …`, in pooler mode with a timeout.
  set_timeout: Option<String>,
  /// `BEGIN; SET LOCAL statement_timeout …`, for a statement outside a transaction.
  pub(super) begin: Option<String>,
  /// Parameter types per statement, learned once per pool: an unnamed statement carries them.
  types: Mutex<HashMap<String, Arc<[Type]>>>,
}

impl Sending {
  pub fn new(unnamed: bool, statement_timeout: Duration) -> Self {
    let ms = statement_timeout.as_millis();
    let set_timeout = (unnamed && ms > 0).then(|| format!("SET LOCAL statement_timeout = {ms}"));
    Sending {
      unnamed,
      begin: set_timeout.as_ref().map(|set| format!("BEGIN; {set}")),
      set_timeout,
      types: Mutex::new(HashMap::new()),
    }
  }

  pub fn unnamed(&self) -> bool {
    self.unnamed
  }

  /// Forget learned parameter types (after a migration changed the tables).
  pub fn schema_changed(&self) {
    lock(&self.types).clear();
  }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
  mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one pooled connection keeps besides its client, so a transaction on the client can
/// use it.
pub(super) struct State {
  pub(super) sending: Arc<Sending>,
  statements: Mutex<HashMap<String, Statement>>,
  /// Held from a statement's start until its messages are queued (or to its end, where
  /// nothing may be pipelined behind it).
  pub(super) order: tokio::sync::Mutex<()>,
  /// Set while a `BEGIN` of ours outside a `Transaction` is open: a call dropped half-way
  /// leaves it set and the pool discards the connection rather than reuse one mid-transaction.
  pub(super) open: AtomicBool,
}

/// One pooled connection.
pub struct PgConnection {
  pub(super) client: Client,
  pub(super) state: State,
  /// `pool::LOST_EPOCH` when this connection was last known to work.
  pub(crate) checked_epoch: u64,
}

/// A transaction on a pooled connection: commits with `commit()`, rolls back when dropped.
pub struct Tx<'a> {
  tx: Transaction<'a>,
  state: &'a State,
  /// Pooler mode: the `SET LOCAL statement_timeout` still has to go out (with the first
  /// statement, in the same round trip).
  timeout_pending: AtomicBool,
}

/// What code that runs on a connection or in a transaction alike takes (where it would take
/// tokio-postgres' `GenericClient`, which would bypass this module).
pub trait Db: Sync {
  fn query(
    &self,
    sql: &str,
    params: &[Param<'_>],
  ) -> impl Future<Output = PgResult<Vec<Row>>> + Send;
  fn query_one(
    &self,
    sql: &str,
    params: &[Param<'_>],
  ) -> impl Future<Output = PgResult<Row>> + Send;
  fn query_opt(
    &self,
    sql: &str,
    params: &[Param<'_>],
  ) -> impl Future<Output = PgResult<Option<Row>>> + Send;
  fn execute(&self, sql: &str, params: &[Param<'_>]) -> impl Future<Output = PgResult<u64>> + Send;
  fn batch_execute(&self, sql: &str) -> impl Future<Output = PgResult<()>> + Send;
}

macro_rules! impl_db {
  ($t:ty) => {
    impl Db for $t {
      fn query(
        &self,
        sql: &str,
        params: &[Param<'_>],
      ) -> impl Future<Output = PgResult<Vec<Row>>> + Send {
        <$t>::query(self, sql, params)
      }
      fn query_one(
        &self,
        sql: &str,
        params: &[Param<'_>],
      ) -> impl Future<Output = PgResult<Row>> + Send {
        <$t>::query_one(self, sql, params)
      }
      fn query_opt(
        &self,
        sql: &str,
        params: &[Param<'_>],
      ) -> impl Future<Output = PgResult<Option<Row>>> + Send {
        <$t>::query_opt(self, sql, params)
      }
      fn execute(
        &self,
        sql: &str,
        params: &[Param<'_>],
      ) -> impl Future<Output = PgResult<u64>> + Send {
        <$t>::execute(self, sql, params)
      }
      fn batch_execute(&self, sql: &str) -> impl Future<Output = PgResult<()>> + Send {
        <$t>::batch_execute(self, sql)
      }
    }
  };
}

impl_db!(PgConnection);
impl_db!(Tx<'_>);

/// A statement ready to send: prepared and named, or the types of an unnamed one.
pub(super) enum Ready {
  Named(Statement),
  Unnamed(Arc<[Type]>),
}

#[derive(Clone, Copy)]
pub(super) enum Want {
  Rows,
  One,
  Opt,
  Count,
}

pub(super) enum Got {
  Rows(Vec<Row>),
  One(Row),
  Opt(Option<Row>),
  Count(u64),
}

macro_rules! unwrap_got {
  ($got:expr, $variant:ident) => {
    match $got {
      Got::$variant(value) => value,
      _ => unreachable!("send answers in the shape asked for"),
    }
  };
}

/// The statement methods, the same on a connection and on a transaction.
macro_rules! statement_methods {
  () => {
    pub async fn query(&self, sql: &str, params: &[Param<'_>]) -> PgResult<Vec<Row>> {
      Ok(unwrap_got!(self.send(sql, params, Want::Rows).await?, Rows))
    }

    pub async fn query_one(&self, sql: &str, params: &[Param<'_>]) -> PgResult<Row> {
      Ok(unwrap_got!(self.send(sql, params, Want::One).await?, One))
    }

    pub async fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> PgResult<Option<Row>> {
      Ok(unwrap_got!(self.send(sql, params, Want::Opt).await?, Opt))
    }

    pub async fn execute(&self, sql: &str, params: &[Param<'_>]) -> PgResult<u64> {
      Ok(unwrap_got!(
        self.send(sql, params, Want::Count).await?,
        Count
      ))
    }
  };
}

impl PgConnection {
  pub fn new(client: Client, sending: Arc<Sending>, checked_epoch: u64) -> Self {
    PgConnection {
      client,
      state: State {
        sending,
        statements: Mutex::new(HashMap::new()),
        order: tokio::sync::Mutex::new(()),
        open: AtomicBool::new(false),
      },
      checked_epoch,
    }
  }

  statement_methods!();

  /// Statements without parameters, sent as one simple query (its own transaction behind a
  /// pooler: a session-level `SET` there would stay with whichever server ran it).
  pub async fn batch_execute(&self, sql: &str) -> PgResult<()> {
    let _guard = self.state.order.lock().await;
    self.client.batch_execute(sql).await
  }

  /// Behind a transaction pooler (statements unnamed, no session state to rely on).
  pub fn pooler(&self) -> bool {
    self.state.sending.unnamed
  }

  /// Whether the pool must drop this connection rather than hand it out again.
  pub fn is_broken(&self) -> bool {
    self.client.is_closed() || self.state.open.load(Ordering::Acquire)
  }

  /// One empty round trip: whether the connection still works.
  pub async fn ping(&self) -> PgResult<()> {
    self.client.simple_query("").await.map(drop)
  }

  pub async fn transaction(&mut self) -> PgResult<Tx<'_>> {
    let tx = self.client.transaction().await?;
    let pending = self.state.sending.set_timeout.is_some();
    Ok(Tx {
      tx,
      state: &self.state,
      timeout_pending: AtomicBool::new(pending),
    })
  }

  /// Forget prepared statements (after a migration changed the tables they refer to).
  pub fn forget_statements(&mut self) {
    lock(&self.state.statements).clear();
  }

  async fn send(&self, sql: &str, params: &[Param<'_>], want: Want) -> PgResult<Got> {
    let state = &self.state;
    let guard = state.order.lock().await;
    let ready = state.ready(&self.client, false, sql).await?;
    let sending = &state.sending;
    if !sending.unnamed {
      return after_first_poll(guard, run(&self.client, &ready, sql, params, want)).await;
    }
    // Pooler mode: the statement is a transaction of its own, and the next one waits for it.
    let Some(begin) = &sending.begin else {
      return run(&self.client, &ready, sql, params, want).await;
    };
    let (began, result, committed) = tokio::join!(
      self.client.batch_execute(begin),
      run(&self.client, &ready, sql, params, want),
      self.client.batch_execute("COMMIT"),
    );
    drop(guard);
    let value = result?;
    began?;
    committed?;
    Ok(value)
  }
}

impl Tx<'_> {
  statement_methods!();

  /// Statements without parameters, sent as one simple query.
  pub async fn batch_execute(&self, sql: &str) -> PgResult<()> {
    let guard = self.state.order.lock().await;
    let set = self.take_timeout();
    after_first_poll(guard, async {
      let (set, result) = tokio::join!(
        async {
          match set {
            Some(set) => self.tx.batch_execute(set).await,
            None => Ok(()),
          }
        },
        self.tx.batch_execute(sql)
      );
      set.and(result)
    })
    .await
  }

  pub async fn commit(self) -> PgResult<()> {
    self.tx.commit().await
  }

  pub async fn rollback(self) -> PgResult<()> {
    self.tx.rollback().await
  }

  fn take_timeout(&self) -> Option<&str> {
    if self.timeout_pending.swap(false, Ordering::AcqRel) {
      self.state.sending.set_timeout.as_deref()
    } else {
      None
    }
  }

  async fn send(&self, sql: &str, params: &[Param<'_>], want: Want) -> PgResult<Got> {
    let guard = self.state.order.lock().await;
    let ready = self.state.ready(&self.tx, true, sql).await?;
    let set = self.take_timeout();
    after_first_poll(guard, async {
      match set {
        // In one round trip with the statement, ahead of it.
        Some(set) => {
          let (set, result) = tokio::join!(
            self.tx.batch_execute(set),
            run(&self.tx, &ready, sql, params, want)
          );
          let value = result?;
          set?;
          Ok(value)
        }
        None => run(&self.tx, &ready, sql, params, want).await,
      }
    })
    .await
  }
}

impl State {
  /// The statement, prepared (direct) or its parameter types known (pooler mode). Runs with
  /// the order guard held, so statements started later wait for this one's round trips.
  pub(super) async fn ready<C: GenericClient + Sync>(
    &self,
    on: &C,
    in_tx: bool,
    sql: &str,
  ) -> PgResult<Ready> {
    let sending = &self.sending;
    if !sending.unnamed {
      if let Some(statement) = lock(&self.statements).get(sql) {
        return Ok(Ready::Named(statement.clone()));
      }
      let statement = on.prepare(sql).await?;
      lock(&self.statements).insert(sql.to_owned(), statement.clone());
      return Ok(Ready::Named(statement));
    }
    if let Some(types) = lock(&sending.types).get(sql) {
      return Ok(Ready::Unnamed(types.clone()));
    }
    // Learned by preparing the statement once and closing it again, inside one transaction so
    // that a transaction pooler keeps both on the same server connection.
    let types: Arc<[Type]> = if in_tx {
      on.prepare(sql).await?.params().into()
    } else {
      self.open.store(true, Ordering::Release);
      on.batch_execute("BEGIN").await?;
      let prepared = on
        .prepare(sql)
        .await
        .map(|s| Arc::<[Type]>::from(s.params()));
      on.batch_execute("ROLLBACK").await?;
      self.open.store(false, Ordering::Release);
      prepared?
    };
    lock(&sending.types).insert(sql.to_owned(), types.clone());
    Ok(Ready::Unnamed(types))
  }
}

/// Sends one statement and reads its answer.
pub(super) async fn run<C: GenericClient + Sync>(
  on: &C,
  ready: &Ready,
  sql: &str,
  params: &[Param<'_>],
  want: Want,
) -> PgResult<Got> {
  match ready {
    Ready::Named(statement) => Ok(match want {
      Want::Rows => Got::Rows(on.query(statement, params).await?),
      Want::One => Got::One(on.query_one(statement, params).await?),
      Want::Opt => Got::Opt(on.query_opt(statement, params).await?),
      Want::Count => Got::Count(on.execute(statement, params).await?),
    }),
    Ready::Unnamed(types) => {
      // A count that does not match is left for the server to refuse ("bind message supplies
      // 2 parameters, but prepared statement requires 3").
      let typed: Vec<(Param<'_>, Type)> = params
        .iter()
        .enumerate()
        .map(|(i, &param)| (param, types.get(i).cloned().unwrap_or(Type::UNKNOWN)))
        .collect();
      Ok(match want {
        Want::Rows => Got::Rows(on.query_typed(sql, &typed).await?),
        Want::One => Got::One(on.query_typed_one(sql, &typed).await?),
        Want::Opt => Got::Opt(on.query_typed_opt(sql, &typed).await?),
        Want::Count => Got::Count(on.execute_typed(sql, &typed).await?),
      })
    }
  }
}

/// Polls `send` once, which queues its messages for the server, then lets the next statement
/// go: statements started concurrently stay pipelined, in the order they were started.
pub(super) async fn after_first_poll<T>(
  guard: MutexGuard<'_, ()>,
  send: impl Future<Output = T>,
) -> T {
  let mut send = pin!(send);
  if let Poll::Ready(out) = poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
    return out;
  }
  drop(guard);
  send.await
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn the_timeout_goes_per_transaction_only_in_pooler_mode() {
    let direct = Sending::new(false, Duration::from_secs(10));
    assert!(direct.set_timeout.is_none() && direct.begin.is_none());
    let pooled = Sending::new(true, Duration::from_millis(2500));
    assert_eq!(
      pooled.set_timeout.as_deref(),
      Some("SET LOCAL statement_timeout = 2500")
    );
    assert_eq!(
      pooled.begin.as_deref(),
      Some("BEGIN; SET LOCAL statement_timeout = 2500")
    );
    // 0 disables the timeout: statements outside a transaction go bare.
    assert!(Sending::new(true, Duration::ZERO).begin.is_none());
  }
}
