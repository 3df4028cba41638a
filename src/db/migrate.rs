//! Schema migrations embedded in the binary. Each one runs in its own transaction under a
//! transaction-level advisory lock, so app instances starting together apply it once; each
//! applied migration is recorded with the SHA-256 of its SQL, and a changed file is refused.

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, Transaction};

use crate::db::project_source::ProjectSource;
use crate::error::{QuotaError, Result};

pub struct Migration {
  pub version: i32,
  pub name: &'static str,
  pub up: &'static str,
  pub down: &'static str,
  /// Checksums of earlier released texts of `up` that databases may have recorded. 0001
  /// learnt to leave `projects` alone when the app names another source; databases migrated
  /// with the first release keep working.
  pub legacy_checksums: &'static [&'static str],
}

/// The first release of 0001.
pub const LEGACY_0001_CHECKSUM: &str =
  "f7eedd58de7e6d20d11e9737422549da92b06320a48ec539fbd7ff06ac1f6514";

pub const MIGRATIONS: &[Migration] = &[
  Migration {
    version: 1,
    name: "storage_quota",
    up: include_str!("../../migrations/0001_storage_quota.up.sql"),
    down: include_str!("../../migrations/0001_storage_quota.down.sql"),
    legacy_checksums: &[LEGACY_0001_CHECKSUM],
  },
  Migration {
    version: 2,
    name: "quota_lifecycle",
    up: include_str!("../../migrations/0002_quota_lifecycle.up.sql"),
    down: include_str!("../../migrations/0002_quota_lifecycle.down.sql"),
    legacy_checksums: &[],
  },
  Migration {
    version: 4,
    name: "project_copies",
    up: include_str!("../../migrations/0004_project_copies.up.sql"),
    down: include_str!("../../migrations/0004_project_copies.down.sql"),
    legacy_checksums: &[],
  },
  // 0003 and 0005 are other branches' (the runner accepts gaps).
  Migration {
    version: 6,
    name: "project_source",
    up: include_str!("../../migrations/0006_project_source.up.sql"),
    down: include_str!("../../migrations/0006_project_source.down.sql"),
    legacy_checksums: &[],
  },
];

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
async fn lock_and_read(tx: &Transaction<'_>) -> Result<Vec<(i32, String)>> {
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

/// Applies every pending migration, one transaction each. Returns the versions applied now.
pub async fn migrate(client: &mut Client, settings: &MigrationSettings) -> Result<Vec<i32>> {
  // Before anything changes: a configured project table that is missing or unusable is refused.
  settings.project_source.check(&*client).await?;
  let mut applied_now = Vec::new();
  loop {
    let tx = client.transaction().await?;
    let applied = lock_and_read(&tx).await?;
    let Some(next) = MIGRATIONS
      .iter()
      .find(|m| !applied.iter().any(|(v, _)| *v == m.version))
    else {
      tx.commit().await?;
      return Ok(applied_now);
    };
    tx.execute(
      "SELECT set_config('storage_quota.default_limit_bytes', $1, true), set_config('storage_quota.storage_root', $2, true)",
      &[&settings.default_limit_bytes.to_string(), &settings.storage_root],
    )
    .await?;
    for (name, value) in settings.project_source.settings() {
      tx.execute("SELECT set_config($1, $2, true)", &[&name, &value])
        .await?;
    }
    tx.batch_execute(next.up)
      .await
      .map_err(|e| failed(next, "up", e))?;
    tx.execute(
      "INSERT INTO storage_quota_migrations (version, name, checksum) VALUES ($1, $2, $3)",
      &[&next.version, &next.name, &next.checksum()],
    )
    .await?;
    tx.commit().await?;
    applied_now.push(next.version);
  }
}

/// Reverts the `steps` most recent migrations, newest first, one transaction each.
/// Returns the versions reverted. The tracking table goes with the last one.
pub async fn rollback(client: &mut Client, steps: u32) -> Result<Vec<i32>> {
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

pub async fn status(client: &Client) -> Result<Status> {
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
  fn lock_key_matches_its_comment() {
    let digest = Sha256::digest(b"storage-quota/migrations");
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    assert_eq!(i64::from_be_bytes(first), LOCK_KEY);
  }
}
