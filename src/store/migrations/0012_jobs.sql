-- Scan jobs claimed by the hubs sharing the store, schedule ticks taken once, run owners.
-- A job is asked for by the API or a schedule and waits `queued` until one hub claims it
-- (`running`, claimed_by = that hub's owner key); its end state is the run's. A scheduled
-- job keeps its entry (`schedule_key`) and tick (`due`). `sensor` names
-- the sensor a job is handed to (NULL: any hub runs it). A tick of a schedule entry (a scan
-- entry at its cron time, the bulletin for its period) is inserted once: whoever inserts it
-- acts on it. `scan_runs.owner` is the owner key of the process that began the run, so a run
-- left `running` by a dead process can be told from one another hub is still writing.
CREATE TABLE scan_jobs (
    id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    schedule_key TEXT,
    due TEXT,
    segments TEXT NOT NULL,
    sensor TEXT,
    state TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    claimed_by TEXT,
    started_at TEXT,
    finished_at TEXT,
    scan_id TEXT,
    error TEXT
);
CREATE INDEX scan_jobs_state ON scan_jobs (state, submitted_at);
CREATE TABLE schedule_ticks (
    key TEXT NOT NULL,
    due TEXT NOT NULL,
    taken_by TEXT NOT NULL,
    taken_at TEXT NOT NULL,
    PRIMARY KEY (key, due)
);
ALTER TABLE scan_runs ADD COLUMN owner TEXT
