//! What the preparation does to each big table, as a list of tasks, and how to tell one is
//! done (from the catalog and `storage_quota_meta`, so a crash loses nothing).

use crate::db::session::Db;

type PgResult<T> = std::result::Result<T, tokio_postgres::Error>;

/// The four tables 0.1.0 made with uuid project ids, their keys' types, and whether
/// `project_id` is NOT NULL.
pub(super) const TABLES: [(&str, &str, bool); 4] = [
  ("quota_ledger", "bigint", false),
  ("project_storage_paths", "uuid", true),
  ("quota_reservations", "uuid", true),
  ("simulation_jobs", "uuid", true),
];

/// The statements of 0003 that create `quota_project_usage` and the trigger that keeps it, each
/// idempotent (`IF NOT EXISTS`, `OR REPLACE`, `DROP … IF EXISTS` first): the preparation runs
/// them verbatim, so the counters and their trigger are 0003's own, and 0003 finds them made.
pub(super) fn usage_counters_sql() -> &'static str {
  const FILE: &str = include_str!("../../../migrations/0003_hardening.up.sql");
  let start = FILE
    .find("CREATE TABLE IF NOT EXISTS quota_project_usage")
    .expect("0003 creates quota_project_usage");
  let end = FILE[start..]
    .find("-- Existing databases:")
    .expect("0003 fills the counters after its trigger");
  &FILE[start..start + end]
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
  /// `CREATE [UNIQUE] INDEX CONCURRENTLY name ON …` (`definition` is what follows `name`).
  Index {
    name: &'static str,
    unique: bool,
    definition: &'static str,
  },
  /// 0003's counters made ahead, and the last ledger id they do not count yet (`usage_prefill`).
  UsageCounters,
  /// Counters for every ledger entry up to that id, in batches of ids.
  UsageFill,
  /// `project_id_text`, and the trigger filling it for every row written from then on.
  ShadowColumn,
  /// The rows that were there before, in keyset batches.
  ShadowFill,
  /// 0008's nullable `object_key` added ahead (catalog only), so its index can be built first.
  ObjectKeyColumn,
  /// A CHECK added `NOT VALID` (milliseconds), then validated (a scan that blocks no writer).
  Check {
    name: &'static str,
    expression: &'static str,
  },
}

#[derive(Debug, Clone)]
pub(super) struct Task {
  pub table: &'static str,
  pub kind: Kind,
}

impl Task {
  pub fn describe(&self) -> String {
    let t = self.table;
    match &self.kind {
      Kind::Index { name, .. } => format!("{t}: index {name} (built concurrently)"),
      Kind::UsageCounters => "quota_project_usage: created, with its trigger".into(),
      Kind::UsageFill => "quota_project_usage: counting existing ledger entries".into(),
      Kind::ShadowColumn => format!("{t}: column project_id_text and its trigger"),
      Kind::ShadowFill => format!("{t}: filling project_id_text"),
      Kind::ObjectKeyColumn => format!("{t}: column object_key"),
      Kind::Check { name, .. } => format!("{t}: constraint {name} (validated)"),
    }
  }

  /// Whether the catalog (and the fills' bookkeeping) say this task is complete.
  pub async fn done(&self, db: &impl Db) -> PgResult<bool> {
    let t = self.table;
    let row = match &self.kind {
      Kind::Index { name, .. } => {
        db.query_opt(
          "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
          &[name],
        )
        .await?
      }
      Kind::UsageCounters => {
        db.query_opt(
          "SELECT true FROM storage_quota_meta WHERE key = 'usage_prefill'",
          &[],
        )
        .await?
      }
      Kind::UsageFill => {
        db.query_opt(
          "SELECT (value ->> 'cursor')::bigint >= (value ->> 'boundary')::bigint
             FROM storage_quota_meta WHERE key = 'usage_prefill'",
          &[],
        )
        .await?
      }
      Kind::ShadowColumn => {
        db.query_opt(
          "SELECT true FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $1 || '_project_id_text'",
          &[&t],
        )
        .await?
      }
      Kind::ShadowFill => {
        db.query_opt(
          "SELECT (value ->> 'done')::boolean FROM storage_quota_meta WHERE key = 'prepare_fill:' || $1",
          &[&t],
        )
        .await?
      }
      Kind::ObjectKeyColumn => {
        db.query_opt(
          "SELECT true FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = 'object_key' AND NOT attisdropped",
          &[&t],
        )
        .await?
      }
      Kind::Check { name, .. } => {
        db.query_opt(
          "SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2",
          &[&t, name],
        )
        .await?
      }
    };
    Ok(row.is_some_and(|r| r.get::<_, Option<bool>>(0) == Some(true)))
  }

  /// (rows done, rows in all) for a fill, from its bookkeeping and the planner's row estimate.
  pub async fn rows(&self, db: &impl Db) -> PgResult<(i64, Option<i64>)> {
    let sql = match self.kind {
      Kind::UsageFill => {
        "SELECT (value ->> 'cursor')::bigint, (value ->> 'boundary')::bigint
           FROM storage_quota_meta WHERE key = 'usage_prefill'"
      }
      Kind::ShadowFill => {
        "SELECT (m.value ->> 'rows')::bigint, greatest(c.reltuples, 0)::bigint
           FROM storage_quota_meta m, pg_class c
          WHERE m.key = 'prepare_fill:' || $1 AND c.oid = to_regclass($1)"
      }
      _ => return Ok((0, None)),
    };
    let params: &[crate::db::session::Param<'_>] = match self.kind {
      Kind::ShadowFill => &[&self.table],
      _ => &[],
    };
    Ok(match db.query_opt(sql, params).await? {
      Some(row) => (row.get::<_, Option<i64>>(0).unwrap_or(0), row.get(1)),
      None => (0, None),
    })
  }
}

