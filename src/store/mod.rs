//! Store: the history netpatrol keeps between scans.
//!
//! Two backends behind one pool type (`sqlx::Any`): SQLite (WAL), the embedded default
//! ([`Store::open`]), and PostgreSQL ([`Store::open_postgres`], `store: {url: postgres://...}`).
//! The SQL is kept portable (`$n` placeholders, `ON CONFLICT ... DO UPDATE`, text timestamps,
//! no backend-only functions, `CAST(SUM(..) AS BIGINT)` where PostgreSQL would give NUMERIC),
//! so one query text serves both; the few statements that cannot be shared are chosen by
//! [`Backend`]. Every column is read through [`Cells`].
//!
//! Migrations are embedded in the binary and applied in order at open by sqlx's migrator
//! (`_sqlx_migrations` records which ran, with their checksums). A SQLite store made by the
//! earlier hand-written runner (its `schema_migrations` table) is adopted first: the versions it
//! records are entered in `_sqlx_migrations` as applied, then the migrator goes on from there;
//! `schema_migrations` is left as it was and no longer written.
//!
//! Consistency: a scan run is inserted as `running` when it starts; while it runs, each batch of
//! hosts it finished is checkpointed ([`Store::checkpoint`], one transaction per batch); at the
//! end everything it saw is written again in one transaction together with its final state
//! (`complete`, `degraded` or `incomplete`) and coverage, replacing the checkpoints. So an
//! interrupted scan never leaves half-written rows, and a process killed mid-scan leaves a run
//! that still says `running` with the batches it finished, marked `incomplete` at the next
//! open (SQLite), or by any process sharing the PostgreSQL store once the dead one's owner
//! lock is free ([`Store::reap`], `jobs`). A hub's runs of a sensor's scans
//! (`scan_runs.sensor`) are never closed so: their sensor ends them with its final batch (see
//! `sensors.rs`).
//!
//! Several processes may share a PostgreSQL store: scan jobs, schedule ticks and the leader
//! lock live in `jobs`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationType, Migrator};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Connection, Executor, Row, SqlSafeStr};

use crate::config::StoreSettings;
use crate::facts::Subject;
use crate::finding::{Event, Finding, State};
use crate::observation::{HostObservation, RunState, ScanObservations, ScanRun};
use crate::rules::Severity;

mod audit;
mod bulletin_queries;
mod jobs;
pub use jobs::{JobRow, NewJob};
mod outbox;
mod rectification;
pub use audit::AuditEntry;
pub use bulletin_queries::{FindingEvent, PeriodHost, PeriodRun, PeriodService};
pub use outbox::{Enqueued, NewMail, OutboxMail, OutboxState};
pub use rectification::{
    Answer, AnswerKind, Decision, DecisionKind, ExceptionKind, STORED_WAIVER_FILE, StoredException,
    override_expires,
};

mod sensors;
pub use sensors::{IncomingBatch, OutboxBatch, Received, SensorContact};

mod snapshot;
pub use snapshot::{FindingCount, FindingFilter, LatestRun, PlacementCount, TlsRow};

/// Embedded migrations, in order. Never edit one that has shipped: add the next. The first
/// comment line of each is its description in `_sqlx_migrations`.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_foundation.sql")),
    (2, include_str!("migrations/0002_findings.sql")),
    (3, include_str!("migrations/0003_outbox.sql")),
    (4, include_str!("migrations/0004_daemon.sql")),
    (5, include_str!("migrations/0005_coverage.sql")),
    (7, include_str!("migrations/0007_audit.sql")),
    (8, include_str!("migrations/0008_outbox_lease.sql")),
    (9, include_str!("migrations/0009_rectification.sql")),
    (10, include_str!("migrations/0010_sensors.sql")),
    (
        11,
        include_str!("migrations/0011_rectification_decisions.sql"),
    ),
    (12, include_str!("migrations/0012_jobs.sql")),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate store to version {version}: {source}")]
    Migrate {
        version: i64,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate store: {0}")]
    Migrator(#[source] MigrateError),
    /// The PostgreSQL password named by `store.password_env` cannot be had.
    #[error("{0}")]
    Password(String),
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("cannot encode or decode JSON in the store: {0}")]
    Encode(#[from] serde_json::Error),
    /// A value in the store that does not read as what the schema promises (a mistyped
    /// column written by hand, a truncated JSON document): the row is named so the operator
    /// can find and fix it.
    #[error("corrupt store: table {table}, column {column}, row {row}: {detail}")]
    CorruptRow {
        table: &'static str,
        column: String,
        /// The row's key (id, fingerprint, key), or `-` for an aggregate.
        row: String,
        detail: String,
    },
}

/// One row read column by column: every value goes through `try_get`, and a value that does
/// not decode is a [`StoreError::CorruptRow`] naming the table, the column and the row.
pub(crate) struct Cells<'r> {
    row: &'r AnyRow,
    table: &'static str,
    id: String,
}

