-- Reverses 0004. The claims are bookkeeping only (usage lives in the ledger and counters), so
-- dropping them loses no bytes (docs/migrations.md says what a retried copy does afterwards).
-- squawk-ignore-file ban-drop-table

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

DROP TABLE quota_project_copies;