/// Every task for the big tables among `tables`, in order, for the pending migrations 0003
/// (`hardening`) and 0006 (`project_source`). Fills come before the indexes over their rows, so
/// the fills' updates maintain as few indexes as possible.
pub(super) fn tasks(big: &[&'static str], pending: Pending) -> Vec<Task> {
  let Pending {
    v3: pending_0003,
    v6: pending_0006,
    v8: pending_0008,
  } = pending;
  let mut out = Vec::new();
  let has = |t: &str| big.contains(&t);
  let task = |table, kind| Task { table, kind };
  if pending_0003 && has("quota_ledger") {
    out.push(task("quota_ledger", Kind::UsageCounters));
    out.push(task("quota_ledger", Kind::UsageFill));
  }
  if pending_0006 {
    for (t, _, not_null) in TABLES {
      if !has(t) {
        continue;
      }
      out.push(task(t, Kind::ShadowColumn));
      out.push(task(t, Kind::ShadowFill));
      let (name, expression) = check_of(t, not_null);
      out.push(task(t, Kind::Check { name, expression }));
    }
    if has("project_storage_paths") {
      out.push(task(
        "project_storage_paths",
        Kind::Check {
          name: "project_storage_paths_key_check_any",
          expression: r"key ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}/[A-Za-z0-9][A-Za-z0-9_-]{0,127}/$'",
        },
      ));
    }
  }
  if pending_0008 && has("quota_reservations") {
    out.push(task("quota_reservations", Kind::ObjectKeyColumn));
    out.push(task(
      "quota_reservations",
      Kind::Index {
        name: "quota_reservations_object_idx",
        unique: false,
        // Over the column that 0006 will name project_id (or that it already did).
        definition: if pending_0006 {
          "(project_id_text, object_key) WHERE object_key IS NOT NULL"
        } else {
          "(project_id, object_key) WHERE object_key IS NOT NULL"
        },
      },
    ));
  }
  for (table, name, unique, definition, for_0003) in INDEXES {
    if has(table) && if for_0003 { pending_0003 } else { pending_0006 } {
      out.push(task(
        table,
        Kind::Index {
          name,
          unique,
          definition,
        },
      ));
    }
  }
  out
}

/// Which of the migrations with big-table work are pending.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
  pub v3: bool,
  pub v6: bool,
  pub v8: bool,
}

/// The CHECK proving a table's column filled (what lets 0006's SET NOT NULL skip its scan).
fn check_of(table: &str, not_null: bool) -> (&'static str, &'static str) {
  let name = match table {
    "quota_ledger" => "quota_ledger_project_id_text_check",
    "project_storage_paths" => "project_storage_paths_project_id_text_check",
    "quota_reservations" => "quota_reservations_project_id_text_check",
    _ => "simulation_jobs_project_id_text_check",
  };
  let expression = if not_null {
    "project_id_text IS NOT NULL"
  } else {
    "project_id IS NULL OR project_id_text IS NOT NULL"
  };
  (name, expression)
}

/// (table, index, unique, definition, for 0003 rather than 0006). 0003's under their final
/// names (its `IF NOT EXISTS` finds them); 0006's over `project_id_text`, renamed by 0006.
const INDEXES: [(&str, &str, bool, &str, bool); 9] = [
  (
    "quota_ledger",
    "quota_ledger_project_id_text_idx",
    false,
    "(project_id_text)",
    false,
  ),
  (
    "quota_ledger",
    "quota_ledger_user_project_text_idx",
    false,
    "(user_id, project_id_text)",
    false,
  ),
  (
    "quota_ledger",
    "quota_ledger_created_at_idx",
    false,
    "(created_at)",
    true,
  ),
  (
    "project_storage_paths",
    "project_storage_paths_project_id_text_key",
    true,
    "(project_id_text)",
    false,
  ),
  (
    "project_storage_paths",
    "project_storage_paths_user_id_idx",
    false,
    "(user_id)",
    true,
  ),
  (
    "quota_reservations",
    "quota_reservations_pending_project_idx",
    false,
    "(project_id_text) WHERE status = 'pending'",
    false,
  ),
  (
    "quota_reservations",
    "quota_reservations_user_id_id_idx",
    true,
    "(user_id, id)",
    true,
  ),
  (
    "quota_reservations",
    "quota_reservations_settled_idx",
    false,
    "(settled_at) WHERE status <> 'pending'",
    true,
  ),
  (
    "simulation_jobs",
    "simulation_jobs_project_id_text_idx",
    false,
    "(project_id_text)",
    false,
  ),
];

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn usage_counters_are_0003s_idempotent_statements() {
    let sql = usage_counters_sql();
    assert!(sql.contains("CREATE OR REPLACE FUNCTION storage_quota_count_project_usage()"));
    assert!(sql.contains("DROP TRIGGER IF EXISTS quota_ledger_project_usage"));
    assert!(sql.contains("CREATE TRIGGER quota_ledger_project_usage"));
    assert!(!sql.contains("INSERT INTO quota_project_usage (user_id"));
  }

  #[test]
  fn fills_come_before_the_indexes_over_them() {
    let all = tasks(
      &[
        "quota_ledger",
        "project_storage_paths",
        "quota_reservations",
        "simulation_jobs",
      ],
      Pending {
        v3: true,
        v6: true,
        v8: true,
      },
    );
    let last_fill = all
      .iter()
      .rposition(|t| matches!(t.kind, Kind::ShadowFill | Kind::UsageFill))
      .unwrap();
    let first_index = all
      .iter()
      .position(|t| matches!(t.kind, Kind::Index { .. }))
      .unwrap();
    assert!(last_fill < first_index);
    assert_eq!(all.len(), 2 + 4 * 3 + 1 + 2 + 9);
  }
}
