//! Scan jobs, schedule ticks and the owner of each process: what lets several hubs share one
//! PostgreSQL store (migration 12).
//!
//! - A **job** is a scan asked for (API or schedule). It waits `queued` until a hub claims it
//!   (or, when it names a sensor, until that sensor begins it: its assignment lists it)
//!   ([`Store::claim_job`]): on PostgreSQL the candidates are read `FOR UPDATE SKIP LOCKED`
//!   inside a transaction that first takes a transaction-scoped advisory lock, so two hubs
//!   never claim one job, and a job whose segments overlap one already running anywhere is
//!   left for later (at most one scan of a segment at a time, across hubs). Its end state is
//!   its run's.
//! - A **tick** ([`Store::take_tick`]) is one firing of one schedule entry, inserted once:
//!   whoever inserts it acts on it (queues the scan, builds the bulletin), so a tick two hubs
//!   both see runs once.
//! - The **owner** of a process: on PostgreSQL each open store holds one connection of its own
//!   (the *session*) with a session advisory lock on a random key. The server drops the lock
//!   when the process dies (its connection closes), so another process can tell a run or job
//!   left `running` by a dead process (the lock can be taken) from one a live hub is writing
//!   ([`Store::reap`]). The session also holds the **leader** lock while this process runs
//!   the schedules ([`Store::try_lead`]). On SQLite there is one process per file: the owner
//!   is `local`, it always leads, and what a previous process left running is reaped at open.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Connection, Row};

use super::{Backend, Cells, Store, StoreError, timestamp};

/// Session advisory lock held by the leader (the process running schedules and bulletins).
const LEADER_KEY: i64 = 0x6e65_7470_6c65_6164; // "netplead"
/// Transaction advisory lock serialising job claims (the overlap check reads every running job).
const CLAIM_KEY: i64 = 0x6e65_7470_636c_6169; // "netpclai"
/// Candidates read per claim.
const CLAIM_WINDOW: i64 = 32;

/// This process's connection of its own to PostgreSQL: its owner lock, and the leader lock
/// while it leads.
pub(super) struct Session {
    pub(super) key: i64,
    conn: tokio::sync::Mutex<Option<AnyConnection>>,
    leading: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("key", &self.key).finish()
    }
}

impl Session {
    /// A session on a connection taken out of `pool` for good, holding its owner lock.
    pub(super) async fn start(pool: &sqlx::AnyPool) -> Result<Session, StoreError> {
        // Random, non-negative, never one of the fixed keys.
        let key = loop {
            let k = (rand_u64() >> 1) as i64;
            if k != LEADER_KEY && k != CLAIM_KEY {
                break k;
            }
        };
        let conn = Session::connect(pool, key).await?;
        Ok(Session {
            key,
            conn: tokio::sync::Mutex::new(Some(conn)),
            leading: std::sync::atomic::AtomicBool::new(false),
        })
    }

    async fn connect(pool: &sqlx::AnyPool, key: i64) -> Result<AnyConnection, StoreError> {
        let conn: PoolConnection<Any> = pool.acquire().await?;
        let mut conn = conn.detach();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut conn)
            .await?;
        Ok(conn)
    }

    pub(super) async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}

/// A random key from the system's generator; the clock and the pid if it fails.
fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return nanos ^ u64::from(std::process::id()) << 32;
    }
    u64::from_be_bytes(bytes)
}

/// A scan job as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: String,
    /// `api` or `schedule`.
    pub origin: String,
    /// The schedule entry that queued it, and the tick.
    pub schedule_key: Option<String>,
    pub due: Option<String>,
    /// As asked; empty = every segment.
    pub segments: Vec<String>,
    /// The sensor it is handed to; `None`: a hub runs it.
    pub sensor: Option<String>,
    /// `queued`, `running`, `complete`, `degraded`, `incomplete` or `failed`.
    pub state: String,
    pub submitted_at: DateTime<Utc>,
    /// Owner key of the hub running it.
    pub claimed_by: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The run it produced.
    pub scan_id: Option<String>,
    pub error: Option<String>,
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub id: &'a str,
    pub origin: &'a str,
    pub schedule_key: Option<&'a str>,
    /// The tick, for a scheduled job.
    pub due: Option<&'a str>,
    pub segments: &'a [String],
    pub sensor: Option<&'a str>,
    pub submitted_at: DateTime<Utc>,
}

