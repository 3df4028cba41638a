-- storage-quota 0003: reservation ids scoped to their user, the request behind each idempotency
-- key, per-project usage as a counter, indexes for hot deletes and reads, and the guard's refusal
-- with its numbers.

-- Short locks: give up (changing nothing) rather than queue the app behind a lock we cannot get.
SET LOCAL lock_timeout = '250ms';
SET LOCAL statement_timeout = '60s';

-- Big tables (more than 10,000 rows, STORAGE_QUOTA_ONLINE_MIGRATION_ROWS) are prepared before
-- this file runs, by `storage-quota migrate` (src/db/online/): the indexes below built
-- CONCURRENTLY under their final names and `quota_project_usage` created, kept and filled in
-- committed batches. Then every `IF NOT EXISTS` here finds them and this file only takes its
-- locks for milliseconds. Small tables get everything here, in this transaction, as before.
-- An index left invalid by an interrupted concurrent build is dropped, never taken as built.
DO $$
DECLARE
  leftover text;
BEGIN
  FOR leftover IN
    SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE NOT i.indisvalid AND c.relname IN ('quota_reservations_user_id_id_idx',
       'quota_reservations_settled_idx', 'quota_ledger_created_at_idx', 'project_storage_paths_user_id_idx')
  LOOP
    EXECUTE format('DROP INDEX %I', leftover);
  END LOOP;
END
$$;

-- Reservation ids are the caller's idempotency keys, so they are scoped to the user like upload
-- and deletion keys: two users may pick the same id, and neither can learn the other holds it.
-- The new key's index is built first (or found prepared), then takes the primary key's place:
-- ADD PRIMARY KEY USING INDEX renames it and scans nothing (both columns are NOT NULL).
-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX IF NOT EXISTS quota_reservations_user_id_id_idx ON quota_reservations (user_id, id);
ALTER TABLE quota_reservations DROP CONSTRAINT quota_reservations_pkey;
ALTER TABLE quota_reservations
  ADD CONSTRAINT quota_reservations_pkey PRIMARY KEY USING INDEX quota_reservations_user_id_id_idx;
-- What the caller asked for. `bytes` is what is held and counted in reserved_bytes: the same,
-- except in `off` mode, which holds nothing. NULL on older rows means "equal to bytes".
ALTER TABLE quota_reservations ADD COLUMN requested_bytes bigint;
-- pruneHistory() deletes settled reservations past the retention period.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS quota_reservations_settled_idx
  ON quota_reservations (settled_at) WHERE status <> 'pending';

-- The request behind a ledger entry when it differs from the bytes counted (a deletion asking
-- for more than the project counted, an upload not counted in `off` mode): a retry is compared
-- with the request, not with the outcome.
ALTER TABLE quota_ledger ADD COLUMN requested_bytes bigint;
-- pruneHistory() folds ledger entries past the retention period into one carry entry per project.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS quota_ledger_created_at_idx ON quota_ledger (created_at);

-- Per-project usage as a counter, kept by the database in the same statement as every ledger
-- entry (whoever inserts it), so reads and releases never sum the whole ledger history. Projects
-- are named by their id as text (0006 makes every other table do the same).
CREATE TABLE IF NOT EXISTS quota_project_usage (
  user_id text NOT NULL,
  project_id text NOT NULL,
  used_bytes bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT quota_project_usage_pkey PRIMARY KEY (user_id, project_id)
);

CREATE OR REPLACE FUNCTION storage_quota_count_project_usage() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO quota_project_usage AS u (user_id, project_id, used_bytes)
  SELECT e.user_id, e.project_id::text, sum(e.bytes)::bigint
    FROM new_entries e
   WHERE e.project_id IS NOT NULL AND e.idempotency_key NOT LIKE 'carry %'
   GROUP BY e.user_id, e.project_id
  ON CONFLICT (user_id, project_id)
  DO UPDATE SET used_bytes = u.used_bytes + EXCLUDED.used_bytes, updated_at = now();
  RETURN NULL;
END
$$;

-- One statement-level trigger: a batch of uploads (one INSERT of many rows) is one upsert per
-- project. Only INSERTs count, and not pruneHistory()'s `carry …` entries, which only fold
-- entries counted before (no upload, deletion or reservation key contains a space).
-- (Re-created when the preparation made it: the same trigger.)
DROP TRIGGER IF EXISTS quota_ledger_project_usage ON quota_ledger;
CREATE TRIGGER quota_ledger_project_usage
  AFTER INSERT ON quota_ledger
  REFERENCING NEW TABLE AS new_entries
  FOR EACH STATEMENT EXECUTE FUNCTION storage_quota_count_project_usage();

-- Existing databases: the counters from the ledger as it is now (one pass; the ledger is locked
-- by the ALTER above until commit, so no entry is missed or counted twice). A prepared big
-- ledger was counted by the preparation instead: every entry up to the one the trigger started
-- after, in batches (`usage_prefill` in storage_quota_meta), refused here unless complete.
DO $$
DECLARE
  prefill jsonb := (SELECT value FROM storage_quota_meta WHERE key = 'usage_prefill');
BEGIN
  IF prefill IS NULL THEN
    INSERT INTO quota_project_usage (user_id, project_id, used_bytes)
    SELECT user_id, project_id::text, sum(bytes)::bigint
      FROM quota_ledger WHERE project_id IS NOT NULL
     GROUP BY user_id, project_id;
  ELSIF (prefill ->> 'cursor')::bigint < (prefill ->> 'boundary')::bigint THEN
    RAISE EXCEPTION 'the preparation of quota_project_usage is not finished (% of % ledger ids counted)',
      prefill ->> 'cursor', prefill ->> 'boundary'
      USING ERRCODE = 'SQ005', HINT = 'Run `npx storage-quota migrate` to finish it. Nothing was changed.';
  ELSE
    DELETE FROM storage_quota_meta WHERE key = 'usage_prefill';
  END IF;
END
$$;

-- The index on the app's projects(storage_path_id) (its `ON DELETE SET NULL` key makes every
-- path record delete look projects up by it) is built CONCURRENTLY by the backfill's first step
-- (src/quota/backfill/phases.rs), not here: no migration holds the app's table while an index
-- builds.
-- getUsage({ projects }) and reconcile list a user's project paths.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS project_storage_paths_user_id_idx ON project_storage_paths (user_id);

-- The guard's refusal carries its numbers in DETAIL (JSON), so the library reports it as
-- QUOTA_EXCEEDED with them, like its own refusals.
CREATE OR REPLACE FUNCTION storage_quota_refuse_over_limit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  before bigint := CASE WHEN TG_OP = 'UPDATE' THEN OLD.used_bytes + OLD.reserved_bytes ELSE 0 END;
BEGIN
  RAISE EXCEPTION 'storage quota exceeded for user %: % bytes used and % reserved would pass the limit of % bytes',
    NEW.user_id, NEW.used_bytes, NEW.reserved_bytes, NEW.limit_bytes
    USING ERRCODE = 'SQ001',
          DETAIL = json_build_object(
            'requestedBytes', NEW.used_bytes + NEW.reserved_bytes - before,
            'usedBytes', CASE WHEN TG_OP = 'UPDATE' THEN OLD.used_bytes ELSE 0 END,
            'reservedBytes', CASE WHEN TG_OP = 'UPDATE' THEN OLD.reserved_bytes ELSE 0 END,
            'limitBytes', NEW.limit_bytes)::text;
END
$$;
