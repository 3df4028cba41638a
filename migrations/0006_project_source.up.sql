-- storage-quota 0006: projects from any table the app names (uuid, text, integer or bigint ids;
-- text or uuid owners, users or organizations), or from a registry of our own (standalone).
--
-- Settings (SET LOCAL by migrate(), like 0001's):
--   storage_quota.project_source         '' (default: projects(id, user_id)), 'table' or 'standalone'
--   storage_quota.projects_table         the app's table, `name` or `schema.name`
--   storage_quota.projects_id_column     its id column
--   storage_quota.projects_owner_column  its owner column
-- Every statement of the package reads projects through storage_quota_project(id text), made
-- here from those settings, so the package's own SQL is the same for every app. There is no
-- foreign key into the app's table: a project deleted behind our back is found by reconcile()
-- (or released at once by the trigger recipe in the README).

SET LOCAL statement_timeout = '60s';

-- Every table this migration changes is locked first, in one statement and in the order app
-- statements take them: our four tables, then the table their 0.1.0 foreign keys reference (an
-- app INSERT into one of ours locks it, then that table for the key check). Taken one by one as
-- the statements below reach them, the projects table was held while a child was waited for,
-- and an app INSERT holding that child and waiting for projects made a deadlock, which
-- PostgreSQL broke by failing the app's statement. Under 200 ms of lock_timeout (below the
-- default deadlock_timeout of 1 s) this statement gives up first whatever the order of waits
-- (55P03: rolled back and retried with backoff by migrate()), and nothing later waits.
SET LOCAL lock_timeout = '200ms';
DO $$
DECLARE
  tables text;
BEGIN
  SELECT string_agg(t, ', ' ORDER BY n) INTO tables
    FROM (SELECT format('%I', t) AS t, n FROM unnest(ARRAY['project_storage_paths', 'quota_ledger', 'quota_reservations', 'simulation_jobs'])
                        WITH ORDINALITY AS u(t, n)
           WHERE to_regclass(t) IS NOT NULL
          UNION ALL
          SELECT DISTINCT c.confrelid::regclass::text, 100
            FROM pg_constraint c
           WHERE c.conname IN ('project_storage_paths_project_id_fkey', 'simulation_jobs_project_id_fkey')
             AND c.contype = 'f') AS l;
  IF tables IS NOT NULL THEN
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tables);
  END IF;
END $$;
SET LOCAL lock_timeout = '5s';

-- Projects are named by their id as text in our tables.
ALTER TABLE project_storage_paths DROP CONSTRAINT IF EXISTS project_storage_paths_project_id_fkey;
ALTER TABLE simulation_jobs DROP CONSTRAINT IF EXISTS simulation_jobs_project_id_fkey;
-- Each of the four tables that 0.1.0 made with uuid project ids gets text ones, one of two ways:
-- - prepared (a big table: more than 10,000 rows, STORAGE_QUOTA_ONLINE_MIGRATION_ROWS): the
--   preparation of `storage-quota migrate` (src/db/online/) added `project_id_text`, kept it
--   filled with a trigger, filled the old rows in committed batches, proved it complete with a
--   validated CHECK and built its indexes CONCURRENTLY. Here the columns only swap: drop the
--   old one (its indexes go with it), rename, SET NOT NULL (no scan: the validated CHECK proves
--   it), indexes renamed or attached: catalog changes, milliseconds under ACCESS EXCLUSIVE.
-- - otherwise in place, ALTER COLUMN TYPE: a rewrite of the table and its indexes under
--   ACCESS EXCLUSIVE, milliseconds for a small table.
-- Column by column in a DO block (squawk does not read its statements; docs/migrations.md
-- lists them). A uuid's text is its canonical lower-case form, which is how the package
-- spells uuid ids, so existing rows keep matching.
DO $$
DECLARE
  tbl text;
  prepared boolean;
  not_null boolean;
