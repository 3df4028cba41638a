-- Reverses 0006. Refuses (changing nothing) while a project id that is not a uuid is recorded:
-- the earlier schema cannot hold it. With the default source, records of projects the app has
-- deleted are dropped first, as the foreign key restored here would have cascaded.

-- Dropping what 0006 created is this file's purpose, run only once the app no longer uses the
-- package (docs/migrations.md, "Rolling back").
-- squawk-ignore-file ban-drop-table

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

DO $$
DECLARE
  uuid_re text := '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
  other bigint;
BEGIN
  SELECT (SELECT count(*) FROM project_storage_paths WHERE project_id !~ uuid_re)
       + (SELECT count(*) FROM quota_ledger WHERE project_id !~ uuid_re)
       + (SELECT count(*) FROM quota_reservations WHERE project_id !~ uuid_re)
       + (SELECT count(*) FROM simulation_jobs WHERE project_id !~ uuid_re)
       + (SELECT count(*) FROM quota_project_usage WHERE project_id !~ uuid_re)
       + (SELECT count(*) FROM quota_project_copies WHERE project_id !~ uuid_re OR source_project_id !~ uuid_re)
       + (SELECT count(*) FROM storage_quota_projects)
    INTO other;
  IF other > 0 THEN
    RAISE EXCEPTION 'cannot roll back 0006_project_source: % rows name projects the earlier schema cannot hold (ids that are not uuids, or standalone registrations)', other
      USING ERRCODE = 'SQ004',
            HINT = 'Nothing was changed. Keep 0006 applied.';
  END IF;
END
$$;

DROP TRIGGER IF EXISTS project_storage_paths_link_project ON project_storage_paths;
DROP FUNCTION IF EXISTS storage_quota_link_project_path();
DROP FUNCTION storage_quota_project(text);
DROP FUNCTION storage_quota_project_deleted();
DROP FUNCTION storage_quota_release_project(text);
DROP TABLE storage_quota_projects;
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX quota_reservations_pending_project_idx;

ALTER TABLE project_storage_paths DROP CONSTRAINT project_storage_paths_key_check;
-- squawk-ignore changing-column-type
ALTER TABLE project_storage_paths ALTER COLUMN project_id TYPE uuid USING project_id::uuid;
-- squawk-ignore changing-column-type
ALTER TABLE quota_ledger ALTER COLUMN project_id TYPE uuid USING project_id::uuid;
-- squawk-ignore changing-column-type
ALTER TABLE quota_reservations ALTER COLUMN project_id TYPE uuid USING project_id::uuid;
-- squawk-ignore changing-column-type
ALTER TABLE simulation_jobs ALTER COLUMN project_id TYPE uuid USING project_id::uuid;
-- quota_project_usage and quota_project_copies were made with text ids (0003, 0004) and keep them.
-- Restored exactly as 0001 made it; the table is locked by the ALTERs above until commit.
-- squawk-ignore constraint-missing-not-valid
ALTER TABLE project_storage_paths ADD CONSTRAINT project_storage_paths_key_check
  CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/$');

DO $$
BEGIN
  IF (SELECT value ->> 'source' FROM storage_quota_meta WHERE key = 'project_source') = 'default' THEN
    DELETE FROM project_storage_paths sp WHERE NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = sp.project_id);
    DELETE FROM simulation_jobs j WHERE NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = j.project_id);
    ALTER TABLE project_storage_paths ADD CONSTRAINT project_storage_paths_project_id_fkey
      FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
    ALTER TABLE simulation_jobs ADD CONSTRAINT simulation_jobs_project_id_fkey
      FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
  END IF;
  DELETE FROM storage_quota_meta WHERE key = 'project_source';
END
$$;
