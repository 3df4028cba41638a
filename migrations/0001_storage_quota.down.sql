-- Reverses 0001. The app's own tables and rows are kept; a `projects` table that 0001 created
-- is dropped only while it is still empty.
--
-- Dropping what 0001 created is the purpose of this file, and the app must have stopped using
-- storage-quota before it runs (docs/migrations.md, "Rolling back"): the drops cannot break a
-- client that still expects these tables.
-- squawk-ignore-file ban-drop-table, ban-drop-column

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

-- Usage that cannot be rebuilt is never dropped silently: baselines come back from the app's
-- sizes on the next migrate + backfill, but charges and releases, and limits other than the
-- default, exist only here. storage_quota.discard_usage = 'on' (`rollback --discard-usage`)
-- is the deliberate way past this, after a backup.
DO $$
DECLARE
  entries bigint;
  limits bigint;
  default_limit bigint := coalesce(nullif(current_setting('storage_quota.default_limit_bytes', true), ''), '1073741824')::bigint;
BEGIN
  IF current_setting('storage_quota.discard_usage', true) IS NOT DISTINCT FROM 'on' THEN
    RETURN;
  END IF;
  SELECT count(*) INTO entries FROM quota_ledger WHERE kind <> 'baseline';
  SELECT count(*) INTO limits FROM user_quotas WHERE limit_bytes <> default_limit;
  IF entries > 0 OR limits > 0 THEN
    RAISE EXCEPTION 'cannot roll back 0001_storage_quota: % usage entries in quota_ledger and % users with their own limit would be lost', entries, limits
      USING ERRCODE = 'SQ004',
            HINT = 'Nothing was changed. To keep them, keep 0001 applied (roll back only later migrations). To drop them deliberately: storage-quota rollback --backup usage-backup.dump --discard-usage (docs/migrations.md shows the restore).';
  END IF;
END
$$;

-- `projects.storage_path_id` exists only when 0001 linked to `projects` (the default source);
-- the foreign key into our table tells it apart from a column of the app's own.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_constraint
              WHERE conname = 'projects_storage_path_id_fkey'
                AND confrelid = 'project_storage_paths'::regclass) THEN
    ALTER TABLE projects DROP CONSTRAINT projects_storage_path_id_fkey;
    ALTER TABLE projects DROP COLUMN storage_path_id;
  END IF;
END
$$;

DROP TABLE simulation_jobs;
DROP TABLE quota_ledger;
DROP TABLE project_storage_paths;
DROP TABLE user_quotas;
DROP FUNCTION storage_quota_refuse_over_limit();

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM storage_quota_meta WHERE key = 'created_projects_table') THEN
    IF EXISTS (SELECT 1 FROM projects) THEN
      RAISE WARNING 'storage-quota: keeping the "projects" table it created, because it now holds rows';
    ELSE
      DROP TABLE projects;
    END IF;
  END IF;
END
$$;

DROP TABLE storage_quota_meta;
