-- Sensors and hub: runs a sensor made, batches a hub received, a sensor's outbox and assignment.
-- On a hub, `scan_runs.sensor` names the sensor whose observations a run holds (NULL: the
-- hub's own scan). Such a run stays `running` across hub restarts until its final batch.

ALTER TABLE scan_runs ADD COLUMN sensor TEXT;

-- Hub: every batch a sensor posted, kept whole (the payload is the batch's JSON), so that a
-- scan is assembled from its batches when its final one arrives and a resent batch is
-- recognised by its id.
CREATE TABLE sensor_batches (
    batch        TEXT PRIMARY KEY,
    sensor       TEXT NOT NULL,
    scan_id      TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    is_final     BIGINT NOT NULL,        -- 1 on the last batch of a scan
    received_at  TEXT NOT NULL,
    hosts        BIGINT NOT NULL,
    refused      BIGINT NOT NULL,        -- hosts outside the sensor's segments, dropped
    payload      TEXT NOT NULL
);
CREATE INDEX sensor_batches_by_scan ON sensor_batches (scan_id, seq);

-- Hub: when each sensor was last heard from and the backlog it reported.
CREATE TABLE sensor_contacts (
    sensor       TEXT PRIMARY KEY,
    last_contact TEXT NOT NULL,
    backlog      BIGINT NOT NULL
);

-- Sensor: batches waiting for the hub (sent_at NULL) and sent ones kept until their scan's
-- final batch is sent; `n` orders them as they were made.
CREATE TABLE sensor_outbox (
    batch        TEXT PRIMARY KEY,
    n            BIGINT NOT NULL,
    scan_id      TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    is_final     BIGINT NOT NULL,
    request      TEXT,                   -- the on-demand request the scan answers
    created_at   TEXT NOT NULL,
    sent_at      TEXT,
    outcome      TEXT,                   -- accepted | duplicate | refused: STATUS
    payload      TEXT NOT NULL
);
CREATE INDEX sensor_outbox_pending ON sensor_outbox (sent_at, n);

-- Sensor: the last assignment fetched from the hub, so a restart while the hub is down
-- still scans.
CREATE TABLE sensor_assignment (
    sensor       TEXT PRIMARY KEY,
    fetched_at   TEXT NOT NULL,
    body         TEXT NOT NULL
)