fn job_from_row(r: &sqlx::any::AnyRow) -> Result<JobRow, StoreError> {
    let c = Cells::new(r, "scan_jobs", "id");
    Ok(JobRow {
        id: c.get("id")?,
        origin: c.get("origin")?,
        schedule_key: c.get("schedule_key")?,
        due: c.get("due")?,
        segments: c.json("segments")?,
        sensor: c.get("sensor")?,
        state: c.get("state")?,
        submitted_at: c.time("submitted_at")?,
        claimed_by: c.get("claimed_by")?,
        started_at: c.opt_time("started_at")?,
        finished_at: c.opt_time("finished_at")?,
        scan_id: c.get("scan_id")?,
        error: c.get("error")?,
    })
}

const JOB_COLUMNS: &str = "id, origin, schedule_key, due, segments, sensor, state, submitted_at, \
                           claimed_by, started_at, finished_at, scan_id, error";

/// The segments a job touches: its own, or every one of `all` when it names none.
fn job_segments<'a>(segments: &'a [String], all: &'a [String]) -> &'a [String] {
    if segments.is_empty() { all } else { segments }
}

impl Store {
    /// This process's owner key, as runs and jobs record it: `local` on SQLite.
    pub fn owner(&self) -> String {
        match &self.session {
            Some(s) => s.key.to_string(),
            None => "local".to_string(),
        }
    }

    /// Queue a job.
    pub async fn insert_job(&self, job: &NewJob<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO scan_jobs (id, origin, schedule_key, due, segments, sensor, state,
               submitted_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7)",
        )
        .bind(job.id)
        .bind(job.origin)
        .bind(job.schedule_key)
        .bind(job.due)
        .bind(serde_json::to_string(job.segments)?)
        .bind(job.sensor)
        .bind(timestamp(job.submitted_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One job by id.
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM scan_jobs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Jobs queued or running, on every hub.
    pub async fn pending_jobs(&self) -> Result<usize, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM scan_jobs WHERE state IN ('queued', 'running')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Jobs queued and running, counted by state.
    pub async fn pending_jobs_by_state(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM scan_jobs WHERE state IN ('queued', 'running')
             GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::aggregate(r, "scan_jobs");
                Ok((c.get("state")?, c.get("n")?))
            })
            .collect()
    }

