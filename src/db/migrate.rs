//! Schema migrations embedded in the binary. Each one runs in its own transaction under a
//! transaction-level advisory lock, so app instances starting together apply it once; each
//! applied migration is recorded with the SHA-256 of its SQL, and a changed file is refused.
//! Migrations only create objects; the data they imply is filled by the batched backfill
//! (`crate::quota::backfill`), so a migration holds its locks for milliseconds. One that cannot
//! get a lock within its short `lock_timeout` is rolled back and retried with backoff.

use crate::db::session::{PgConnection, Tx};
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;

use crate::db::project_source::ProjectSource;
use crate::error::{QuotaError, Result};

pub struct Migration {
  pub version: i32,
  pub name: &'static str,
  pub up: &'static str,
  pub down: &'static str,
  /// Checksums of earlier released texts of `up` that databases may have recorded, and which
  /// left the database in a state the current text plus the backfill also reaches.
  pub legacy_checksums: &'static [&'static str],
}

/// The first release of 0001, which also backfilled every existing project inside its
/// transaction (and so held `projects` for as long as that took). Databases that applied it
/// have all of its data; the backfill finds nothing left to do for them.
pub const LEGACY_0001_CHECKSUM: &str =
  "f7eedd58de7e6d20d11e9737422549da92b06320a48ec539fbd7ff06ac1f6514";

pub const MIGRATIONS: &[Migration] = &[
  Migration {
    version: 1,
    name: "storage_quota",
    up: include_str!("../../migrations/0001_storage_quota.up.sql"),
    down: include_str!("../../migrations/0001_storage_quota.down.sql"),
    // The first release, and the schema-only text of the merged backfill branch before
    // 0001 learnt to leave `projects` alone for a configured source (same objects for the
    // default source).
    legacy_checksums: &[
      LEGACY_0001_CHECKSUM,
      "c8806ea66680c002e3a284d36ef7439944ecde2bff0868ed201e3eebb2aeb36a",
    ],
  },
  Migration {
    version: 2,
    name: "quota_lifecycle",
    up: include_str!("../../migrations/0002_quota_lifecycle.up.sql"),
    down: include_str!("../../migrations/0002_quota_lifecycle.down.sql"),
    // As released (0.1.0): the same statements without the up-front LOCK TABLE, which took
    // the ledger and the quota table one by one (a deadlock with app writers).
    legacy_checksums: &["76d9456a480b016e3a283c533707003c8e3f52dc577f17de32e27528501ae511"],
  },
  Migration {
    version: 3,
    name: "hardening",
    up: include_str!("../../migrations/0003_hardening.up.sql"),
    down: include_str!("../../migrations/0003_hardening.down.sql"),
    legacy_checksums: &[],
  },
  Migration {
    version: 4,
    name: "project_copies",
    up: include_str!("../../migrations/0004_project_copies.up.sql"),
    down: include_str!("../../migrations/0004_project_copies.down.sql"),
    legacy_checksums: &[],
  },
  Migration {
    version: 5,
    name: "batched_backfill",
    up: include_str!("../../migrations/0005_batched_backfill.up.sql"),
    down: include_str!("../../migrations/0005_batched_backfill.down.sql"),
    legacy_checksums: &[],
  },
  Migration {
    version: 6,
    name: "project_source",
    up: include_str!("../../migrations/0006_project_source.up.sql"),
    down: include_str!("../../migrations/0006_project_source.down.sql"),
    legacy_checksums: &[],
  },
  Migration {
    version: 7,
    name: "copy_leases",
    up: include_str!("../../migrations/0007_copy_leases.up.sql"),
    down: include_str!("../../migrations/0007_copy_leases.down.sql"),
    legacy_checksums: &[],
  },
  Migration {
    version: 8,
    name: "object_uploads",
    up: include_str!("../../migrations/0008_object_uploads.up.sql"),
    down: include_str!("../../migrations/0008_object_uploads.down.sql"),
    legacy_checksums: &[],
  },
  Migration {
    version: 9,
    name: "baseline_totals",
    up: include_str!("../../migrations/0009_baseline_totals.up.sql"),
    down: include_str!("../../migrations/0009_baseline_totals.down.sql"),
    legacy_checksums: &[],
  },
];

