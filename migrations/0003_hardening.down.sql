-- Reverses 0003. Refuses (changing nothing) while two users hold reservations with the same id:
-- 0002's schema makes reservation ids global.

-- Dropping what 0003 created is this file's purpose, run only once the app no longer uses it
-- (docs/migrations.md, "Rolling back").
-- squawk-ignore-file ban-drop-table, ban-drop-column

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

DO $$
DECLARE
  shared bigint;
BEGIN
  SELECT count(*) INTO shared FROM (SELECT id FROM quota_reservations GROUP BY id HAVING count(*) > 1) s;
  IF shared > 0 THEN
    RAISE EXCEPTION 'cannot roll back 0003_hardening: % reservation id(s) are used by more than one user', shared
      USING ERRCODE = 'SQ004',
            HINT = 'Nothing was changed. Keep 0003 applied, or remove the settled duplicates first.';
  END IF;
END
$$;

CREATE OR REPLACE FUNCTION storage_quota_refuse_over_limit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'storage quota exceeded for user %: % bytes used and % reserved would pass the limit of % bytes',
    NEW.user_id, NEW.used_bytes, NEW.reserved_bytes, NEW.limit_bytes
    USING ERRCODE = 'SQ001';
END
$$;

-- Inside migrate()'s transaction CONCURRENTLY is not allowed.
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX project_storage_paths_user_id_idx;

DROP TRIGGER quota_ledger_project_usage ON quota_ledger;
DROP FUNCTION storage_quota_count_project_usage();
DROP TABLE quota_project_usage;

-- squawk-ignore require-concurrent-index-deletion
DROP INDEX quota_ledger_created_at_idx;
ALTER TABLE quota_ledger DROP COLUMN requested_bytes;

-- squawk-ignore require-concurrent-index-deletion
DROP INDEX quota_reservations_settled_idx;
ALTER TABLE quota_reservations DROP COLUMN requested_bytes;
ALTER TABLE quota_reservations DROP CONSTRAINT quota_reservations_pkey;
-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX quota_reservations_pkey ON quota_reservations (id);
ALTER TABLE quota_reservations
  ADD CONSTRAINT quota_reservations_pkey PRIMARY KEY USING INDEX quota_reservations_pkey;
