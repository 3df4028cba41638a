-- Reverses 0002. Refuses (changing nothing) while the ledger holds entries of the kinds 0002
-- introduced: 0001's schema cannot hold them, and dropping them would change users' usage.

-- Dropping what 0002 created is this file's purpose, run only once the app no longer uses the
-- lifecycle calls (docs/migrations.md, "Rolling back").
-- squawk-ignore-file ban-drop-table

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

DO $$
DECLARE
  newer bigint;
  pending bigint;
BEGIN
  SELECT count(*) INTO newer FROM quota_ledger WHERE kind NOT IN ('upload', 'baseline');
  IF newer > 0 THEN
    RAISE EXCEPTION 'cannot roll back 0002_quota_lifecycle: quota_ledger holds % deletion/copy/removal/adjustment entries that the older schema cannot hold', newer
      USING ERRCODE = 'SQ004',
            HINT = 'Nothing was changed. Keep 0002 applied, or back up and remove those entries deliberately first (see docs).';
  END IF;
  -- Reserved bytes live only in quota_reservations: dropping it would change users' numbers.
  SELECT count(*) INTO pending FROM quota_reservations WHERE status = 'pending' AND expires_at > now();
  IF pending > 0 THEN
    RAISE EXCEPTION 'cannot roll back 0002_quota_lifecycle: % upload reservations are still pending', pending
      USING ERRCODE = 'SQ004',
            HINT = 'Nothing was changed. Stop the app''s uploads, let the reservations be committed, cancelled or expire, and run the rollback again.';
  END IF;
END
$$;

DROP TRIGGER user_quotas_limit_on_update ON user_quotas;
CREATE TRIGGER user_quotas_limit_on_update
  BEFORE UPDATE ON user_quotas
  FOR EACH ROW WHEN (NEW.used_bytes + NEW.reserved_bytes > NEW.limit_bytes
                     AND NEW.used_bytes + NEW.reserved_bytes > OLD.used_bytes + OLD.reserved_bytes)
  EXECUTE FUNCTION storage_quota_refuse_over_limit();

-- Inside migrate()'s transaction CONCURRENTLY is not allowed; the ALTERs below lock the table anyway.
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX quota_ledger_user_project_idx;
ALTER TABLE quota_ledger DROP CONSTRAINT quota_ledger_bytes_sign_check;
ALTER TABLE quota_ledger DROP CONSTRAINT quota_ledger_kind_check;
-- Restored exactly as 0001 made them (validated), so the schema after rollback equals 0001's; the
-- table is locked by the DROP CONSTRAINTs above until commit either way.
-- squawk-ignore constraint-missing-not-valid
ALTER TABLE quota_ledger ADD CONSTRAINT quota_ledger_kind_check CHECK (kind IN ('upload', 'baseline'));
-- squawk-ignore constraint-missing-not-valid
ALTER TABLE quota_ledger ADD CONSTRAINT quota_ledger_bytes_check CHECK (bytes >= 0);

-- No reservation is pending (checked above); expired ones not yet swept are given back.
UPDATE user_quotas SET reserved_bytes = 0 WHERE reserved_bytes <> 0;

DROP TABLE quota_limit_changes;
DROP TABLE quota_reservations;
