-- Issued bulletins (their document numbers) and the durable mail outbox.

-- One row per period and language. A period keeps the number it was first issued with, in
-- every language. Numbers run from 1 in each year of the period's first day.
CREATE TABLE bulletins (
    period       TEXT NOT NULL,          -- "2026-11", or "2026-11-03~2026-11-20" for a range
    lang         TEXT NOT NULL,          -- zh | en
    year         BIGINT NOT NULL,
    number       BIGINT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (period, lang)
);

-- Mail waiting to be sent, and what was sent. The message is stored whole (RFC 5322, as it
-- goes on the wire), so nothing is lost when SMTP is down or the process restarts.
CREATE TABLE outbox (
    key              TEXT PRIMARY KEY,   -- period|kind|recipient: a period's mail is queued once
    kind             TEXT NOT NULL,      -- bulletin | notice
    period           TEXT NOT NULL,
    sender           TEXT NOT NULL,      -- envelope sender
    recipients       TEXT NOT NULL,      -- JSON array of envelope recipients
    subject          TEXT NOT NULL,
    message          TEXT NOT NULL,
    state            TEXT NOT NULL,      -- queued | sent | failed
    attempts         BIGINT NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    next_attempt_at  TEXT NOT NULL,
    sent_at          TEXT,
    last_error       TEXT
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