/// How often a migration whose lock was not granted within its `lock_timeout` is tried again,
/// and the first pause between tries (doubling, up to `MAX_BACKOFF_MS`): about a minute in all.
const LOCK_ATTEMPTS: u32 = 10;
const FIRST_BACKOFF_MS: u64 = 200;
const MAX_BACKOFF_MS: u64 = 10_000;

/// `pg_advisory_xact_lock` key: the first 8 bytes of sha256("storage-quota/migrations").
const LOCK_KEY: i64 = 0x38e6_1a1c_67b1_7ef5;

const TRACKING_TABLE: &str = "
  CREATE TABLE IF NOT EXISTS storage_quota_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
  )";

/// Values the migrations read with `current_setting`, set per transaction.
pub struct MigrationSettings {
  pub default_limit_bytes: i64,
  pub storage_root: String,
  pub project_source: ProjectSource,
  /// Rollback only: let 0001's down drop recorded usage (`rollback --discard-usage`).
  pub discard_usage: bool,
}

/// What `migrate` did.
#[derive(Debug, Clone, Default)]
pub struct MigrateReport {
  pub applied: Vec<i32>,
  /// Tries given up on a lock timeout and repeated (each one logged).
  pub lock_retries: u32,
}

#[derive(Debug, Clone)]
pub struct AppliedMigration {
  pub version: i32,
  pub name: String,
  pub applied_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Default)]
pub struct Status {
  pub applied: Vec<AppliedMigration>,
  pub pending: Vec<AppliedMigration>,
}

impl Migration {
  pub fn checksum(&self) -> String {
    hex(&Sha256::digest(self.up.as_bytes()))
  }

  /// Whether `recorded` is this migration's checksum, now or in an earlier release.
  fn accepts(&self, recorded: &str) -> bool {
    self.checksum() == recorded || self.legacy_checksums.contains(&recorded)
  }

  fn label(&self) -> String {
    format!("{:04}_{}", self.version, self.name)
  }
}