impl<'r> Cells<'r> {
    /// A row of `table` identified by its column `id_column` (text or integer).
    pub(crate) fn new(row: &'r AnyRow, table: &'static str, id_column: &str) -> Cells<'r> {
        let id = row
            .try_get::<String, _>(id_column)
            .or_else(|_| row.try_get::<i64, _>(id_column).map(|n| n.to_string()))
            .unwrap_or_else(|_| format!("({id_column} unreadable)"));
        Cells { row, table, id }
    }

    /// An aggregate row (a `GROUP BY` result): no single row to name.
    pub(crate) fn aggregate(row: &'r AnyRow, table: &'static str) -> Cells<'r> {
        Cells {
            row,
            table,
            id: "-".to_string(),
        }
    }

    pub(crate) fn bad(&self, column: &str, detail: impl Into<String>) -> StoreError {
        StoreError::CorruptRow {
            table: self.table,
            column: column.to_string(),
            row: self.id.clone(),
            detail: detail.into(),
        }
    }

    /// Column `column`, decoded as `T`.
    pub(crate) fn get<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        self.row
            .try_get::<T, _>(column)
            .map_err(|e| self.bad(column, decode_detail(e)))
    }

    /// A text column holding an RFC 3339 timestamp.
    pub(crate) fn time(&self, column: &str) -> Result<DateTime<Utc>, StoreError> {
        let text: String = self.get(column)?;
        parse_time(&text).ok_or_else(|| self.bad(column, format!("not a timestamp: {text:?}")))
    }

    /// A nullable timestamp column.
    pub(crate) fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.get::<Option<String>>(column)? {
            None => Ok(None),
            Some(text) => parse_time(&text)
                .map(Some)
                .ok_or_else(|| self.bad(column, format!("not a timestamp: {text:?}"))),
        }
    }

    /// A text column holding JSON.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(
        &self,
        column: &str,
    ) -> Result<T, StoreError> {
        let text: String = self.get(column)?;
        serde_json::from_str(&text).map_err(|e| self.bad(column, format!("bad JSON: {e}")))
    }

    /// An integer column that must fit `T` (a port, a count).
    pub(crate) fn int<T: TryFrom<i64>>(&self, column: &str) -> Result<T, StoreError> {
        let n: i64 = self.get(column)?;
        T::try_from(n).map_err(|_| self.bad(column, format!("out of range: {n}")))
    }

    /// A nullable integer column that must fit `T`.
    pub(crate) fn opt_int<T: TryFrom<i64>>(&self, column: &str) -> Result<Option<T>, StoreError> {
        match self.get::<Option<i64>>(column)? {
            None => Ok(None),
            Some(n) => T::try_from(n)
                .map(Some)
                .map_err(|_| self.bad(column, format!("out of range: {n}"))),
        }
    }

    /// A text column parsed by `parse` (an enum's name, a date).
    pub(crate) fn parsed<T>(
        &self,
        column: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, StoreError> {
        let text: String = self.get(column)?;
        parse(&text).ok_or_else(|| self.bad(column, format!("unexpected value {text:?}")))
    }
}

/// What went wrong decoding a column, without the sqlx wrapper's noise.
fn decode_detail(e: sqlx::Error) -> String {
    match e {
        sqlx::Error::ColumnDecode { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// A host as the store remembers it across scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHost {
    pub ip: String,
    pub segment: String,
    pub ptr: Option<String>,
    pub first_seen: String,
    pub last_seen: String,
}

/// A service as the store remembers it across scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredService {
    pub ip: String,
    pub port: u16,
    pub service: String,
    pub first_seen: String,
    pub last_seen: String,
}

/// A scan run's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRun {
    pub id: String,
    pub state: String,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// Which database a [`Store`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// PostgreSQL: this process's own connection holding its owner lock (and the leader lock
    /// while it leads), see [`jobs`].
    session: Option<std::sync::Arc<jobs::Session>>,
}

