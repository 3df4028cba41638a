-- Reverses 0009: each user's baseline entry becomes one `baseline {project}` entry per project
-- again (the project counters already hold those bytes, so their trigger is held off while the
-- entries are written), then the column and the functions go.

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

ALTER TABLE quota_ledger DISABLE TRIGGER quota_ledger_project_usage;
WITH totals AS (
  DELETE FROM quota_ledger WHERE baseline_projects IS NOT NULL
  RETURNING user_id, baseline_projects, created_at
)
INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes, created_at)
SELECT t.user_id, d.key, 'baseline ' || d.key, 'baseline', d.value::bigint, t.created_at
  FROM totals t CROSS JOIN LATERAL jsonb_each_text(t.baseline_projects) AS d
ON CONFLICT (user_id, idempotency_key) DO NOTHING;
ALTER TABLE quota_ledger ENABLE TRIGGER quota_ledger_project_usage;

CREATE OR REPLACE FUNCTION storage_quota_project_deleted() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM storage_quota_release_project(to_jsonb(OLD) ->> TG_ARGV[0]);
  RETURN NULL;
END
$fn$;
DROP FUNCTION storage_quota_release_project(text);
DROP FUNCTION storage_quota_release_project(text, text);
DROP FUNCTION storage_quota_project_ledger_bytes(text, text);
CREATE FUNCTION storage_quota_release_project(project text) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
  owner text;
  held bigint;
  counted bigint;
  released bigint := 0;
BEGIN
  FOR owner IN
    SELECT r.user_id FROM quota_reservations r WHERE r.project_id = project AND r.status = 'pending'
    UNION
    SELECT l.user_id FROM quota_ledger l WHERE l.project_id = project
    ORDER BY 1
  LOOP
    WITH cancelled AS (
      UPDATE quota_reservations r SET status = 'cancelled', settled_at = now()
       WHERE r.project_id = project AND r.user_id = owner AND r.status = 'pending'
      RETURNING r.bytes
    )
    SELECT coalesce(sum(bytes), 0)::bigint INTO held FROM cancelled;
    PERFORM 1 FROM user_quotas q WHERE q.user_id = owner FOR NO KEY UPDATE;
    SELECT coalesce(sum(l.bytes), 0)::bigint INTO counted
      FROM quota_ledger l WHERE l.user_id = owner AND l.project_id = project;
    counted := greatest(counted, 0);
    IF counted > 0 THEN
      INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
      VALUES (owner, project, 'orphan ' || gen_random_uuid(), 'removal', -counted);
    END IF;
    IF counted > 0 OR held > 0 THEN
      UPDATE user_quotas q
         SET used_bytes = greatest(q.used_bytes - counted, 0),
             reserved_bytes = greatest(q.reserved_bytes - held, 0),
             updated_at = now()
       WHERE q.user_id = owner;
    END IF;
    released := released + counted;
  END LOOP;
  RETURN released;
END
$fn$;

-- The refusal as 0003 wrote it (no override on INSERT).
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

-- Dropping what 0009 added is this file's purpose.
-- squawk-ignore ban-drop-column
ALTER TABLE quota_ledger DROP COLUMN baseline_projects;
