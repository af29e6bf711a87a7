-- Findings and their lifecycle history.

CREATE TABLE findings (
    fingerprint   TEXT PRIMARY KEY,
    rule          TEXT NOT NULL,
    severity      TEXT NOT NULL,
    subject       TEXT NOT NULL,         -- host | service | segment | approval | project
    ip            TEXT,
    port          INTEGER,
    segment       TEXT,
    department    TEXT,
    project       TEXT,
    approval      TEXT,
    title         TEXT NOT NULL,         -- JSON {"zh": ..., "en": ...}
    evidence      TEXT NOT NULL,         -- JSON {"zh": ..., "en": ...}
    basis         TEXT NOT NULL,         -- JSON array
    first_seen    TEXT NOT NULL,
    last_seen     TEXT NOT NULL,
    due           TEXT NOT NULL,         -- YYYY-MM-DD, organisation calendar
    state         TEXT NOT NULL,         -- open | resolved
    absent_scans  INTEGER NOT NULL DEFAULT 0,
    resolved_at   TEXT,
    reopened_at   TEXT
);
CREATE INDEX findings_by_state ON findings (state, severity);

CREATE TABLE finding_events (
    fingerprint   TEXT NOT NULL REFERENCES findings (fingerprint),
    scan_id       TEXT NOT NULL REFERENCES scan_runs (id),
    at            TEXT NOT NULL,
    event         TEXT NOT NULL          -- opened | resolved | reopened
);
CREATE INDEX finding_events_by_fingerprint ON finding_events (fingerprint);
