-- The audit trail of the daemon's HTTP API (等级保护 2.0 安全审计): one row per request
-- answered, refused ones (401, 403, 429) included. Written by the daemon, listed by
-- `netpatrol audit`. The id is made by the writer (time and a counter), portable to
-- PostgreSQL without a sequence.
CREATE TABLE audit (
    id         TEXT PRIMARY KEY,
    at         TEXT NOT NULL,      -- RFC 3339, UTC
    principal  TEXT NOT NULL,      -- operator | read | user:NAME | - (none), or for a refusal what was presented
    peer       TEXT NOT NULL,      -- ADDR:PORT of the client
    method     TEXT NOT NULL,
    route      TEXT NOT NULL,      -- the path asked for (query string dropped)
    status     BIGINT NOT NULL,
    detail     TEXT                -- what it did or why it was refused (e.g. the scan id it started)
);
CREATE INDEX audit_at ON audit (at);
