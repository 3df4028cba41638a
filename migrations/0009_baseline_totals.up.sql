-- storage-quota 0009: a user's baseline (their existing projects' sizes, counted once when they
-- are seeded) is one ledger entry per user instead of one per project, so the backfill writes
-- per project only a row of `quota_project_usage` (one index) rather than a ledger row (five
-- indexes) and a counter row. The entry keeps each project's share in `baseline_projects`
-- ({"project id": bytes}), so per-project sums (reconcile, releases) stay exact.
-- Catalog changes and function bodies only: milliseconds of locks, whatever the table sizes.

SET LOCAL lock_timeout = '250ms';
SET LOCAL statement_timeout = '60s';

-- Nullable without a default: a catalog-only change (no rewrite).
ALTER TABLE quota_ledger ADD COLUMN baseline_projects jsonb;

-- Seeding may create a quota row already over its limit (like a downgrade) in one INSERT,
-- under the same per-transaction override the UPDATE trigger honours (0002). The function runs
-- only when a trigger's WHEN clause found the row over its limit.
CREATE OR REPLACE FUNCTION storage_quota_refuse_over_limit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  before bigint := CASE WHEN TG_OP = 'UPDATE' THEN OLD.used_bytes + OLD.reserved_bytes ELSE 0 END;
BEGIN
  IF TG_OP = 'INSERT' AND current_setting('storage_quota.allow_over_limit', true) = 'on' THEN
    RETURN NEW;
  END IF;
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

-- What a project has counted for a user, by the ledger: its own entries plus its share of the
-- user's baseline entry.
CREATE FUNCTION storage_quota_project_ledger_bytes(owner text, project text) RETURNS bigint
LANGUAGE sql STABLE AS $fn$
  SELECT coalesce((SELECT sum(l.bytes) FROM quota_ledger l WHERE l.user_id = owner AND l.project_id = project), 0)::bigint
       + coalesce((SELECT sum((l.baseline_projects ->> project)::bigint) FROM quota_ledger l
                    WHERE l.user_id = owner AND l.baseline_projects IS NOT NULL), 0)::bigint
$fn$;

-- Gives back everything a project holds (0006), now also its share of a baseline entry. Its
-- owner is found from its ledger entries, its pending reservations, or `owner` when the caller
-- knows it (a project whose only count is a baseline share has no entry of its own).
CREATE FUNCTION storage_quota_release_project(project text, owner text) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
  who text;
  held bigint;
  counted bigint;
  released bigint := 0;
BEGIN
  FOR who IN
    SELECT r.user_id FROM quota_reservations r WHERE r.project_id = project AND r.status = 'pending'
    UNION
    SELECT l.user_id FROM quota_ledger l WHERE l.project_id = project
    UNION
    SELECT owner WHERE owner IS NOT NULL
    ORDER BY 1
  LOOP
    WITH cancelled AS (
      UPDATE quota_reservations r SET status = 'cancelled', settled_at = now()
       WHERE r.project_id = project AND r.user_id = who AND r.status = 'pending'
      RETURNING r.bytes
    )
    SELECT coalesce(sum(bytes), 0)::bigint INTO held FROM cancelled;
    PERFORM 1 FROM user_quotas q WHERE q.user_id = who FOR NO KEY UPDATE;
    counted := greatest(storage_quota_project_ledger_bytes(who, project), 0);
    IF counted > 0 THEN
      INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
      VALUES (who, project, 'orphan ' || gen_random_uuid(), 'removal', -counted);
    END IF;
    IF counted > 0 OR held > 0 THEN
      UPDATE user_quotas q
         SET used_bytes = greatest(q.used_bytes - counted, 0),
             reserved_bytes = greatest(q.reserved_bytes - held, 0),
             updated_at = now()
       WHERE q.user_id = who;
    END IF;
    released := released + counted;
  END LOOP;
  RETURN released;
END
$fn$;

CREATE OR REPLACE FUNCTION storage_quota_release_project(project text) RETURNS bigint
LANGUAGE sql AS $fn$
  SELECT storage_quota_release_project(project, NULL)
$fn$;

-- The trigger recipe (README, "Deleted behind our back") passes the id column; the owner
-- column is the configured source's (recorded by 0006).
CREATE OR REPLACE FUNCTION storage_quota_project_deleted() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM storage_quota_release_project(
    to_jsonb(OLD) ->> TG_ARGV[0],
    to_jsonb(OLD) ->> (SELECT m.value ->> 'owner' FROM storage_quota_meta m WHERE m.key = 'project_source'));
  RETURN NULL;
END
$fn$;
