-- storage-quota 0001: quotas, storage paths, the upload ledger and simulation jobs.
--
-- Runs in one transaction opened by migrate(), which sets two settings with SET LOCAL first:
--   storage_quota.default_limit_bytes  the quota seeded for existing owners (default 1 GiB)
--   storage_quota.storage_root         absolute local storage root, for existing projects' paths
-- To apply this file with another tool, SET LOCAL both in the same transaction.
-- When storage_quota.project_source is set (the app named its own project table, or chose the
-- standalone registry), nothing here reads or changes `projects`: migration 0006 links to the
-- configured source instead. Unset, this file behaves as it always did.

-- Short locks: give up (and roll back, changing nothing) rather than queue the app's queries
-- behind a lock we cannot get, and bound how long any statement holds what it took.
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

-- Facts the down migration needs (did we create `projects`?).
CREATE TABLE storage_quota_meta (
  key text PRIMARY KEY,
  value jsonb NOT NULL
);

-- The app's `projects` table: create a minimal one on an empty database; otherwise check that
-- the existing one can be linked to (uuid `id` with a unique index, text `user_id`), and stop
-- with a clear message before changing anything if it cannot.
DO $$
DECLARE
  id_type text;
  owner_type text;
  id_unique boolean;
BEGIN
  IF coalesce(current_setting('storage_quota.project_source', true), '') <> '' THEN
    RETURN;
  END IF;
  IF to_regclass('projects') IS NULL THEN
    CREATE TABLE projects (
      id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
      user_id text NOT NULL,
      name text NOT NULL DEFAULT '',
      created_at timestamptz NOT NULL DEFAULT now(),
      updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX projects_user_id_idx ON projects (user_id);
    INSERT INTO storage_quota_meta (key, value) VALUES ('created_projects_table', 'true');
    RETURN;
  END IF;

  SELECT format_type(a.atttypid, a.atttypmod) INTO id_type
    FROM pg_attribute a
   WHERE a.attrelid = 'projects'::regclass AND a.attname = 'id' AND a.attnum > 0 AND NOT a.attisdropped;
  SELECT format_type(a.atttypid, a.atttypmod) INTO owner_type
    FROM pg_attribute a
   WHERE a.attrelid = 'projects'::regclass AND a.attname = 'user_id' AND a.attnum > 0 AND NOT a.attisdropped;
  SELECT EXISTS (
    SELECT 1
      FROM pg_index i
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
     WHERE i.indrelid = 'projects'::regclass AND i.indisunique AND i.indnkeyatts = 1
       AND i.indpred IS NULL AND a.attname = 'id'
  ) INTO id_unique;

  IF id_type IS DISTINCT FROM 'uuid' THEN
    RAISE EXCEPTION 'storage-quota cannot use the existing "projects" table: column "id" must be uuid, found %',
      coalesce(id_type, 'no such column')
      USING ERRCODE = 'SQ002',
            HINT = 'storage-quota links storage paths to projects(id uuid). Nothing was changed.';
  END IF;
  IF owner_type IS NULL OR owner_type NOT IN ('text', 'character varying') AND owner_type NOT LIKE 'character varying(%' THEN
    RAISE EXCEPTION 'storage-quota cannot use the existing "projects" table: column "user_id" must be text, found %',
      coalesce(owner_type, 'no such column')
      USING ERRCODE = 'SQ002',
            HINT = 'storage-quota reads the owner of a project from projects.user_id. Nothing was changed.';
  END IF;
  IF NOT id_unique THEN
    RAISE EXCEPTION 'storage-quota cannot use the existing "projects" table: "id" has no primary key or unique index'
      USING ERRCODE = 'SQ002',
            HINT = 'Add a primary key on projects(id) first. Nothing was changed.';
  END IF;
END
$$;

-- One row per user. The limit may be lowered below usage (a plan downgrade); growth past the
-- limit is refused by the triggers below, whoever writes.
CREATE TABLE user_quotas (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id text NOT NULL,
  limit_bytes bigint NOT NULL,
  used_bytes bigint NOT NULL DEFAULT 0,
  reserved_bytes bigint NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT user_quotas_user_id_key UNIQUE (user_id),
  CONSTRAINT user_quotas_limit_bytes_check CHECK (limit_bytes >= 0),
  CONSTRAINT user_quotas_used_bytes_check CHECK (used_bytes >= 0),
  CONSTRAINT user_quotas_reserved_bytes_check CHECK (reserved_bytes >= 0)
);

-- Where each project's files live. `key` is relative (`{userId}/{projectId}/`) so a move to
-- object storage changes `backend` and `path`, not the key. `quota_id` is the project's link to
-- the quota it is charged to (the app has no user_projects table: ownership is projects.user_id).
CREATE TABLE project_storage_paths (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  project_id uuid NOT NULL,
  user_id text NOT NULL,
  quota_id uuid NOT NULL REFERENCES user_quotas (id),
  backend text NOT NULL DEFAULT 'local',
  key text NOT NULL,
  path text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT project_storage_paths_project_id_key UNIQUE (project_id),
  CONSTRAINT project_storage_paths_backend_key_key UNIQUE (backend, key),
  CONSTRAINT project_storage_paths_backend_check CHECK (backend IN ('local', 's3')),
  -- Defence in depth: a key is always two safe segments, whatever wrote it.
  CONSTRAINT project_storage_paths_key_check
    CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/$')
);
CREATE INDEX project_storage_paths_quota_id_idx ON project_storage_paths (quota_id);

-- Every change to a user's usage, with its idempotency key: the same upload id counts once.
CREATE TABLE quota_ledger (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id text NOT NULL,
  -- No foreign key: the history stays when a project is deleted.
  project_id uuid,
  idempotency_key text NOT NULL,
  kind text NOT NULL,
  bytes bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT quota_ledger_user_key_key UNIQUE (user_id, idempotency_key),
  CONSTRAINT quota_ledger_kind_check CHECK (kind IN ('upload', 'baseline')),
  CONSTRAINT quota_ledger_bytes_check CHECK (bytes >= 0)
);
CREATE INDEX quota_ledger_project_id_idx ON quota_ledger (project_id);

-- Phase 2: simulation runs per project.
CREATE TABLE simulation_jobs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  project_id uuid NOT NULL,
  user_id text NOT NULL,
  status text NOT NULL DEFAULT 'queued',
  parameters jsonb NOT NULL DEFAULT '{}'::jsonb,
  output_path text,
  error text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  finished_at timestamptz,
  CONSTRAINT simulation_jobs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'))
);
CREATE INDEX simulation_jobs_project_id_idx ON simulation_jobs (project_id);
CREATE INDEX simulation_jobs_user_id_status_idx ON simulation_jobs (user_id, status);

