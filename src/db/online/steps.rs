//! Each task's next unit of work: one DDL statement, or one committed batch.

use tokio_postgres::error::SqlState;

use super::plan::{usage_counters_sql, Kind, Task, TABLES};
use crate::db::session::PgConnection;

type PgResult<T> = std::result::Result<T, tokio_postgres::Error>;

impl Task {
  /// One unit of work: one statement, or one committed batch of at most `batch` rows.
  pub async fn run(&self, conn: &mut PgConnection, batch: i64) -> PgResult<()> {
    let t = self.table;
    match &self.kind {
      Kind::Index {
        name,
        unique,
        definition,
      } => {
        let unique = if *unique { "UNIQUE " } else { "" };
        // CONCURRENTLY: app reads and writes go on while it builds. It cannot run in a
        // transaction, and a build that was interrupted leaves an invalid index: dropped first.
        // Each its own simple query (several in one would make a transaction block). Behind
        // a transaction pooler there is no session timeout to lift (it is set per transaction),
        // and a session SET would stay with whichever server connection ran it.
        let session = !conn.pooler();
        if session {
          conn
            .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
            .await?;
        }
        let built = async {
          conn
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
            .await?;
          conn
            .batch_execute(&format!(
              "CREATE {unique}INDEX CONCURRENTLY {name} ON {t} {definition}"
            ))
            .await
        }
        .await;
        if !session {
          return built;
        }
        let reset = conn
          .batch_execute("RESET lock_timeout; RESET statement_timeout")
          .await;
        built.and(reset)
      }
      Kind::UsageCounters => {
        let tx = conn.transaction().await?;
        tx.batch_execute(&format!(
          "SET LOCAL lock_timeout = '{SHORT_LOCK}'; {}",
          usage_counters_sql()
        ))
        .await?;
        // CREATE TRIGGER waited for every transaction writing the ledger, and holds later ones
        // off until commit: every entry up to this id is committed and not counted by the
        // trigger, every later one will be.
        tx.execute(
          "INSERT INTO storage_quota_meta (key, value)
           SELECT 'usage_prefill', jsonb_build_object('boundary', coalesce(max(id), 0), 'cursor', 0)
             FROM quota_ledger
           ON CONFLICT (key) DO NOTHING",
          &[],
        )
        .await?;
        tx.commit().await
      }
      Kind::UsageFill => {
        let tx = conn.transaction().await?;
        tx.batch_execute(&format!(
          "SET LOCAL lock_timeout = '{BATCH_LOCK}'; SET LOCAL synchronous_commit = off"
        ))
        .await?;
        // The bookkeeping row first, locked: two preparations take turns here.
        let row = tx
          .query_one(
            "SELECT (value ->> 'cursor')::bigint, (value ->> 'boundary')::bigint
               FROM storage_quota_meta WHERE key = 'usage_prefill' FOR UPDATE",
            &[],
          )
          .await?;
        let (cursor, boundary): (i64, i64) = (row.get(0), row.get(1));
        let upto = boundary.min(cursor.saturating_add(batch));
        // Each entry is counted in the transaction that moves the cursor past it: once.
        tx.execute(
          "INSERT INTO quota_project_usage AS u (user_id, project_id, used_bytes)
           SELECT user_id, project_id::text, sum(bytes)::bigint FROM quota_ledger
            WHERE id > $1 AND id <= $2 AND project_id IS NOT NULL
            GROUP BY user_id, project_id ORDER BY 1, 2
           ON CONFLICT (user_id, project_id)
           DO UPDATE SET used_bytes = u.used_bytes + EXCLUDED.used_bytes, updated_at = now()",
          &[&cursor, &upto],
        )
        .await?;
        tx.execute(
          "UPDATE storage_quota_meta SET value = jsonb_set(value, '{cursor}', to_jsonb($1::bigint))
            WHERE key = 'usage_prefill'",
          &[&upto],
        )
        .await?;
        tx.commit().await
      }
      Kind::ShadowColumn => {
        let tx = conn.transaction().await?;
        tx.batch_execute(&format!(
          "SET LOCAL lock_timeout = '{SHORT_LOCK}';
           CREATE OR REPLACE FUNCTION storage_quota_project_id_text() RETURNS trigger
           LANGUAGE plpgsql AS $$
           BEGIN
             NEW.project_id_text := NEW.project_id::text;
             RETURN NEW;
           END
           $$;
           ALTER TABLE {t} ADD COLUMN IF NOT EXISTS project_id_text text;
           DROP TRIGGER IF EXISTS {t}_project_id_text ON {t};
           CREATE TRIGGER {t}_project_id_text BEFORE INSERT OR UPDATE OF project_id ON {t}
             FOR EACH ROW EXECUTE FUNCTION storage_quota_project_id_text();
           INSERT INTO storage_quota_meta (key, value)
           SELECT 'prepare_fill:{t}', jsonb_build_object('cursor', NULL, 'rows', 0, 'done', false,
                                                        'stop', (SELECT x.id::text FROM {t} x ORDER BY x.id DESC LIMIT 1))
           ON CONFLICT (key) DO NOTHING"
        ))
        .await?;
        tx.commit().await
      }
      Kind::ShadowFill => {
        let key_type = TABLES.iter().find(|x| x.0 == t).map_or("uuid", |x| x.1);
        let tx = conn.transaction().await?;
        tx.batch_execute(&format!(
          "SET LOCAL lock_timeout = '{BATCH_LOCK}'; SET LOCAL synchronous_commit = off"
        ))
        .await?;
        // `stop`: the last key when the trigger came (CREATE TRIGGER waited for every writer of
        // the table, so each row up to it was there); every later row was filled by the trigger.
        let state = tx
          .query_one(
            "SELECT value ->> 'cursor', value ->> 'stop' FROM storage_quota_meta
              WHERE key = 'prepare_fill:' || $1 FOR UPDATE",
            &[&t],
          )
          .await?;
        let (cursor, stop): (Option<String>, Option<String>) = (state.get(0), state.get(1));
        // `$1` is bound either way, so both forms take the same parameters; each is a plain
        // range on the key (an `OR` would keep the planner off the key's index).
        let after = if cursor.is_some() {
          format!("id > $1::text::{key_type}")
        } else {
          "$1::text IS NULL".to_owned()
        };
        // The last key of the next `batch` rows; every row with a key up to it is filled (a
        // range, so rows sharing a key are all in it).
        let upper: Option<String> = tx
          .query_opt(
            &format!(
              "SELECT s.id::text FROM (SELECT id FROM {t} WHERE {after} AND id <= $3::text::{key_type}
                ORDER BY id LIMIT $2) s ORDER BY s.id DESC LIMIT 1"
            ),
            &[&cursor, &batch, &stop],
          )
          .await?
          .map(|row| row.get(0));
        let Some(upper) = upper else {
          tx.execute(
            "UPDATE storage_quota_meta SET value = jsonb_set(value, '{done}', 'true')
              WHERE key = 'prepare_fill:' || $1",
            &[&t],
          )
          .await?;
          return tx.commit().await;
        };
        let filled = tx
          .execute(
            &format!(
              "UPDATE {t} SET project_id_text = project_id::text
                WHERE {after} AND id <= $2::text::{key_type}
                  AND project_id IS NOT NULL AND project_id_text IS DISTINCT FROM project_id::text"
            ),
            &[&cursor, &upper],
          )
          .await?;
        tx.execute(
          "UPDATE storage_quota_meta
              SET value = value || jsonb_build_object('cursor', $2::text,
                                                      'rows', (value ->> 'rows')::bigint + $3::bigint)
            WHERE key = 'prepare_fill:' || $1",
          &[&t, &upper, &(filled as i64)],
        )
        .await?;
        tx.commit().await
      }
      Kind::ObjectKeyColumn => {
        let tx = conn.transaction().await?;
        tx.batch_execute(&format!(
          "SET LOCAL lock_timeout = '{SHORT_LOCK}'; ALTER TABLE {t} ADD COLUMN IF NOT EXISTS object_key text"
        ))
        .await?;
        tx.commit().await
      }
      Kind::Check { name, expression } => {
        let exists = conn
          .query_opt(
            "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2",
            &[&t, name],
          )
          .await?
          .is_some();
        if !exists {
          // Catalog only: ACCESS EXCLUSIVE for milliseconds, given up on quickly if the app
          // holds the table.
          let tx = conn.transaction().await?;
          tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{SHORT_LOCK}';
             ALTER TABLE {t} ADD CONSTRAINT {name} CHECK ({expression}) NOT VALID"
          ))
          .await?;
          return tx.commit().await;
        }
        // SHARE UPDATE EXCLUSIVE: no app read or write waits for the scan.
        let tx = conn.transaction().await?;
        tx.batch_execute(&format!(
          "SET LOCAL lock_timeout = '60s'; SET LOCAL statement_timeout = 0;
           ALTER TABLE {t} VALIDATE CONSTRAINT {name}"
        ))
        .await?;
        tx.commit().await
      }
    }
  }
}

/// DDL that takes ACCESS EXCLUSIVE (for a catalog change) gives up this soon rather than queue
/// the app's statements behind its waiting lock request; the step is simply tried again.
const SHORT_LOCK: &str = "250ms";
/// A batch waits at most this long for a row an app transaction holds.
const BATCH_LOCK: &str = "500ms";

/// Errors after which the same step is tried again: nothing was changed.
pub(super) fn retryable(error: &tokio_postgres::Error) -> bool {
  matches!(
    error.code(),
    Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE
      || *c == SqlState::T_R_DEADLOCK_DETECTED
      || *c == SqlState::T_R_SERIALIZATION_FAILURE
  )
}
