-- storage-quota 0003: reservation ids scoped to their user, the request behind each idempotency
-- key, per-project usage as a counter, indexes for hot deletes and reads, and the guard's refusal
-- with its numbers.

-- Short locks: give up (changing nothing) rather than queue the app behind a lock we cannot get.
SET LOCAL lock_timeout = '250ms';
SET LOCAL statement_timeout = '60s';

-- Reservation ids are the caller's idempotency keys, so they are scoped to the user like upload
-- and deletion keys: two users may pick the same id, and neither can learn the other holds it.
-- migrate() runs this file in one transaction, so CONCURRENTLY is impossible; the table is ours
-- and holds only pending and recently settled rows (see pruneHistory), so the build is short.
ALTER TABLE quota_reservations DROP CONSTRAINT quota_reservations_pkey;
-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX quota_reservations_pkey ON quota_reservations (user_id, id);
ALTER TABLE quota_reservations
  ADD CONSTRAINT quota_reservations_pkey PRIMARY KEY USING INDEX quota_reservations_pkey;
-- What the caller asked for. `bytes` is what is held and counted in reserved_bytes: the same,
-- except in `off` mode, which holds nothing. NULL on older rows means "equal to bytes".
ALTER TABLE quota_reservations ADD COLUMN requested_bytes bigint;
-- pruneHistory() deletes settled reservations past the retention period.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX quota_reservations_settled_idx
  ON quota_reservations (settled_at) WHERE status <> 'pending';

-- The request behind a ledger entry when it differs from the bytes counted (a deletion asking
-- for more than the project counted, an upload not counted in `off` mode): a retry is compared
-- with the request, not with the outcome.
ALTER TABLE quota_ledger ADD COLUMN requested_bytes bigint;
-- pruneHistory() folds ledger entries past the retention period into one carry entry per project.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX quota_ledger_created_at_idx ON quota_ledger (created_at);

-- Per-project usage as a counter, kept by the database in the same statement as every ledger
-- entry (whoever inserts it), so reads and releases never sum the whole ledger history.
CREATE TABLE quota_project_usage (
  user_id text NOT NULL,
  project_id uuid NOT NULL,
  used_bytes bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT quota_project_usage_pkey PRIMARY KEY (user_id, project_id)
);

CREATE FUNCTION storage_quota_count_project_usage() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO quota_project_usage AS u (user_id, project_id, used_bytes)
  SELECT e.user_id, e.project_id, sum(e.bytes)::bigint
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
CREATE TRIGGER quota_ledger_project_usage
  AFTER INSERT ON quota_ledger
  REFERENCING NEW TABLE AS new_entries
  FOR EACH STATEMENT EXECUTE FUNCTION storage_quota_count_project_usage();

-- Existing databases: the counters from the ledger as it is now (one pass; the ledger is locked
-- by the ALTER above until commit, so no entry is missed or counted twice).
INSERT INTO quota_project_usage (user_id, project_id, used_bytes)
SELECT user_id, project_id, sum(bytes)::bigint
  FROM quota_ledger WHERE project_id IS NOT NULL
 GROUP BY user_id, project_id;

-- The index on the app's projects(storage_path_id) (its `ON DELETE SET NULL` key makes every
-- path record delete look projects up by it) is built CONCURRENTLY by the backfill's first step
-- (src/quota/backfill/phases.rs), not here: no migration holds the app's table while an index
-- builds.
-- getUsage({ projects }) and reconcile list a user's project paths.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX project_storage_paths_user_id_idx ON project_storage_paths (user_id);

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