fn hex(bytes: &[u8]) -> String {
  bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Takes the lock, makes sure the tracking table exists and returns what is applied,
/// refusing a database whose recorded checksums differ from ours.
async fn lock_and_read(tx: &Tx<'_>) -> Result<Vec<(i32, String)>> {
  tx.batch_execute("SET LOCAL lock_timeout = '60s'").await?;
  tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
    .await?;
  tx.batch_execute(TRACKING_TABLE).await?;
  let rows = tx
    .query(
      "SELECT version, checksum FROM storage_quota_migrations ORDER BY version",
      &[],
    )
    .await?;
  let applied: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
  for (version, checksum) in &applied {
    match MIGRATIONS.iter().find(|m| m.version == *version) {
      None => {
        return Err(QuotaError::MigrationFailed(format!(
          "the database has migration {version} applied, which this version of storage-quota does not know; upgrade storage-quota"
        )))
      }
      Some(migration) if !migration.accepts(checksum) => {
        return Err(QuotaError::MigrationFailed(format!(
          "migration {} was changed after it was applied (checksum differs); refusing to continue",
          migration.label()
        )))
      }
      Some(_) => {}
    }
  }
  Ok(applied)
}

fn failed(migration: &Migration, direction: &str, error: tokio_postgres::Error) -> QuotaError {
  match error.as_db_error() {
    Some(db) => {
      let hint = db.hint().map(|h| format!(" ({h})")).unwrap_or_default();
      QuotaError::MigrationFailed(format!(
        "migration {} ({direction}) failed and was rolled back: {}{hint}",
        migration.label(),
        db.message()
      ))
    }
    None => QuotaError::from(error),
  }
}

/// Applies every pending migration, one transaction each. A migration that gives up on a lock
/// (SQLSTATE 55P03, its short `lock_timeout`) changed nothing: it is tried again after a pause.
pub async fn migrate(
  client: &mut PgConnection,
  settings: &MigrationSettings,
) -> Result<MigrateReport> {
  // Before anything changes: a configured project table that is missing or unusable is refused.
  settings.project_source.check(&*client).await?;
  let mut report = MigrateReport::default();
  let mut attempt = 0u32;
  loop {
    match apply_next(client, settings).await {
      Ok(Some(version)) => {
        report.applied.push(version);
        attempt = 0;
      }
      Ok(None) => return Ok(report),
      Err(Failure::LockTimeout(label, _)) if attempt + 1 < LOCK_ATTEMPTS => {
        attempt += 1;
        report.lock_retries += 1;
        let pause = backoff_ms(attempt);
        crate::log::warn(
          "migration_lock_retry",
          &[
            ("migration", &label),
            ("attempt", &attempt.to_string()),
            ("retryInMs", &pause.to_string()),
          ],
        );
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
      }
      Err(Failure::LockTimeout(_, error)) | Err(Failure::Other(error)) => return Err(error),
    }
  }
}

enum Failure {
  /// The migration (label) did not get a lock in time; the error says so, for the last try.
  LockTimeout(String, QuotaError),
  Other(QuotaError),
}

fn backoff_ms(attempt: u32) -> u64 {
  (FIRST_BACKOFF_MS << (attempt - 1).min(16)).min(MAX_BACKOFF_MS)
}

/// One transaction: the next pending migration, applied and recorded. `Ok(None)` when none is
/// pending. On any failure the transaction is rolled back (dropped).
async fn apply_next(
  client: &mut PgConnection,
  settings: &MigrationSettings,
) -> std::result::Result<Option<i32>, Failure> {
  let tx = client
    .transaction()
    .await
    .map_err(|e| Failure::Other(e.into()))?;
  let applied = lock_and_read(&tx).await.map_err(Failure::Other)?;
  let Some(next) = MIGRATIONS
    .iter()
    .find(|m| !applied.iter().any(|(v, _)| *v == m.version))
  else {
    tx.commit().await.map_err(|e| Failure::Other(e.into()))?;
    return Ok(None);
  };
  // A big table's rewrite is refused here until it is prepared (`storage-quota migrate`).
  crate::db::online::ensure_prepared(&tx, next.version, &next.label())
    .await
    .map_err(Failure::Other)?;
  let run = async {
    set_settings(&tx, settings).await?;
    tx.batch_execute(next.up).await?;
    tx.execute(
      "INSERT INTO storage_quota_migrations (version, name, checksum) VALUES ($1, $2, $3)",
      &[&next.version, &next.name, &next.checksum()],
    )
    .await?;
    if next.version == 5 {
      mark_legacy_backfill_done(&tx).await?;
    }
    tx.commit().await
  };
  match run.await {
    Ok(()) => Ok(Some(next.version)),
    Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Err(Failure::LockTimeout(
      next.label(),
      failed(next, "up", error),
    )),
    Err(error) => Err(Failure::Other(failed(next, "up", error))),
  }
}

async fn set_settings(
  tx: &Tx<'_>,
  settings: &MigrationSettings,
) -> std::result::Result<(), tokio_postgres::Error> {
  tx.execute(
    "SELECT set_config('storage_quota.default_limit_bytes', $1, true), set_config('storage_quota.storage_root', $2, true), set_config('storage_quota.discard_usage', $3, true)",
    &[
      &settings.default_limit_bytes.to_string(),
      &settings.storage_root,
      &if settings.discard_usage { "on" } else { "off" },
    ],
  )
  .await?;
  for (name, value) in settings.project_source.settings() {
    tx.execute("SELECT set_config($1, $2, true)", &[&name, &value])
      .await?;
  }
  Ok(())
}

/// A database that applied the first release of 0001 was backfilled inside that migration:
/// its backfill starts finished (projects created since get their paths lazily, as before).
async fn mark_legacy_backfill_done(tx: &Tx<'_>) -> std::result::Result<(), tokio_postgres::Error> {
  tx.execute(
    "UPDATE storage_quota_backfill SET phase = 'done', started_at = now(), updated_at = now(), finished_at = now()
      WHERE EXISTS (SELECT 1 FROM storage_quota_migrations WHERE version = 1 AND checksum = $1)",
    &[&LEGACY_0001_CHECKSUM],
  )
  .await
  .map(|_| ())
}

/// Reverts the `steps` most recent migrations, newest first, one transaction each.
/// Returns the versions reverted. The tracking table goes with the last one.
pub async fn rollback(
  client: &mut PgConnection,
  steps: u32,
  settings: &MigrationSettings,
) -> Result<Vec<i32>> {
  let mut reverted = Vec::new();
  for _ in 0..steps {
    let tx = client.transaction().await?;
    let applied = lock_and_read(&tx).await?;
    let Some((version, _)) = applied.last() else {
      tx.batch_execute("DROP TABLE IF EXISTS storage_quota_migrations")
        .await?;
      tx.commit().await?;
      break;
    };
    let migration = MIGRATIONS
      .iter()
      .find(|m| m.version == *version)
      .expect("lock_and_read checked every applied version is known");
    crate::db::online::refuse_big_rollback(&tx, *version, &migration.label()).await?;
    set_settings(&tx, settings)
      .await
      .map_err(|e| failed(migration, "down", e))?;
    if *version == 2 {
      // A preparation for 0003/0006 that was never followed by them (online::DISCARD_SQL).
      tx.batch_execute(crate::db::online::DISCARD_SQL)
        .await
        .map_err(|e| failed(migration, "down", e))?;
    }
    tx.batch_execute(migration.down)
      .await
      .map_err(|e| failed(migration, "down", e))?;
    tx.execute(
      "DELETE FROM storage_quota_migrations WHERE version = $1",
      &[version],
    )
    .await?;
    if applied.len() == 1 {
      tx.batch_execute("DROP TABLE storage_quota_migrations")
        .await?;
    }
    tx.commit().await?;
    reverted.push(*version);
  }
  Ok(reverted)
}

pub async fn status(client: &mut PgConnection) -> Result<Status> {
  // In a transaction: one server connection behind a transaction pooler, one snapshot.
  let client = client.transaction().await?;
  let exists: bool = client
    .query_one(
      "SELECT to_regclass('storage_quota_migrations') IS NOT NULL",
      &[],
    )
    .await?
    .get(0);
  let mut recorded = Vec::new();
  if exists {
    for row in client
      .query(
        "SELECT version, name, checksum, applied_at FROM storage_quota_migrations ORDER BY version",
        &[],
      )
      .await?
    {
      let version: i32 = row.get(0);
      let checksum: String = row.get(2);
      if let Some(known) = MIGRATIONS.iter().find(|m| m.version == version) {
        if !known.accepts(&checksum) {
          return Err(QuotaError::MigrationFailed(format!(
            "migration {} was changed after it was applied (checksum differs)",
            known.label()
          )));
        }
      }
      recorded.push(AppliedMigration {
        version,
        name: row.get(1),
        applied_at: Some(row.get(3)),
      });
    }
  }
  let pending = MIGRATIONS
    .iter()
    .filter(|m| !recorded.iter().any(|a| a.version == m.version))
    .map(|m| AppliedMigration {
      version: m.version,
      name: m.name.to_owned(),
      applied_at: None,
    })
    .collect();
  client.commit().await?;
  Ok(Status {
    applied: recorded,
    pending,
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn versions_are_ordered_and_unique() {
    for pair in MIGRATIONS.windows(2) {
      assert!(pair[0].version < pair[1].version);
    }
    assert!(MIGRATIONS
      .iter()
      .all(|m| !m.up.is_empty() && !m.down.is_empty()));
  }

  #[test]
  fn released_texts_are_accepted() {
    let released = [
      (
        1,
        include_str!("../../__test__/fixtures/0001_storage_quota.first-release.up.sql"),
      ),
      (
        2,
        include_str!("../../__test__/fixtures/0002_quota_lifecycle.first-release.up.sql"),
      ),
    ];
    for (version, text) in released {
      let migration = MIGRATIONS.iter().find(|m| m.version == version).unwrap();
      assert!(migration.accepts(&hex(&Sha256::digest(text.as_bytes()))));
    }
  }

  #[test]
  fn lock_key_matches_its_comment() {
    let digest = Sha256::digest(b"storage-quota/migrations");
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    assert_eq!(i64::from_be_bytes(first), LOCK_KEY);
  }
}
