-- storage-quota 0004: copyProject claims its new project here before copying anything, so
-- concurrent or retried copies into one project resolve once (see src/quota/copies.rs).

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

-- One row per new project: who copies into it, from which source, and (once done) the outcome
-- that later calls answer with. `token` is the copying call's reservation id and names its
-- hidden staging directory ({root}/{user}/.copy-{token}); dir_dev/dir_ino identify that
-- directory, so the next call can remove what a crashed one left, and nothing else.
CREATE TABLE quota_project_copies (
  user_id text NOT NULL,
  project_id text NOT NULL,
  source_project_id text,
  token uuid NOT NULL,
  status text NOT NULL DEFAULT 'copying',
  copied_bytes bigint,
  files bigint,
  skipped bigint,
  dir_dev bigint,
  dir_ino bigint,
  created_at timestamptz NOT NULL DEFAULT now(),
  settled_at timestamptz,
  CONSTRAINT quota_project_copies_pkey PRIMARY KEY (user_id, project_id),
  CONSTRAINT quota_project_copies_token_key UNIQUE (token),
  CONSTRAINT quota_project_copies_status_check CHECK (status IN ('copying', 'done')),
  CONSTRAINT quota_project_copies_bytes_check CHECK (copied_bytes >= 0)
);

-- Copies made before this migration answered `duplicate` from their ledger entry; they keep
-- doing so from here (their source was not recorded: any source is taken as theirs).
INSERT INTO quota_project_copies (user_id, project_id, token, status, copied_bytes, settled_at)
SELECT l.user_id, l.project_id::text, gen_random_uuid(), 'done', l.bytes, l.created_at
  FROM quota_ledger l
 WHERE l.kind = 'copy' AND l.project_id IS NOT NULL
ON CONFLICT DO NOTHING;