BEGIN
  IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE NOT i.indisvalid AND c.relname IN ('project_storage_paths_project_id_text_key',
                'quota_ledger_project_id_text_idx', 'quota_ledger_user_project_text_idx',
                'simulation_jobs_project_id_text_idx', 'quota_reservations_pending_project_idx',
                'quota_reservations_object_idx')) THEN
    RAISE EXCEPTION 'the preparation of 0006_project_source is not finished (an index build was interrupted)'
      USING ERRCODE = 'SQ005', HINT = 'Run `npx storage-quota migrate` to finish it. Nothing was changed.';
  END IF;
  FOREACH tbl IN ARRAY ARRAY['project_storage_paths', 'quota_ledger', 'quota_reservations', 'simulation_jobs'] LOOP
    not_null := tbl <> 'quota_ledger';
    SELECT c.convalidated INTO prepared FROM pg_constraint c
     WHERE c.conrelid = tbl::regclass AND c.conname = tbl || '_project_id_text_check';
    IF EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl::regclass
                AND a.attname = 'project_id_text' AND NOT a.attisdropped) THEN
      EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', tbl || '_project_id_text', tbl);
      IF coalesce(prepared, false) THEN
        EXECUTE format('ALTER TABLE %I DROP COLUMN project_id', tbl);
        EXECUTE format('ALTER TABLE %I RENAME COLUMN project_id_text TO project_id', tbl);
        IF not_null THEN
          EXECUTE format('ALTER TABLE %I ALTER COLUMN project_id SET NOT NULL', tbl);
        END IF;
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT IF EXISTS %I', tbl, tbl || '_project_id_text_check');
        CONTINUE;
      END IF;
      -- An unfinished preparation of a table that is small now: its column (with its indexes
      -- and CHECK) goes, and the table is rewritten in place like any small table.
      EXECUTE format('ALTER TABLE %I DROP COLUMN project_id_text', tbl);
    END IF;
    EXECUTE format('ALTER TABLE %I ALTER COLUMN project_id TYPE text USING project_id::text', tbl);
  END LOOP;
  DROP FUNCTION IF EXISTS storage_quota_project_id_text();
  DELETE FROM storage_quota_meta WHERE key LIKE 'prepare\_fill:%';

  -- The prepared indexes take the names of those that went with the old columns.
  IF to_regclass('project_storage_paths_project_id_text_key') IS NOT NULL THEN
    ALTER TABLE project_storage_paths ADD CONSTRAINT project_storage_paths_project_id_key
      UNIQUE USING INDEX project_storage_paths_project_id_text_key;
  END IF;
  IF to_regclass('quota_ledger_project_id_text_idx') IS NOT NULL THEN
    ALTER INDEX quota_ledger_project_id_text_idx RENAME TO quota_ledger_project_id_idx;
  END IF;
  IF to_regclass('quota_ledger_user_project_text_idx') IS NOT NULL THEN
    ALTER INDEX quota_ledger_user_project_text_idx RENAME TO quota_ledger_user_project_idx;
  END IF;
  IF to_regclass('simulation_jobs_project_id_text_idx') IS NOT NULL THEN
    ALTER INDEX simulation_jobs_project_id_text_idx RENAME TO simulation_jobs_project_id_idx;
  END IF;

  -- A key is still two safe segments; the second is now any project id (see src/ids.rs).
  -- Prepared: the wider CHECK was added NOT VALID and validated beside the old one (every key
  -- the old one allows, the new one does); it only takes the old one's name.
  IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'project_storage_paths'::regclass
              AND conname = 'project_storage_paths_key_check_any' AND convalidated) THEN
    ALTER TABLE project_storage_paths DROP CONSTRAINT project_storage_paths_key_check;
    ALTER TABLE project_storage_paths RENAME CONSTRAINT project_storage_paths_key_check_any
      TO project_storage_paths_key_check;
  ELSE
    ALTER TABLE project_storage_paths DROP CONSTRAINT IF EXISTS project_storage_paths_key_check_any;
    ALTER TABLE project_storage_paths DROP CONSTRAINT project_storage_paths_key_check;
    -- The table is locked by the rewrite above until commit; VALIDATE is one scan under that lock.
    ALTER TABLE project_storage_paths ADD CONSTRAINT project_storage_paths_key_check
      CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}/[A-Za-z0-9][A-Za-z0-9_-]{0,127}/$') NOT VALID;
    ALTER TABLE project_storage_paths VALIDATE CONSTRAINT project_storage_paths_key_check;
  END IF;
END
$$;

-- Releasing a deleted project's pending reservations finds them by project. Prepared: built
-- CONCURRENTLY on the new column under this name. Otherwise the table was just rewritten under
-- ACCESS EXCLUSIVE (a small table), which CONCURRENTLY could not avoid anyway.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS quota_reservations_pending_project_idx
  ON quota_reservations (project_id) WHERE status = 'pending';

