-- Reverses 0007. A lease only says who is copying right now; a copy running through a pooler
-- while this runs loses its exclusion, so roll back with no copy in flight.
-- squawk-ignore-file ban-drop-table

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

DROP TABLE quota_copy_leases;