    /// Whether a job of schedule entry `key` is queued or running (its next tick is skipped).
    pub async fn schedule_busy(&self, key: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM scan_jobs
             WHERE schedule_key = $1 AND state IN ('queued', 'running')",
        )
        .bind(key)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Take tick `due` of schedule entry `key`: true for the one caller that inserted it,
    /// false for everyone after (another hub, or this one again).
    pub async fn take_tick(&self, key: &str, due: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO schedule_ticks (key, due, taken_by, taken_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key, due) DO NOTHING",
        )
        .bind(key)
        .bind(due)
        .bind(self.owner())
        .bind(timestamp(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claim the oldest queued job for a hub (no sensor) whose segments no running job holds;
    /// `all` names every segment a job without segments touches. The job is `running` and
    /// claimed by this process when returned.
    pub async fn claim_job(&self, all: &[String]) -> Result<Option<JobRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let lock_rows = match self.backend {
            Backend::Postgres => {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(CLAIM_KEY)
                    .execute(&mut *tx)
                    .await?;
                " FOR UPDATE SKIP LOCKED"
            }
            Backend::Sqlite => "",
        };
        let running = sqlx::query("SELECT id, segments FROM scan_jobs WHERE state = 'running'")
            .fetch_all(&mut *tx)
            .await?;
        let mut busy = BTreeSet::new();
        for r in &running {
            let segments: Vec<String> = Cells::new(r, "scan_jobs", "id").json("segments")?;
            busy.extend(job_segments(&segments, all).iter().cloned());
        }
        let candidates = sqlx::query(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM scan_jobs WHERE state = 'queued' AND sensor IS NULL
             ORDER BY submitted_at, id LIMIT {CLAIM_WINDOW}{lock_rows}"
        )))
        .fetch_all(&mut *tx)
        .await?;
        let mut chosen = None;
        for r in &candidates {
            let job = job_from_row(r)?;
            if job_segments(&job.segments, all)
                .iter()
                .all(|s| !busy.contains(s))
            {
                chosen = Some(job);
                break;
            }
        }
        let Some(mut job) = chosen else {
            tx.commit().await?;
            return Ok(None);
        };
        let now = Utc::now();
        sqlx::query(
            "UPDATE scan_jobs SET state = 'running', claimed_by = $2, started_at = $3
             WHERE id = $1",
        )
        .bind(&job.id)
        .bind(self.owner())
        .bind(timestamp(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        job.state = "running".to_string();
        job.claimed_by = Some(self.owner());
        job.started_at = Some(now);
        Ok(Some(job))
    }

    /// The on-demand jobs handed to `sensor` that it has not begun: id and segments.
    pub async fn sensor_requests(
        &self,
        sensor: &str,
    ) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, segments FROM scan_jobs WHERE sensor = $1 AND state = 'queued'
             ORDER BY submitted_at, id",
        )
        .bind(sensor)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "scan_jobs", "id");
                Ok((c.get("id")?, c.json("segments")?))
            })
            .collect()
    }

    /// `sensor` began job `id` (its scan's first batch names it): running, as run `scan_id`.
    /// Only a queued job of that sensor moves; anything else is left as it is.
    pub async fn begin_sensor_job(
        &self,
        id: &str,
        sensor: &str,
        scan_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE scan_jobs SET state = 'running', claimed_by = $2, started_at = $3, scan_id = $4
             WHERE id = $1 AND sensor = $5 AND state = 'queued'",
        )
        .bind(id)
        .bind(format!("sensor:{sensor}"))
        .bind(timestamp(Utc::now()))
        .bind(scan_id)
        .bind(sensor)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A sensor's run `scan_id` was recorded in `state`: the job it answered ends so too.
    pub async fn finish_sensor_job(&self, scan_id: &str, state: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE scan_jobs SET state = $2, finished_at = $3
             WHERE scan_id = $1 AND sensor IS NOT NULL AND state = 'running'",
        )
        .bind(scan_id)
        .bind(state)
        .bind(timestamp(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Put a claimed job back in the queue (this hub stopped before its scan started).
    pub async fn release_job(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE scan_jobs SET state = 'queued', claimed_by = NULL, started_at = NULL
             WHERE id = $1 AND state = 'running'",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Record how a job ended.
    pub async fn finish_job(
        &self,
        id: &str,
        state: &str,
        scan_id: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE scan_jobs SET state = $2, scan_id = $3, error = $4, finished_at = $5
             WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(scan_id)
        .bind(error)
        .bind(timestamp(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Try to lead (run the schedules and the bulletin): true while this process holds the
    /// leader lock. On SQLite always true. A lost session (the server restarted) is
    /// reconnected here and leadership taken again only if no one else took it meanwhile.
    pub async fn try_lead(&self) -> Result<bool, StoreError> {
        use std::sync::atomic::Ordering;
        let Some(session) = &self.session else {
            return Ok(true);
        };
        let mut guard = session.conn.lock().await;
        if guard.is_none() {
            *guard = Some(Session::connect(&self.pool, session.key).await?);
            session.leading.store(false, Ordering::SeqCst);
        }
        let conn = guard.as_mut().expect("session connection present");
        let result: Result<bool, sqlx::Error> = if session.leading.load(Ordering::SeqCst) {
            // Still leading while the session answers.
            sqlx::query("SELECT 1")
                .execute(&mut *conn)
                .await
                .map(|_| true)
        } else {
            sqlx::query("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_KEY)
                .fetch_one(&mut *conn)
                .await
                .and_then(|r| r.try_get::<bool, _>(0))
        };
        match result {
            Ok(leading) => {
                session.leading.store(leading, Ordering::SeqCst);
                Ok(leading)
            }
            Err(error) => {
                // The session is gone, and with it both locks.
                *guard = None;
                session.leading.store(false, Ordering::SeqCst);
                Err(error.into())
            }
        }
    }

    /// Close what dead processes left `running`: their runs become `incomplete`, and so do
    /// their jobs. On PostgreSQL every owner whose owner lock can be taken, i.e. whose
    /// connection is gone (any hub may call this at any time); on SQLite (one process per
    /// file) nothing: what an earlier process left running was closed at open
    /// ([`Store::reap_at_open`]). Returns the runs closed.
    pub async fn reap(&self) -> Result<u64, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(0);
        }
        let rows = sqlx::query(
            "SELECT owner AS o FROM scan_runs WHERE state = 'running' AND sensor IS NULL
             UNION SELECT claimed_by AS o FROM scan_jobs WHERE state = 'running' AND sensor IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut owners: BTreeSet<Option<String>> = BTreeSet::new();
        for r in &rows {
            owners.insert(Cells::aggregate(r, "scan_runs").get("o")?);
        }
        let mut closed = 0;
        let mut conn = self.pool.acquire().await?;
        for owner in owners {
            let dead = match owner.as_deref().map(str::parse::<i64>) {
                // Runs from before owners were recorded: no live process claims them.
                None | Some(Err(_)) => true,
                Some(Ok(key)) if self.session.as_ref().is_some_and(|s| s.key == key) => false,
                Some(Ok(key)) => {
                    let free: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
                        .bind(key)
                        .fetch_one(&mut *conn)
                        .await?
                        .try_get(0)?;
                    if free {
                        sqlx::query("SELECT pg_advisory_unlock($1)")
                            .bind(key)
                            .execute(&mut *conn)
                            .await?;
                    }
                    free
                }
            };
            if dead {
                closed += self.close_owner(owner.as_deref()).await?;
                tracing::warn!(owner = ?owner, "a process sharing the store stopped mid-scan: its runs are incomplete");
            }
        }
        Ok(closed)
    }

    /// At open on SQLite: everything left running was left by an earlier process.
    pub(super) async fn reap_at_open(&self) -> Result<u64, StoreError> {
        match self.backend {
            Backend::Sqlite => self.close_owner(None).await,
            Backend::Postgres => self.reap().await,
        }
    }

    /// Mark the runs and jobs of `owner` (`None`: those recorded without one; on SQLite:
    /// every one) that still say `running` as `incomplete`, in one transaction. A sensor's
    /// run on a hub is never closed here: its sensor ends it with its final batch, whichever
    /// hub is up by then.
    async fn close_owner(&self, owner: Option<&str>) -> Result<u64, StoreError> {
        let every = self.backend == Backend::Sqlite;
        let (runs_where, jobs_where) = match (every, owner) {
            (true, _) => ("", ""),
            (false, None) => (" AND owner IS NULL", " AND claimed_by IS NULL"),
            (false, Some(_)) => (" AND owner = $1", " AND claimed_by = $2"),
        };
        let mut tx = self.pool.begin().await?;
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "UPDATE scan_runs SET state = 'incomplete'
             WHERE state = 'running' AND sensor IS NULL{runs_where}"
        )));
        if let (false, Some(o)) = (every, owner) {
            q = q.bind(o);
        }
        let closed = q.execute(&mut *tx).await?.rows_affected();
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "UPDATE scan_jobs SET state = 'incomplete', finished_at = $1,
               error = 'the process running it stopped'
             WHERE state = 'running' AND sensor IS NULL{jobs_where}"
        )))
        .bind(timestamp(Utc::now()));
        if let (false, Some(o)) = (every, owner) {
            q = q.bind(o);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(closed)
    }
}
