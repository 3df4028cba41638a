-- storage-quota 0008: presigned uploads to an object store. The reservation remembers which
-- object (relative to its project) the client was allowed to PUT, so commit can HEAD it for its
-- real size and the sweep can delete it when the reservation expires or is cancelled. NULL for
-- every other reservation.

-- Short locks: give up at once (changing nothing; migrate() retries) rather than queue the app
-- behind a lock request we cannot get.
SET LOCAL lock_timeout = '250ms';
SET LOCAL statement_timeout = '60s';

-- Nullable without a default: a catalog-only change. A big table (more than 10,000 rows) was
-- given both the column and the index ahead, the index CONCURRENTLY, by the preparation of
-- `storage-quota migrate` (src/db/online/): then both statements here find them.
ALTER TABLE quota_reservations ADD COLUMN IF NOT EXISTS object_key text;

-- The sweep's work list. migrate() runs each file in a transaction, where CONCURRENTLY is
-- impossible; no existing row has an object_key, so the partial index is empty when built, the
-- cost is one scan of a table that is small (or the index was prepared).
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS quota_reservations_object_idx
  ON quota_reservations (project_id, object_key) WHERE object_key IS NOT NULL;