-- The links to `projects` (named as PostgreSQL names inline ones), only for the default source.
DO $$
BEGIN
  IF coalesce(current_setting('storage_quota.project_source', true), '') = '' THEN
    ALTER TABLE project_storage_paths ADD CONSTRAINT project_storage_paths_project_id_fkey
      FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
    ALTER TABLE simulation_jobs ADD CONSTRAINT simulation_jobs_project_id_fkey
      FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
  END IF;
END
$$;

-- Data migration for existing projects. Owners whose ids are not valid storage-quota user ids
-- (see README, "Ids") are skipped and reported; their projects keep working as before.
DO $$
DECLARE
  default_limit bigint := coalesce(nullif(current_setting('storage_quota.default_limit_bytes', true), ''), '1073741824')::bigint;
  storage_root text := rtrim(nullif(current_setting('storage_quota.storage_root', true), ''), '/');
  has_sizes boolean;
  skipped bigint;
BEGIN
  IF coalesce(current_setting('storage_quota.project_source', true), '') <> '' THEN
    RETURN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM projects) THEN
    RETURN;
  END IF;
  IF storage_root IS NULL THEN
    RAISE EXCEPTION 'storage_quota.storage_root is not set'
      USING ERRCODE = 'SQ003',
            HINT = 'Run this migration with migrate() or `storage-quota migrate`, or SET LOCAL storage_quota.storage_root first.';
  END IF;

  SELECT count(*) INTO skipped
    FROM projects WHERE user_id IS NULL OR user_id !~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$';
  IF skipped > 0 THEN
    RAISE WARNING 'storage-quota: % project(s) have owner ids it cannot use for paths; they get no storage path', skipped;
  END IF;

  INSERT INTO user_quotas (user_id, limit_bytes)
  SELECT DISTINCT user_id, default_limit
    FROM projects WHERE user_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$';

  -- Usage from what the app knows of project sizes: a numeric `size_bytes` column if it has one.
  SELECT EXISTS (
    SELECT 1 FROM pg_attribute
     WHERE attrelid = 'projects'::regclass AND attname = 'size_bytes' AND attnum > 0 AND NOT attisdropped
       AND format_type(atttypid, atttypmod) IN ('bigint', 'integer', 'numeric', 'smallint')
  ) INTO has_sizes;
  IF has_sizes THEN
    EXECUTE $sql$
      INSERT INTO quota_ledger (user_id, project_id, idempotency_key, kind, bytes)
      SELECT user_id, id, 'baseline ' || id::text, 'baseline', greatest(coalesce(size_bytes, 0), 0)::bigint
        FROM projects WHERE user_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$'
    $sql$;
    UPDATE user_quotas q
       SET used_bytes = s.total
      FROM (SELECT user_id, sum(bytes)::bigint AS total FROM quota_ledger GROUP BY user_id) s
     WHERE s.user_id = q.user_id;
  END IF;

  INSERT INTO project_storage_paths (project_id, user_id, quota_id, backend, key, path)
  SELECT p.id, p.user_id, q.id, 'local',
         p.user_id || '/' || p.id::text || '/',
         storage_root || '/' || p.user_id || '/' || p.id::text || '/'
    FROM projects p JOIN user_quotas q ON q.user_id = p.user_id;
