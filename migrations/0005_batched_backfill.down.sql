-- Reverses 0005. Keeps every number: baselines, paths and links stay where the backfill put
-- them; only its bookkeeping goes. Applying 0005 again marks every existing quota row seeded
-- (they are: this rollback keeps them) and starts a backfill that finds its work done.
-- Dropping what 0005 created is this file's purpose (docs/migrations.md, "Rolling back").
-- squawk-ignore-file ban-drop-table, ban-drop-column

SET LOCAL lock_timeout = '1s';
SET LOCAL statement_timeout = '60s';

-- A quota row not yet seeded (written by an older storage-quota during a rolling deploy) would
-- come back as seeded without its baselines: finish the backfill first.
DO $$
DECLARE
  unseeded bigint;
BEGIN
  SELECT count(*) INTO unseeded FROM user_quotas WHERE NOT seeded;
  IF unseeded > 0 THEN
    RAISE EXCEPTION 'cannot roll back 0005_batched_backfill: % users are not seeded yet', unseeded
      USING ERRCODE = 'SQ004',
            HINT = 'Nothing was changed. Run storage-quota backfill to the end, then roll back again.';
  END IF;
END
$$;

-- The owner index the backfill creates when the app has none (src/quota/backfill/phases.rs).
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX IF EXISTS storage_quota_projects_owner_idx;
DROP TABLE storage_quota_backfill_skipped;
DROP TABLE storage_quota_backfill;
ALTER TABLE user_quotas DROP COLUMN seeded;
