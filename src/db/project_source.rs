//! Where the app's projects are: which table, which id column, which owner column — or the
//! package's own registry (standalone). Migration 0006 turns this into one SQL function,
//! `storage_quota_project(id text)`, that every statement reads projects through, so our SQL
//! stays the same whatever the app's table looks like. This file checks the configuration
//! (names) and, before any migration runs, the database (the table and its column types).

use crate::db::session::Db;

use crate::error::{QuotaError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectSource {
  /// Nothing configured: the table `projects(id, user_id)`, created by migration 0001 on a
  /// database without one (the behaviour of every earlier version).
  Default,
  /// The app's own table, named by the app. Never created: `migrate()` refuses when it is missing.
  Table {
    table: String,
    id: String,
    owner: String,
  },
  /// The package keeps its own registry (`storage_quota_projects`), filled by `registerProject`.
  Standalone,
}

/// Id column types the lookup function can compare a text id with, using an index.
const ID_TYPES: &[&str] = &[
  "uuid",
  "text",
  "character varying",
  "integer",
  "bigint",
  "smallint",
];
/// Owner column types whose text form is a valid user id (Clerk `user_…`/`org_…`, uuids, numbers).
const OWNER_TYPES: &[&str] = &["text", "character varying", "uuid", "integer", "bigint"];

/// A PostgreSQL identifier as an app would write it unquoted, or `schema.table`.
fn identifier(what: &str, raw: &str, qualified: bool) -> Result<String> {
  let part_ok = |p: &str| {
    !p.is_empty()
      && p.len() <= 63
      && (p.as_bytes()[0].is_ascii_alphabetic() || p.as_bytes()[0] == b'_')
      && p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
  };
  let parts: Vec<&str> = raw.split('.').collect();
  let ok = match parts.len() {
    1 => part_ok(parts[0]),
    2 => qualified && part_ok(parts[0]) && part_ok(parts[1]),
    _ => false,
  };
  if !ok {
    return Err(QuotaError::invalid(format!(
      "projects.{what} must be a plain identifier{} (letters, digits, '_', '$', at most 63 characters, not starting with a digit), got {raw:?}",
      if qualified { " or schema.table" } else { "" }
    )));
  }
  Ok(raw.to_owned())
}

impl ProjectSource {
  /// From the `projects` option: `'standalone'`, or a table with optional column names.
  pub fn table(table: &str, id: Option<&str>, owner: Option<&str>) -> Result<Self> {
    Ok(ProjectSource::Table {
      table: identifier("table", table, true)?,
      id: identifier("id", id.unwrap_or("id"), false)?,
      owner: identifier("owner", owner.unwrap_or("user_id"), false)?,
    })
  }

  /// The settings migrations read with `current_setting`: kind, table, id column, owner column.
  pub fn settings(&self) -> [(&'static str, String); 4] {
    let (kind, table, id, owner) = match self {
      ProjectSource::Default => ("", "projects", "id", "user_id"),
      ProjectSource::Table { table, id, owner } => {
        ("table", table.as_str(), id.as_str(), owner.as_str())
      }
      ProjectSource::Standalone => ("standalone", "", "", ""),
    };
    [
      ("storage_quota.project_source", kind.to_owned()),
      ("storage_quota.projects_table", table.to_owned()),
      ("storage_quota.projects_id_column", id.to_owned()),
      ("storage_quota.projects_owner_column", owner.to_owned()),
    ]
  }

  /// How the source reads in messages, and as `storage_quota_meta`'s `project_source` records it.
  pub fn describe(&self) -> String {
    match self {
      ProjectSource::Default => "projects(id, user_id)".into(),
      ProjectSource::Table { table, id, owner } => format!("{table}({id}, {owner})"),
      ProjectSource::Standalone => "standalone".into(),
    }
  }

  /// Run before any migration: a configured table that is missing, or whose columns cannot be
  /// used, is refused here, with nothing changed. Also refuses a database whose recorded source
  /// (migration 0006) differs from an explicitly configured one.
  pub async fn check<C: Db>(&self, client: &C) -> Result<()> {
    let has_meta: bool = client
      .query_one("SELECT to_regclass('storage_quota_meta') IS NOT NULL", &[])
      .await?
      .get(0);
    let recorded: Option<String> = if has_meta {
      client
        .query_opt(
          "SELECT value ->> 'describe' FROM storage_quota_meta WHERE key = 'project_source'",
          &[],
        )
        .await?
        .and_then(|row| row.get(0))
    } else {
      None
    };
    if let Some(recorded) = recorded {
      if *self != ProjectSource::Default && recorded != self.describe() {
        return Err(QuotaError::MigrationFailed(format!(
          "this database reads projects from {recorded}, but this client is configured for {}; nothing was changed. \
           Use the same projects option everywhere (createClient, STORAGE_QUOTA_PROJECTS, --projects)",
          self.describe()
        )));
      }
      return Ok(());
    }
    if *self == ProjectSource::Default {
      return check_default(client).await;
    }
    let ProjectSource::Table { table, id, owner } = self else {
      return Ok(());
    };
    let row = client
      .query_one(
        "SELECT to_regclass($1) IS NOT NULL,
                (SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                  WHERE attrelid = to_regclass($1) AND attname = $2 AND attnum > 0 AND NOT attisdropped),
                (SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                  WHERE attrelid = to_regclass($1) AND attname = $3 AND attnum > 0 AND NOT attisdropped),
                EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
                          ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                         WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnkeyatts = 1
                           AND i.indpred IS NULL AND a.attname = $2)",
        &[table, id, owner],
      )
      .await?;
    let refuse = |why: String| {
      Err(QuotaError::MigrationFailed(format!(
        "storage-quota cannot read projects from {}: {why}. Nothing was changed",
        self.describe()
      )))
    };
    if !row.get::<_, bool>(0) {
      return refuse(format!(
        "there is no table {table:?} (storage-quota never creates the app's table: create it first, \
         name the right one with projects: {{ table, id, owner }} / --projects table:id:owner, \
         or use projects: 'standalone')"
      ));
    }
    let base = |t: &str| t.split('(').next().unwrap_or(t).trim().to_owned();
    match row.get::<_, Option<String>>(1) {
      None => return refuse(format!("table {table:?} has no column {id:?}")),
      Some(t) if !ID_TYPES.contains(&base(&t).as_str()) => {
        return refuse(format!(
          "its id column {id:?} is {t}; uuid, text, varchar, integer, bigint or smallint ids are supported"
        ))
      }
      Some(_) => {}
    }
    match row.get::<_, Option<String>>(2) {
      None => return refuse(format!("table {table:?} has no column {owner:?}")),
      Some(t) if !OWNER_TYPES.contains(&base(&t).as_str()) => {
        return refuse(format!(
          "its owner column {owner:?} is {t}; text, varchar, uuid, integer or bigint owners are supported"
        ))
      }
      Some(_) => {}
    }
    if !row.get::<_, bool>(3) {
      return refuse(format!(
        "{id:?} has no primary key or unique index (add one: one id must name one project)"
      ));
    }
    Ok(())
  }
}

/// Nothing configured and no `projects` table: 0001 creates a minimal one for a new app — but
/// not next to an existing app's tables, where it would be a look-alike of the app's real
/// project table that every call then finds empty. Tables of extensions and of storage-quota
/// itself do not count.
async fn check_default<C: Db>(client: &C) -> Result<()> {
  let row = client
    .query_one(
      "SELECT to_regclass('projects') IS NOT NULL OR to_regclass('user_quotas') IS NOT NULL,
              (SELECT string_agg(name, ', ') FROM (
                 SELECT format('%s', c.oid::regclass) AS name
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
                    AND c.relname NOT LIKE 'storage\\_quota\\_%'
                    AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                     WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
                  ORDER BY 1 LIMIT 5) t)",
      &[],
    )
    .await?;
  let (linked, others): (bool, Option<String>) = (row.get(0), row.get(1));
  match others {
    Some(others) if !linked => Err(QuotaError::MigrationFailed(format!(
      "this database has tables of its own ({others}) but none named \"projects\"; storage-quota does not create \
       a look-alike next to them. Name the app's project table (projects: {{ table, id, owner }}, \
       STORAGE_QUOTA_PROJECTS or --projects table:id:owner) or use projects: 'standalone'. Nothing was changed"
    ))),
    _ => Ok(()),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn names_are_plain_identifiers() {
    assert!(ProjectSource::table("invoices", None, Some("owner_id")).is_ok());
    assert!(ProjectSource::table("app.invoices", Some("invoice_id"), None).is_ok());
    for bad in ["", "1x", "a;drop", "a b", "\"x\"", "a.b.c", "x-y"] {
      assert!(
        ProjectSource::table(bad, None, None).is_err(),
        "accepted {bad:?}"
      );
    }
    assert!(ProjectSource::table("t", Some("a.b"), None).is_err());
    assert!(ProjectSource::table("t", None, Some(&"o".repeat(64))).is_err());
  }
}
