-- Scan runs, hosts, services and the raw observations of every scan.
-- Timestamps are UTC text, RFC 3339 with milliseconds and a Z, so they sort as text on SQLite
-- and PostgreSQL alike.

CREATE TABLE scan_runs (
    id           TEXT PRIMARY KEY,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    state        TEXT NOT NULL,          -- running | complete | incomplete
    segments     TEXT NOT NULL,          -- JSON array of segment names
    probe_kinds  TEXT NOT NULL,          -- comma-separated probe kinds
    addresses    BIGINT NOT NULL DEFAULT 0,
    probes       BIGINT NOT NULL DEFAULT 0,
    report       TEXT                    -- the JSON report, once recorded
);

CREATE TABLE hosts (
    ip           TEXT PRIMARY KEY,
    segment      TEXT NOT NULL,
    network      TEXT NOT NULL,
    department   TEXT,
    ptr          TEXT,
    first_seen   TEXT NOT NULL,
    last_seen    TEXT NOT NULL,
    last_scan    TEXT NOT NULL REFERENCES scan_runs (id)
);

CREATE TABLE services (
    ip           TEXT NOT NULL,
    port         INTEGER NOT NULL,
    protocol     TEXT NOT NULL,
    service      TEXT NOT NULL,
    product      TEXT,
    version      TEXT,
    banner       TEXT,
    first_seen   TEXT NOT NULL,
    last_seen    TEXT NOT NULL,
    last_scan    TEXT NOT NULL REFERENCES scan_runs (id),
    PRIMARY KEY (ip, port, protocol)
);

CREATE TABLE observations (
    scan_id      TEXT NOT NULL REFERENCES scan_runs (id),
    ip           TEXT NOT NULL,
    port         INTEGER,                -- NULL for host-level facts
    kind         TEXT NOT NULL,          -- host | service
    data         TEXT NOT NULL           -- the facts, JSON
);
CREATE INDEX observations_by_scan ON observations (scan_id);
CREATE INDEX observations_by_ip ON observations (ip, port);

CREATE TABLE probe_errors (
    scan_id      TEXT NOT NULL REFERENCES scan_runs (id),
    probe        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (scan_id, probe, reason)
);