END
$$;

-- The database's own guard: usage (used + reserved) may never grow past the limit, whoever
-- writes. Lowering the limit, or shrinking usage, is always allowed. The WHEN clauses keep the
-- common case free of any function call. Created after the data migration, so existing owners
-- whose projects already exceed the default are seeded as over quota (like a downgrade).
CREATE FUNCTION storage_quota_refuse_over_limit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'storage quota exceeded for user %: % bytes used and % reserved would pass the limit of % bytes',
    NEW.user_id, NEW.used_bytes, NEW.reserved_bytes, NEW.limit_bytes
    USING ERRCODE = 'SQ001';
END
$$;

CREATE TRIGGER user_quotas_limit_on_insert
  BEFORE INSERT ON user_quotas
  FOR EACH ROW WHEN (NEW.used_bytes + NEW.reserved_bytes > NEW.limit_bytes)
  EXECUTE FUNCTION storage_quota_refuse_over_limit();

CREATE TRIGGER user_quotas_limit_on_update
  BEFORE UPDATE ON user_quotas
  FOR EACH ROW WHEN (NEW.used_bytes + NEW.reserved_bytes > NEW.limit_bytes
                     AND NEW.used_bytes + NEW.reserved_bytes > OLD.used_bytes + OLD.reserved_bytes)
  EXECUTE FUNCTION storage_quota_refuse_over_limit();

-- Link projects to their paths. This is the only change to an existing app table, and it comes
-- last: everything above read `projects` under ACCESS SHARE (which blocks no app query), while
-- ADD COLUMN takes ACCESS EXCLUSIVE until commit. So the app's queries on `projects` wait only
-- for the statements below. A nullable column without a default is a catalog change (no rewrite).
DO $$
BEGIN
  IF coalesce(current_setting('storage_quota.project_source', true), '') <> '' THEN
    RETURN;
  END IF;
  ALTER TABLE projects ADD COLUMN storage_path_id uuid;
  ALTER TABLE projects
    ADD CONSTRAINT projects_storage_path_id_fkey FOREIGN KEY (storage_path_id)
    REFERENCES project_storage_paths (id) ON DELETE SET NULL NOT VALID;
  -- Written after the constraint exists, so every value is checked as it is written.
  UPDATE projects p SET storage_path_id = sp.id
    FROM project_storage_paths sp WHERE sp.project_id = p.id;
  -- VALIDATE in a later transaction would gain nothing here: this transaction already holds
  -- ACCESS EXCLUSIVE on `projects` (from ADD COLUMN) until commit, and every non-null value was
  -- checked on write just above, so VALIDATE only marks the constraint valid after one scan.
  -- See docs/migrations.md.
  ALTER TABLE projects VALIDATE CONSTRAINT projects_storage_path_id_fkey;
END
$$;
