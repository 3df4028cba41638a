-- storage-quota 0005: what the batched backfill needs. Schema only, milliseconds of locks on
-- storage-quota's own tables; no app table is touched.
--
-- The backfill (src/quota/backfill/, `storage-quota backfill`) walks the app's projects in
-- committed keyset batches and records its progress here, so it resumes where a crash or a
-- Ctrl-C left it.
SET LOCAL lock_timeout = '250ms';
SET LOCAL statement_timeout = '60s';

-- A user is "seeded" once their projects' sizes have been counted as baselines, exactly once,
-- by whichever comes first: the backfill, or the first call that creates their quota row.
-- Rows that exist now were seeded by the first release of 0001 (which backfilled everything in
-- its transaction), hence the default true here; new rows start unseeded. Both ALTERs are
-- catalog changes (a constant default rewrites nothing).
ALTER TABLE user_quotas ADD COLUMN seeded boolean NOT NULL DEFAULT true;
ALTER TABLE user_quotas ALTER COLUMN seeded SET DEFAULT false;

-- One row: where the backfill is. `cursor` is the last project id done (text, whatever the id
-- type); `storage_root` is fixed by the first batch so that every record uses the same root.
CREATE TABLE storage_quota_backfill (
  id bigint PRIMARY KEY DEFAULT 1,
  phase text NOT NULL DEFAULT 'scan',
  cursor text,
  storage_root text,
  total_projects bigint,
  scanned bigint NOT NULL DEFAULT 0,
  paths_created bigint NOT NULL DEFAULT 0,
  baselines bigint NOT NULL DEFAULT 0,
  users_seeded bigint NOT NULL DEFAULT 0,
  skipped_projects bigint NOT NULL DEFAULT 0,
  catchup_rounds bigint NOT NULL DEFAULT 0,
  started_at timestamptz,
  updated_at timestamptz,
  finished_at timestamptz,
  CONSTRAINT storage_quota_backfill_one_row CHECK (id = 1),
  CONSTRAINT storage_quota_backfill_phase_check
    CHECK (phase IN ('scan', 'catchup', 'validate', 'done'))
);
INSERT INTO storage_quota_backfill (id) VALUES (1);

-- Owners whose ids cannot be used in paths (see README, "Ids"), with how many projects each
-- has: reported by name, never skipped silently.
CREATE TABLE storage_quota_backfill_skipped (
  owner text PRIMARY KEY,
  projects bigint NOT NULL
);
