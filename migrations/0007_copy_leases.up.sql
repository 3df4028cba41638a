-- Who is copying into a new project, for clients behind a transaction pooler (PgBouncer,
-- Supavisor): there a session advisory lock stays with whichever server connection ran it, so
-- copyProject takes a lease row instead, given back when the copy ends or taken over once it
-- expires (a crashed holder). Direct connections keep using the advisory lock.

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

CREATE TABLE quota_copy_leases (
  user_id text NOT NULL,
  project_id text NOT NULL,
  holder uuid NOT NULL,
  expires_at timestamptz NOT NULL,
  CONSTRAINT quota_copy_leases_pkey PRIMARY KEY (user_id, project_id)
);
