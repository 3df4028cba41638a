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
  /// The table as SQL (`"public"."invoices"`), when read from the recorded project source.
  pub relation: Option<String>,
}

impl Default for AppTable {
  fn default() -> Self {
    AppTable {
      table: "projects".into(),
      id: "id".into(),
      owner: "user_id".into(),
      size: "size_bytes".into(),
      owner_type: "text".into(),
      relation: None,
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
  /// The project source migration 0006 recorded (`storage_quota_meta`): the default
  /// `projects(id, user_id)` or the app's configured table, with its owner column's type. The
  /// size column is `size_bytes` on either, counted when it exists and is numeric.
  pub async fn load(db: &impl Db) -> Result<AppTable> {
    let row = db
      .query_opt(
        "SELECT value ->> 'table', value ->> 'id', value ->> 'owner', value ->> 'ownerType',
                value ->> 'source' = 'default'
           FROM storage_quota_meta WHERE key = 'project_source'",
        &[],
      )
      .await?;
    let Some(row) = row else {
      return Ok(AppTable::default());
    };
    let (relation, id, owner, owner_type): (String, String, String, Option<String>) =
      (row.get(0), row.get(1), row.get(2), row.get(3));
    if row.get::<_, Option<bool>>(4) == Some(true) {
      return Ok(AppTable::default());
    }
    Ok(AppTable {
      table: relation.clone(),
      id,
      owner,
      owner_type: match owner_type.as_deref() {
        Some(kind @ ("uuid" | "integer" | "bigint")) => kind.into(),
        _ => "text".into(),
      },
      relation: Some(relation),
      ..AppTable::default()
    })
  }

  /// Whether this is the default source (`projects`, with its `storage_path_id` link).
  pub fn is_default(&self) -> bool {
    self.relation.is_none()
  }

  pub fn t(&self) -> String {
    self.relation.clone().unwrap_or_else(|| quote(&self.table))
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
    self.as_owner(&format!("${n}::text"))
  }

  /// A text expression as a value of the owner column's type; a text that is not one of that
  /// type's values (a user id that is not a uuid, for a uuid column) becomes NULL, matching no
  /// row, instead of failing.
  pub fn as_owner(&self, text: &str) -> String {
    match self.owner_type.as_str() {
      "uuid" => format!(
        "(CASE WHEN {text} ~ '^[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$' THEN {text} END)::uuid"
      ),
      // Digits that always fit the type.
      "integer" => format!("(CASE WHEN {text} ~ '^(0|[1-9][0-9]{{0,8}})$' THEN {text} END)::integer"),
      "bigint" => format!("(CASE WHEN {text} ~ '^(0|[1-9][0-9]{{0,17}})$' THEN {text} END)::bigint"),
      _ => format!("{text}::text"),
    }
  }

  /// The SQL expression of a project's baseline bytes (`p` is the app table's alias), when the
  /// app has a numeric size column.
  pub async fn size_expr(&self, db: &impl Db) -> Result<Option<String>> {
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