/// The store's text form of a timestamp.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Store {
    /// Open the store `settings` name: PostgreSQL when `url` is set, else the SQLite file.
    pub async fn connect(settings: &StoreSettings) -> Result<Store, StoreError> {
        match &settings.url {
            None => Store::open(&settings.path).await,
            Some(url) => {
                let password = match &settings.password_env {
                    None => None,
                    Some(var) => {
                        Some(std::env::var(var).map_err(|_| StoreError::Password(var.clone()))?)
                    }
                };
                Store::open_postgres(url, password.as_deref()).await
            }
        }
    }

    /// Open (creating if needed) the SQLite store at `path` and bring its schema up to date.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(sqlx::Error::Io(e)))?;
        }
        sqlx::any::install_default_drivers();
        let url = SqliteConnectOptions::from_str("sqlite:")
            .map_err(open_err)?
            .filename(path)
            .create_if_missing(true)
            .to_url_lossy();
        let options = AnyConnectOptions::from_url(&url).map_err(open_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // What SqliteConnectOptions would set, through the Any driver.
                    for pragma in [
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = NORMAL",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        conn.execute(pragma).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(open_err)?;
        Store::ready(pool, Backend::Sqlite).await
    }

    /// Open the PostgreSQL store at `url` (`postgres://user@host:port/database`; the database
    /// must exist), with `password` if given, and bring its schema up to date.
    pub async fn open_postgres(url: &str, password: Option<&str>) -> Result<Store, StoreError> {
        // Named in messages without any password the URL may carry.
        let shown = match url::Url::parse(url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(_) => url.to_string(),
            Err(_) => "(unparseable PostgreSQL URL)".to_string(),
        };
        let open_err = |source| StoreError::Open {
            path: shown.clone(),
            source,
        };
        sqlx::any::install_default_drivers();
        let mut options = PgConnectOptions::from_str(url).map_err(open_err)?;
        if let Some(password) = password {
            options = options.password(password);
        }
        let options = AnyConnectOptions::from_url(&options.to_url_lossy()).map_err(open_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            // A server that does not answer fails the open after this, not after sqlx's 30 s.
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(open_err)?;
        Store::ready(pool, Backend::Postgres).await
    }

    /// Migrate a freshly opened pool, start the PostgreSQL session, and close the runs a
    /// dead process left `running` ([`Store::reap`]; on SQLite every run still `running`).
    async fn ready(pool: AnyPool, backend: Backend) -> Result<Store, StoreError> {
        let mut store = Store {
            pool,
            backend,
            session: None,
        };
        store.migrate().await?;
        if backend == Backend::Postgres {
            store.session = Some(std::sync::Arc::new(
                jobs::Session::start(&store.pool).await?,
            ));
        }
        store.reap_at_open().await?;
        Ok(store)
    }

    /// Which database this store is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The embedded migrations as sqlx's migrator sees them.
    fn migrator() -> Migrator {
        Migrator::with_migrations(
            MIGRATIONS
                .iter()
                .map(|(version, sql)| {
                    let description = sql
                        .lines()
                        .next()
                        .and_then(|l| l.strip_prefix("--"))
                        .map_or_else(|| format!("migration {version}"), |l| l.trim().to_string());
                    Migration::new(
                        *version,
                        description.into(),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect(),
        )
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = Store::migrator();
        if self.backend == Backend::Sqlite {
            self.adopt_old_runner(&migrator).await?;
        }
        migrator.run(&self.pool).await.map_err(StoreError::Migrator)
    }

    /// A SQLite store the earlier runner made (`schema_migrations`, no `_sqlx_migrations`):
    /// record the versions it applied as applied for sqlx's migrator, in one transaction.
    async fn adopt_old_runner(&self, migrator: &Migrator) -> Result<(), StoreError> {
        let table = |name: &'static str| {
            sqlx::query_scalar::<_, String>(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1",
            )
            .bind(name)
        };
        let old = table("schema_migrations")
            .fetch_optional(&self.pool)
            .await?;
        let new = table("_sqlx_migrations").fetch_optional(&self.pool).await?;
        if old.is_none() || new.is_some() {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        tx.ensure_migrations_table(&migrator.table_name)
            .await
            .map_err(StoreError::Migrator)?;
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
                .fetch_all(&mut *tx)
                .await?;
        for migration in migrator.iter().filter(|m| applied.contains(&m.version)) {
            let fail = |source| StoreError::Migrate {
                version: migration.version,
                source,
            };
            sqlx::query(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                 VALUES ($1, $2, TRUE, $3, 0)",
            )
            .bind(migration.version)
            .bind(migration.description.to_string())
            .bind(migration.checksum.to_vec())
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Record that a scan has started.
    pub async fn begin_run(&self, run: &ScanRun) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO scan_runs (id, started_at, state, segments, probe_kinds, addresses, probes,
               owner)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&run.id)
        .bind(timestamp(run.started_at))
        .bind(RunState::Running.as_str())
        .bind(serde_json::to_string(&run.segments)?)
        .bind(probe_kinds(run))
        .bind(run.addresses as i64)
        .bind(0i64)
        .bind(self.owner())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Write one finished batch of a running scan's hosts (hosts, services and their
    /// observations), in one transaction. The final [`record`](Store::record) replaces them.
    /// `departments` gives each host's department, in order.
    pub async fn checkpoint(
        &self,
        run: &ScanRun,
        hosts: &[HostObservation],
        departments: &[Option<String>],
    ) -> Result<(), StoreError> {
        let seen = timestamp(Utc::now());
        let mut tx = self.pool.begin().await?;
        let hosts: Vec<&HostObservation> = hosts.iter().collect();
        write_hosts(&mut tx, &run.id, &seen, &hosts, departments).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Write everything a scan saw, the findings it changed, and its final state, in one
    /// transaction. `report` is the JSON report kept for the API. `departments` gives each
    /// host's department (by ip).
    pub async fn record(
        &self,
        scan: &ScanObservations,
        departments: &(dyn Fn(&str) -> Option<String> + Sync),
        findings: &[Finding],
        events: &[(String, Event)],
        report: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.record_run(scan, departments, findings, events, report, false)
            .await
            .map(|_| ())
    }

    /// [`record`](Store::record), only if the run is still `running` in the store: the
    /// run's final state and everything else commit together, so a run is recorded exactly
    /// once however often this is called (a sensor's final batch sent again, two hubs).
    /// `false`: it was recorded already, nothing was written.
    pub async fn record_once(
        &self,
        scan: &ScanObservations,
        departments: &(dyn Fn(&str) -> Option<String> + Sync),
        findings: &[Finding],
        events: &[(String, Event)],
        report: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        self.record_run(scan, departments, findings, events, report, true)
            .await
    }

    async fn record_run(
        &self,
        scan: &ScanObservations,
        departments: &(dyn Fn(&str) -> Option<String> + Sync),
        findings: &[Finding],
        events: &[(String, Event)],
        report: &serde_json::Value,
        once: bool,
    ) -> Result<bool, StoreError> {
        let run = &scan.run;
        let seen = timestamp(run.finished_at.unwrap_or(run.started_at));
        let mut tx = self.pool.begin().await?;
        // The run row first: begin_run may not have been called (a one-shot recording).
        sqlx::query(
            "INSERT INTO scan_runs (id, started_at, state, segments, probe_kinds, addresses, probes)
             VALUES ($1, $2, 'running', $3, $4, $5, 0)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&run.id)
        .bind(timestamp(run.started_at))
        .bind(serde_json::to_string(&run.segments)?)
        .bind(probe_kinds(run))
        .bind(run.addresses as i64)
        .execute(&mut *tx)
        .await?;
        // Claimed first, so that a second recorder waits here (PostgreSQL row lock; SQLite
        // writes one at a time) and then finds the run recorded.
        if once {
            let claimed = sqlx::query(
                "UPDATE scan_runs SET state = 'recording' WHERE id = $1 AND state = 'running'",
            )
            .bind(&run.id)
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        // What checkpoints wrote is written again below, whole.
        sqlx::query("DELETE FROM observations WHERE scan_id = $1")
            .bind(&run.id)
            .execute(&mut *tx)
            .await?;
        let hosts: Vec<&HostObservation> = scan.hosts.iter().collect();
        let host_departments: Vec<Option<String>> = scan
            .hosts
            .iter()
            .map(|h| departments(&h.ip.to_string()))
            .collect();
        write_hosts(&mut tx, &run.id, &seen, &hosts, &host_departments).await?;
        for ((probe, reason), count) in &scan.errors {
            sqlx::query(
                "INSERT INTO probe_errors (scan_id, probe, reason, count) VALUES ($1, $2, $3, $4)",
            )
            .bind(&run.id)
            .bind(probe.as_str())
            .bind(reason.as_str())
            .bind(*count as i64)
            .execute(&mut *tx)
            .await?;
        }
        struct FindingRow<'a> {
            f: &'a Finding,
            title: String,
            evidence: String,
            basis: String,
        }
        let finding_rows = findings
            .iter()
            .map(|f| {
                Ok(FindingRow {
                    f,
                    title: serde_json::to_string(&f.title)?,
                    evidence: serde_json::to_string(&f.evidence)?,
                    basis: serde_json::to_string(&f.basis)?,
                })
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        insert_rows(
            &mut tx,
            "INSERT INTO findings (fingerprint, rule, severity, subject, ip, port, segment, department,
               project, approval, title, evidence, basis, first_seen, last_seen, due, state,
               absent_scans, resolved_at, reopened_at)",
            "ON CONFLICT (fingerprint) DO UPDATE SET severity = excluded.severity,
               ip = excluded.ip, port = excluded.port, segment = excluded.segment,
               department = excluded.department, project = excluded.project,
               approval = excluded.approval, title = excluded.title, evidence = excluded.evidence,
               basis = excluded.basis, last_seen = excluded.last_seen, due = excluded.due,
               state = excluded.state, absent_scans = excluded.absent_scans,
               resolved_at = excluded.resolved_at, reopened_at = excluded.reopened_at",
            20,
            &finding_rows,
            |q, r| {
                let f = r.f;
                q.bind(&f.fingerprint)
                    .bind(&f.rule)
                    .bind(f.severity.as_str())
                    .bind(f.subject.as_str())
                    .bind(&f.ip)
                    .bind(f.port.map(i64::from))
                    .bind(&f.segment)
                    .bind(&f.department)
                    .bind(&f.project)
                    .bind(&f.approval)
                    .bind(&r.title)
                    .bind(&r.evidence)
                    .bind(&r.basis)
                    .bind(timestamp(f.first_seen))
                    .bind(timestamp(f.last_seen))
                    .bind(f.due.to_string())
                    .bind(f.state.as_str())
                    .bind(i64::from(f.absent_scans))
                    .bind(f.resolved_at.map(timestamp))
                    .bind(f.reopened_at.map(timestamp))
            },
        )
        .await?;
        insert_rows(
            &mut tx,
            "INSERT INTO finding_events (fingerprint, scan_id, at, event)",
            "",
            4,
            events,
            |q, (fingerprint, event)| {
                q.bind(fingerprint)
                    .bind(&run.id)
                    .bind(&seen)
                    .bind(event.as_str())
            },
        )
        .await?;
        sqlx::query(
            "UPDATE scan_runs SET state = $2, finished_at = $3, probes = $4, report = $5,
               planned = $6, answered = $7, failed_remote = $8, failed_local = $9 WHERE id = $1",
        )
        .bind(&run.id)
        .bind(run.state.as_str())
        .bind(run.finished_at.map(timestamp))
        .bind(run.probes as i64)
        .bind(report.to_string())
        .bind(run.coverage.planned as i64)
        .bind(run.coverage.answered as i64)
        .bind(run.coverage.failed_remote as i64)
        .bind(run.coverage.failed_local as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn runs(&self) -> Result<Vec<StoredRun>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, state, started_at, finished_at FROM scan_runs ORDER BY started_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    pub async fn hosts(&self) -> Result<Vec<StoredHost>, StoreError> {
        let rows = sqlx::query(
            "SELECT ip, segment, ptr, first_seen, last_seen FROM hosts ORDER BY segment, ip",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "hosts", "ip");
                Ok(StoredHost {
                    ip: c.get("ip")?,
                    segment: c.get("segment")?,
                    ptr: c.get("ptr")?,
                    first_seen: c.get("first_seen")?,
                    last_seen: c.get("last_seen")?,
                })
            })
            .collect()
    }

    pub async fn services(&self) -> Result<Vec<StoredService>, StoreError> {
        let rows = sqlx::query(
            "SELECT ip, port, service, first_seen, last_seen FROM services ORDER BY ip, port",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "services", "ip");
                Ok(StoredService {
                    ip: c.get("ip")?,
                    port: c.int("port")?,
                    service: c.get("service")?,
                    first_seen: c.get("first_seen")?,
                    last_seen: c.get("last_seen")?,
                })
            })
            .collect()
    }

    /// Every finding, open and resolved.
    pub async fn findings(&self) -> Result<Vec<Finding>, StoreError> {
        let rows = sqlx::query("SELECT * FROM findings ORDER BY first_seen, fingerprint")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(finding_from_row).collect()
    }

    /// Lifecycle events of one finding, oldest first: (at, event).
    pub async fn finding_events(
        &self,
        fingerprint: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, event FROM finding_events WHERE fingerprint = $1 ORDER BY at, event",
        )
        .bind(fingerprint)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "finding_events", "at");
                Ok((c.get("at")?, c.get("event")?))
            })
            .collect()
    }

    /// When each address last answered, over every scan recorded.
    pub async fn last_seen(&self) -> Result<HashMap<IpAddr, DateTime<Utc>>, StoreError> {
        let rows = sqlx::query("SELECT ip, last_seen FROM hosts")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "hosts", "ip");
                Ok((c.parsed("ip", |s| s.parse().ok())?, c.time("last_seen")?))
            })
            .collect()
    }

    /// The JSON report a run recorded, if any.
    pub async fn report(&self, run_id: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let text: Option<Option<String>> =
            sqlx::query_scalar("SELECT report FROM scan_runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match text.flatten() {
            Some(t) => Some(
                serde_json::from_str(&t).map_err(|e| StoreError::CorruptRow {
                    table: "scan_runs",
                    column: "report".to_string(),
                    row: run_id.to_string(),
                    detail: format!("bad JSON: {e}"),
                })?,
            ),
            None => None,
        })
    }

    /// Flush the write-ahead log into the database file and close every connection.
    pub async fn close(self) {
        if self.backend == Backend::Sqlite {
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await;
        }
        if let Some(session) = &self.session {
            session.close().await;
        }
        self.pool.close().await;
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn finding_from_row(r: &AnyRow) -> Result<Finding, StoreError> {
    let c = Cells::new(r, "findings", "fingerprint");
    Ok(Finding {
        fingerprint: c.get("fingerprint")?,
        rule: c.get("rule")?,
        severity: c.parsed("severity", Severity::parse)?,
        subject: c.parsed("subject", Subject::parse)?,
        ip: c.get("ip")?,
        port: c.opt_int("port")?,
        segment: c.get("segment")?,
        department: c.get("department")?,
        project: c.get("project")?,
        approval: c.get("approval")?,
        title: c.json("title")?,
        evidence: c.json("evidence")?,
        basis: c.json("basis")?,
        first_seen: c.time("first_seen")?,
        last_seen: c.time("last_seen")?,
        due: c.parsed("due", |s| s.parse().ok())?,
        state: c.parsed("state", State::parse)?,
        absent_scans: c.int("absent_scans")?,
        resolved_at: c.opt_time("resolved_at")?,
        reopened_at: c.opt_time("reopened_at")?,
    })
}

/// A `scan_runs` row's id, state and times.
pub(crate) fn run_from_row(r: &AnyRow) -> Result<StoredRun, StoreError> {
    let c = Cells::new(r, "scan_runs", "id");
    Ok(StoredRun {
        id: c.get("id")?,
        state: c.get("state")?,
        started_at: c.get("started_at")?,
        finished_at: c.get("finished_at")?,
    })
}

fn probe_kinds(run: &ScanRun) -> String {
    run.probe_kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Most bound values in one statement (SQLite allows 32,766, PostgreSQL 65,535).
const MAX_BINDS: usize = 8000;

/// Insert `rows` (each `width` values, bound by `bind`) with `head` (`INSERT INTO t (...)`)
/// and `tail` (`ON CONFLICT ...`), as few multi-row statements as the bind limit allows.
async fn insert_rows<'q, T>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    head: &str,
    tail: &str,
    width: usize,
    rows: &'q [T],
    bind: impl Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
) -> Result<(), StoreError> {
    for chunk in rows.chunks((MAX_BINDS / width).max(1)) {
        let mut sql = String::with_capacity(head.len() + tail.len() + chunk.len() * width * 5);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for j in 0..width {
                if j > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("${}", i * width + j + 1));
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(tail);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            q = bind(q, row);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Hosts of a scan: their rows, their services' rows and the observations, in multi-row
/// statements. `departments` gives each host's department, in order.
async fn write_hosts(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_id: &str,
    seen: &str,
    hosts: &[&HostObservation],
    departments: &[Option<String>],
) -> Result<(), StoreError> {
    struct HostRow<'a> {
        ip: String,
        host: &'a HostObservation,
        department: Option<String>,
        data: String,
    }
    struct ServiceRow<'a> {
        ip: &'a str,
        service: &'a crate::observation::ServiceObservation,
        data: String,
    }
    let host_rows: Vec<HostRow> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| HostRow {
            ip: host.ip.to_string(),
            host,
            department: departments.get(i).cloned().flatten(),
            data: serde_json::json!({
                "alive_by": host.alive_by,
                "icmp_rtt_ms": host.icmp_rtt.map(|d| d.as_secs_f64() * 1000.0),
                "ptr": host.ptr,
            })
            .to_string(),
        })
        .collect();
    let mut service_rows = Vec::new();
    for h in &host_rows {
        for service in &h.host.services {
            service_rows.push(ServiceRow {
                ip: &h.ip,
                service,
                data: serde_json::to_string(service)?,
            });
        }
    }
    insert_rows(
        tx,
        "INSERT INTO hosts (ip, segment, network, department, ptr, first_seen, last_seen, last_scan)",
        "ON CONFLICT (ip) DO UPDATE SET segment = excluded.segment,
           network = excluded.network, department = excluded.department,
           ptr = COALESCE(excluded.ptr, hosts.ptr),
           last_seen = excluded.last_seen, last_scan = excluded.last_scan",
        8,
        &host_rows,
        |q, h| {
            q.bind(&h.ip)
                .bind(&h.host.segment)
                .bind(h.host.network.as_str())
                .bind(&h.department)
                .bind(&h.host.ptr)
                .bind(seen)
                .bind(seen)
                .bind(run_id)
        },
    )
    .await?;
    insert_rows(
        tx,
        "INSERT INTO observations (scan_id, ip, port, kind, data)",
        "",
        5,
        &host_rows,
        |q, h| {
            q.bind(run_id)
                .bind(&h.ip)
                .bind(None::<i64>)
                .bind("host")
                .bind(&h.data)
        },
    )
    .await?;
    insert_rows(
        tx,
        "INSERT INTO services (ip, port, protocol, service, product, version, banner, first_seen,
           last_seen, last_scan)",
        "ON CONFLICT (ip, port, protocol) DO UPDATE SET service = excluded.service,
           product = excluded.product, version = excluded.version, banner = excluded.banner,
           last_seen = excluded.last_seen, last_scan = excluded.last_scan",
        10,
        &service_rows,
        |q, s| {
            q.bind(s.ip)
                .bind(i64::from(s.service.port))
                .bind(s.service.protocol)
                .bind(&s.service.service)
                .bind(&s.service.product)
                .bind(&s.service.version)
                .bind(&s.service.banner)
                .bind(seen)
                .bind(seen)
                .bind(run_id)
        },
    )
    .await?;
    insert_rows(
        tx,
        "INSERT INTO observations (scan_id, ip, port, kind, data)",
        "",
        5,
        &service_rows,
        |q, s| {
            q.bind(run_id)
                .bind(s.ip)
                .bind(i64::from(s.service.port))
                .bind("service")
                .bind(&s.data)
        },
    )
    .await?;
    Ok(())
}
