-- storage-quota 0001: quotas, storage paths, the upload ledger and simulation jobs.
--
-- Schema only: it creates objects and touches no rows, so it holds its locks for milliseconds
-- whatever the size of `projects`. Existing projects get their quota rows, baseline usage,
-- path records and `storage_path_id` from the batched backfill (`storage-quota backfill`,
-- src/quota/backfill/), outside this transaction.
--
-- This text replaced the first release's, which backfilled inside the transaction; databases
-- that applied that one are accepted by its old checksum (src/db/migrate.rs, docs/migrations.md).
--
-- Short locks: an app's queries queue behind a waiting lock request, so give up after 250 ms
-- (rolling back, changing nothing) rather than make them wait longer; migrate() retries the
-- whole file with backoff and logs each retry.
--
-- When storage_quota.project_source is set (the app named its own project table, or chose the
-- standalone registry), nothing here reads or changes `projects`: migration 0006 links to the
-- configured source instead. Unset, this file behaves as it always did.
SET LOCAL lock_timeout = '250ms';
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

-- The database's own guard: usage (used + reserved) may never grow past the limit, whoever
-- writes. Lowering the limit, or shrinking usage, is always allowed. The WHEN clauses keep the
-- common case free of any function call. The backfill seeds owners whose projects already
-- exceed the default as over quota (like a downgrade), lifting the guard for its own updates.
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

-- Foreign keys into the app's `projects`, each added NOT VALID: ADD CONSTRAINT then takes
-- SHARE ROW EXCLUSIVE on `projects` only until this transaction commits (milliseconds) and
-- scans nothing. The backfill validates them at its end, in transactions of their own, under
-- SHARE UPDATE EXCLUSIVE, which blocks no app read or write.
DO $$
BEGIN
  IF coalesce(current_setting('storage_quota.project_source', true), '') = '' THEN
    ALTER TABLE project_storage_paths
      ADD CONSTRAINT project_storage_paths_project_id_fkey FOREIGN KEY (project_id)
      REFERENCES projects (id) ON DELETE CASCADE NOT VALID;
    ALTER TABLE simulation_jobs
      ADD CONSTRAINT simulation_jobs_project_id_fkey FOREIGN KEY (project_id)
      REFERENCES projects (id) ON DELETE CASCADE NOT VALID;

    -- Link projects to their paths: the only change to an existing app table. A nullable column
    -- without a default is a catalog change (no rewrite); ADD COLUMN's ACCESS EXCLUSIVE lasts
    -- until this transaction commits, milliseconds. The backfill fills it in committed batches.
    ALTER TABLE projects ADD COLUMN storage_path_id uuid;
    ALTER TABLE projects
      ADD CONSTRAINT projects_storage_path_id_fkey FOREIGN KEY (storage_path_id)
      REFERENCES project_storage_paths (id) ON DELETE SET NULL NOT VALID;
  END IF;
END
$$;
