-- The rectification loop (通报—整改—反馈—复测): what departments answered through their
-- capability link, and the key those links are signed with when no `daemon.link_key_env` is
-- set. Ids are made by the writer (portable to PostgreSQL without a sequence), timestamps are
-- RFC 3339 text in UTC, days YYYY-MM-DD.
CREATE TABLE rectification_answers (
    id              TEXT PRIMARY KEY,
    at              TEXT NOT NULL,      -- when it was answered
    department      TEXT NOT NULL,      -- the link's department
    period          TEXT NOT NULL,      -- the link's period (e.g. 2026-11)
    fingerprint     TEXT NOT NULL,      -- the finding answered
    kind            TEXT NOT NULL,      -- done | waiver | dispute
    note            TEXT,               -- done: optional note, waiver and dispute: the reason
    proposed_expiry TEXT,               -- waiver: YYYY-MM-DD
    peer            TEXT NOT NULL,      -- ADDR:PORT of the client
    state           TEXT NOT NULL       -- received (re-test and operator decisions come later)
);
CREATE INDEX rectification_answers_finding ON rectification_answers (fingerprint, at);
CREATE INDEX rectification_answers_department ON rectification_answers (department, at);
CREATE TABLE link_keys (
    id          TEXT PRIMARY KEY,       -- 'default'
    key_hex     TEXT NOT NULL,          -- 32 random bytes, hex
    created_at  TEXT NOT NULL
);
-- Waivers the bureau approved on the operator page: read beside the config's `exceptions`
-- and honoured the same way (scope: every key given must match).
CREATE TABLE stored_exceptions (
    id          TEXT PRIMARY KEY,       -- the answer (waiver request) it approves
    rule        TEXT NOT NULL,
    ip          TEXT,
    port        BIGINT,
    department  TEXT,
    reason      TEXT NOT NULL,
    approver    TEXT NOT NULL,
    expires_on  TEXT NOT NULL,          -- YYYY-MM-DD, the last day it applies
    created_at  TEXT NOT NULL
);
