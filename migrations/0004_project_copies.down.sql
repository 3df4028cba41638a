-- Reverses 0004. The claims are bookkeeping only (usage lives in the ledger and counters), so
-- dropping them loses no bytes; copies made since answer `duplicate` from nothing afterwards.
-- squawk-ignore-file ban-drop-table

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

DROP TABLE quota_project_copies;
