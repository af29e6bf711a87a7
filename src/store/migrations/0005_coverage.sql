-- A scan's coverage: probes planned, answered, failed remotely and failed locally (NULL for
-- runs recorded before coverage was measured). `state` may now also be `degraded`.

ALTER TABLE scan_runs ADD COLUMN planned BIGINT;
ALTER TABLE scan_runs ADD COLUMN answered BIGINT;
ALTER TABLE scan_runs ADD COLUMN failed_remote BIGINT;
ALTER TABLE scan_runs ADD COLUMN failed_local BIGINT