-- The standalone registry: projects the app registers with registerProject, nothing else.
CREATE TABLE storage_quota_projects (
  id text PRIMARY KEY,
  user_id text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT storage_quota_projects_id_check CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$'),
  CONSTRAINT storage_quota_projects_user_id_check CHECK (user_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$')
);
-- A table created in this transaction: nobody else can be reading it.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX storage_quota_projects_user_id_idx ON storage_quota_projects (user_id);

-- Gives back everything a project holds: its pending reservations and its counted bytes, per
-- user, in the lock order of every writer (reservation rows, then the quota row). Used for
-- projects whose row is gone, by reconcile() and by the trigger below. Returns bytes released.
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

-- For apps that want a deletion released at once (README, "Deleted behind our back"):
--   CREATE TRIGGER invoices_storage_quota AFTER DELETE ON invoices
--     FOR EACH ROW EXECUTE FUNCTION storage_quota_project_deleted('id');
-- The argument names the id column; the files stay until reconcile({ fix: true }).
CREATE FUNCTION storage_quota_project_deleted() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM storage_quota_release_project(to_jsonb(OLD) ->> TG_ARGV[0]);
  RETURN NULL;
END
$fn$;

-- The lookup every statement uses, over the configured source. It is a plain SQL function
-- (STABLE, not STRICT), so PostgreSQL inlines it into the caller's query: the comparison below
-- is then an index lookup on the app's id column. The text id is converted to the column's type
-- only when it has that type's one spelling; anything else matches no row instead of failing.
DO $$
DECLARE
  source text := coalesce(current_setting('storage_quota.project_source', true), '');
  tbl text := coalesce(nullif(current_setting('storage_quota.projects_table', true), ''), 'projects');
  id_col text := coalesce(nullif(current_setting('storage_quota.projects_id_column', true), ''), 'id');
  owner_col text := coalesce(nullif(current_setting('storage_quota.projects_owner_column', true), ''), 'user_id');
  rel regclass;
  qualified text;
  id_type text;
  owner_type text;
  id_unique boolean;
  id_match text;
  described text;
BEGIN
  IF source = 'standalone' THEN
    tbl := 'storage_quota_projects';
    id_col := 'id';
    owner_col := 'user_id';
    described := 'standalone';
  ELSIF source = '' THEN
    described := 'projects(id, user_id)';
  ELSE
    described := format('%s(%s, %s)', tbl, id_col, owner_col);
  END IF;

  rel := to_regclass(tbl);
  IF rel IS NULL THEN
    RAISE EXCEPTION 'storage-quota cannot read projects from %: there is no table "%"', described, tbl
      USING ERRCODE = 'SQ002',
            HINT = 'storage-quota never creates the app''s table. Name yours (projects option, --projects) or use standalone. Nothing was changed.';
  END IF;
  SELECT format('%I.%I', n.nspname, c.relname) INTO qualified
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
  SELECT format_type(a.atttypid, NULL) INTO id_type
    FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = id_col AND a.attnum > 0 AND NOT a.attisdropped;
  SELECT format_type(a.atttypid, NULL) INTO owner_type
    FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = owner_col AND a.attnum > 0 AND NOT a.attisdropped;
  SELECT EXISTS (
    SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
     WHERE i.indrelid = rel AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = id_col
  ) INTO id_unique;
  IF id_type IS NULL OR id_type NOT IN ('uuid', 'text', 'character varying', 'integer', 'bigint', 'smallint') THEN
    RAISE EXCEPTION 'storage-quota cannot read projects from %: column "%" is %', described, id_col, coalesce(id_type, 'missing')
      USING ERRCODE = 'SQ002', HINT = 'Ids of type uuid, text, varchar, integer, bigint or smallint are supported. Nothing was changed.';
  END IF;
  IF owner_type IS NULL OR owner_type NOT IN ('text', 'character varying', 'uuid', 'integer', 'bigint') THEN
    RAISE EXCEPTION 'storage-quota cannot read projects from %: column "%" is %', described, owner_col, coalesce(owner_type, 'missing')
      USING ERRCODE = 'SQ002', HINT = 'Owners of type text, varchar, uuid, integer or bigint are supported. Nothing was changed.';
  END IF;
  IF NOT id_unique THEN
    RAISE EXCEPTION 'storage-quota cannot read projects from %: "%" has no primary key or unique index', described, id_col
      USING ERRCODE = 'SQ002', HINT = 'Add one first. Nothing was changed.';
  END IF;

  id_match := CASE
    WHEN id_type = 'uuid' THEN
      $m$(CASE WHEN $1 ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN $1 END)::uuid$m$
    WHEN id_type IN ('integer', 'bigint', 'smallint') THEN
      $m$(CASE WHEN $1 ~ '^(0|[1-9][0-9]{0,18})$' THEN CASE WHEN $1::numeric <= 9223372036854775807 THEN $1 END END)::bigint$m$
    ELSE '$1'
  END;
  EXECUTE format($f$
    CREATE FUNCTION storage_quota_project(project_id text) RETURNS TABLE (id text, user_id text)
    LANGUAGE sql STABLE PARALLEL SAFE AS $body$
      SELECT p.%2$I::text, p.%3$I::text FROM %1$s p WHERE p.%2$I = %4$s
    $body$
  $f$, qualified, id_col, owner_col, id_match);

  INSERT INTO storage_quota_meta (key, value) VALUES ('project_source', jsonb_build_object(
    'describe', described, 'source', coalesce(nullif(source, ''), 'default'),
    'table', qualified, 'id', id_col, 'owner', owner_col, 'idType', id_type, 'ownerType', owner_type));

  -- The default source keeps `projects.storage_path_id` (0001) up to date, as before.
  IF source = '' AND EXISTS (SELECT 1 FROM pg_constraint
                              WHERE conname = 'projects_storage_path_id_fkey'
                                AND confrelid = 'project_storage_paths'::regclass) THEN
    CREATE FUNCTION storage_quota_link_project_path() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    BEGIN
      UPDATE projects SET storage_path_id = NEW.id
       WHERE id = NEW.project_id::uuid AND storage_path_id IS DISTINCT FROM NEW.id;
      RETURN NULL;
    END
    $fn$;
    CREATE TRIGGER project_storage_paths_link_project AFTER INSERT ON project_storage_paths
      FOR EACH ROW EXECUTE FUNCTION storage_quota_link_project_path();
  END IF;
END
$$;
