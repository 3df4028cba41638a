-- Reverses 0008: reservations forget which object a presigned upload went to (pending
-- presigned uploads then commit without a size check; settle them before rolling back).

SET LOCAL lock_timeout = '1s';
SET LOCAL statement_timeout = '60s';

-- In a transaction (migrate() runs each file in one), CONCURRENTLY is impossible.
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX quota_reservations_object_idx;
-- Dropping what 0008 added is this file's purpose.
-- squawk-ignore ban-drop-column
ALTER TABLE quota_reservations DROP COLUMN object_key;
