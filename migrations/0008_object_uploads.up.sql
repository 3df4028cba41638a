-- storage-quota 0008: presigned uploads to an object store. The reservation remembers which
-- object (relative to its project) the client was allowed to PUT, so commit can HEAD it for its
-- real size and the sweep can delete it when the reservation expires or is cancelled. NULL for
-- every other reservation.

-- Short locks: give up at once (changing nothing; migrate() retries) rather than queue the app
-- behind a lock request we cannot get.
SET LOCAL lock_timeout = '250ms';
SET LOCAL statement_timeout = '60s';

-- Nullable without a default: a catalog-only change.
ALTER TABLE quota_reservations ADD COLUMN object_key text;

-- The sweep's work list. migrate() runs each file in a transaction, where CONCURRENTLY is
-- impossible; no existing row has an object_key, so the partial index is empty when built.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX quota_reservations_object_idx
  ON quota_reservations (project_id, object_key) WHERE object_key IS NOT NULL;
