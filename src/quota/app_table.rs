//! The app's own table of projects, as the backfill and the seeding of users read it. Every
//! name of an app table or column used by that code comes from here, so a configurable project
//! source (another table name, id or owner column) plugs in at one place.

use crate::db::session::Db;

use crate::error::{QuotaError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppTable {
  /// The table, e.g. `projects`.
  pub table: String,
  /// Its unique id column (uuid): the backfill's keyset.
  pub id: String,
  /// The column naming the project's owner (a storage-quota user id).
  pub owner: String,
  /// The column the app keeps each project's size in, counted as its baseline usage when the
  /// column exists and is numeric; ignored otherwise.
  pub size: String,
  /// The owner column's SQL type (`text`, `uuid`, …): the backfill's cursor is cast to it.
  pub owner_type: String,
}

impl Default for AppTable {
  fn default() -> Self {
    AppTable {
      table: "projects".into(),
      id: "id".into(),
      owner: "user_id".into(),
      size: "size_bytes".into(),
      owner_type: "text".into(),
    }
  }
}

/// An identifier quoted for SQL (`"name"`, inner quotes doubled).
pub fn quote(name: &str) -> String {
  format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL regular expression of a valid user id (`crate::ids::UserId`), for owners filtered
/// in SQL.
pub const VALID_OWNER_REGEX: &str = "^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$";

impl AppTable {
  pub fn t(&self) -> String {
    quote(&self.table)
  }
  pub fn id_col(&self) -> String {
    quote(&self.id)
  }
  pub fn owner_col(&self) -> String {
    quote(&self.owner)
  }

  /// Parameter `$n` (text) as a value of the owner column's type, for comparisons the owner
  /// index serves.
  pub fn owner_param(&self, n: usize) -> String {
    format!("CAST(${n}::text AS {})", self.owner_type)
  }

  /// The SQL expression of a project's baseline bytes (`p` is the app table's alias), when the
  /// app has a numeric size column.
  pub async fn size_expr(&self, db: &impl Db) -> Result<Option<String>> {
    // Baselines come from the default source's table only: with another source configured
    // (migration 0006), a `projects` table is not the app's project table.
    let other_source: bool = db
      .query_one(
        "SELECT to_regclass('storage_quota_meta') IS NOT NULL
            AND EXISTS (SELECT 1 FROM storage_quota_meta
                         WHERE key = 'project_source' AND value ->> 'source' <> 'default')",
        &[],
      )
      .await?
      .get(0);
    if other_source {
      return Ok(None);
    }
    let row = db
      .query_opt(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
          WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
        &[&self.t(), &self.size],
      )
      .await?;
    let numeric = row.is_some_and(|row| {
      let kind: String = row.get(0);
      matches!(kind.as_str(), "bigint" | "integer" | "smallint") || kind.starts_with("numeric")
    });
    Ok(numeric.then(|| format!("greatest(coalesce(p.{}, 0), 0)::bigint", quote(&self.size))))
  }

  /// Whether an index leads with the owner column (what seeding a user looks projects up by).
  pub async fn has_owner_index(&self, db: &impl Db) -> Result<bool> {
    self.has_index_on(db, &self.owner).await
  }

  /// Whether a valid, non-partial index leads with `column`.
  pub async fn has_index_on(&self, db: &impl Db, column: &str) -> Result<bool> {
    let row = db
      .query_one(
        "SELECT EXISTS (
           SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = to_regclass($1) AND a.attname = $2 AND i.indisvalid AND i.indpred IS NULL)",
        &[&self.t(), &column],
      )
      .await?;
    Ok(row.get(0))
  }

  /// Refuses when the table is missing, before anything is read or written.
  pub async fn check_exists(&self, db: &impl Db) -> Result<()> {
    let row = db
      .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.t()])
      .await?;
    if row.get(0) {
      Ok(())
    } else {
      Err(QuotaError::MigrationRequired(format!(
        "the app table {} does not exist",
        self.table
      )))
    }
  }
}
