-- A message is claimed before it is sent, so two flushes at once never send it twice: the
-- flusher sets lease_until/lease_owner with a conditional UPDATE (claimed only when no
-- unexpired lease is held), sends, then records the outcome and clears the lease.
ALTER TABLE outbox ADD COLUMN lease_until TEXT;
ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
