//! Daemon: `netpatrol daemon -c FILE` (docs/cli.md): scheduled scans and bulletins, the HTTP
//! server of §4, reload on SIGHUP, ordered shutdown on SIGTERM/SIGINT.
//!
//! Input: the config path. State: [`Daemon`], shared by the scheduler, the worker, the scan
//! tasks and the HTTP handlers; it holds the loaded config, registers and rules ([`Loaded`],
//! swapped whole by a reload), the store and the daemon's own metrics. The scans asked for
//! are jobs in the store (`store::jobs`), each with an id given before it runs, so every hub
//! sharing a PostgreSQL store sees them: the API and the scheduler queue them, the worker of
//! whichever hub claims one first runs it.
//!
//! Invariants:
//! - every scan goes through [`crate::pass::scan_and_record`] (a sensor's, on a hub, through
//!   its assessment step `pass::assess_and_record`, see `hub`), and at most one scan of a
//!   segment runs at a time, across hubs: a job is claimed only when no running job holds one
//!   of its segments (and locally a scan takes a lock per segment, in name order, which
//!   re-tests share); a scheduled scan whose previous job is still queued or running skips its
//!   tick; the hub's own scheduled scans skip the segments a sensor owns;
//! - only the leader acts on schedule ticks (`Store::try_lead`: a PostgreSQL advisory lock;
//!   with SQLite the one process), and a tick is taken once in the store: each scheduled scan
//!   is queued once, the scheduled bulletin is built once per period; the leader closes the
//!   runs and jobs of hubs that died mid-scan (`Store::reap`); a hub that stops hands back the
//!   jobs it claimed but had not started;
//! - the start and every reload go through `config::Loaded::compile`, the step `check-config`
//!   runs (config, registers, rules, crons, token files, the web config): a reload that fails
//!   changes nothing: the old [`Loaded`] stays, each problem is logged at ERROR worded as
//!   `check-config` prints it, and
//!   `netpatrol_config_reload_success` reads 0; scans already running finish with the config
//!   they started with;
//! - shutdown, within [`GRACE`]: the scheduler stops, scans in flight are cancelled (and recorded
//!   as incomplete by `scan_and_record`), the store is flushed and closed, the HTTP server
//!   (exporter) goes last; exit 0;
//! - a reload that leaves a role without its token says so (WARN) and in
//!   `netpatrol_api_token_configured{role}`; renewed TLS certificates are served from the next
//!   connection on.
//!
//! Schedules are cron expressions in the organisation's timezone; missed ticks (suspend, clock
//! jumps, a long scan) are skipped, never caught up.
//!
//! Submodules: `api` (routes, accept loop, limits, audit), `access` (tokens, roles, the
//! decision per request), `web` (the exporter-toolkit web config), `audit` (the `audit`
//! command), `rectify` (the departments' rectification page on their signed link; a 已整改
//! answer queues a re-test, [`Daemon::queue_retest`]), `hub` (the sensors' routes and the
//! ingestion of their scans; scheduled scans skip the segments a sensor owns).

pub mod access;
pub mod api;
pub mod audit;
pub mod hub;
pub mod operator;
pub mod rectify;
pub mod web;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::EXIT_USAGE;
use crate::config::{self, Config};
use crate::observation::RunState;
use crate::output::metrics::DaemonMetrics;
use crate::pass::scan_and_record;
use crate::rules::RuleSet;
use crate::scan::ScanRequest;
use crate::scope::Limits;
use crate::store::Store;

pub use crate::store::STORED_WAIVER_FILE;

/// Time allowed from SIGTERM to exit: cancelled scans record what they saw, the store flushes.
/// Below systemd's default `TimeoutStopSec` (90 s).
pub const GRACE: Duration = Duration::from_secs(20);

/// Longest nap of the scheduler: it re-reads the clock at least this often, so a wall-clock
/// jump cannot hold a schedule back for long.
const MAX_NAP: Duration = Duration::from_secs(60);

/// Scans one daemon runs at once (disjoint segments; overlapping ones wait in the queue).
const MAX_LOCAL_JOBS: usize = 4;

/// How often the job queue is read for work other hubs queued (this daemon's own submissions
/// wake it at once).
const CLAIM_POLL: Duration = Duration::from_secs(2);

/// How often a daemon that does not lead tries to (a leader that died is replaced within
/// this), and how often the leader closes what dead hubs left running.
const LEAD_RETRY: Duration = Duration::from_secs(5);

pub use crate::config::Schedule;

/// Config, registers, rules, schedules and API token: what a reload replaces as one. Built only
/// from what the one compile step (`config::Loaded::compile`) produced, plus the process-wide
/// limits.
pub struct Loaded {
    pub config: Config,
    pub rules: RuleSet,
    pub schedule: Schedule,
    /// Tokens and web config (TLS, basic auth), read by the compile step.
    pub access: access::Access,
    /// The bulletin templates, compiled with the config.
    pub templates: Arc<crate::bulletin::Templates>,
    pub limits: Arc<Limits>,
}

impl From<config::Loaded> for Loaded {
    fn from(compiled: config::Loaded) -> Loaded {
        let limits =
            Limits::for_process(compiled.config.scan.rate, compiled.config.scan.concurrency);
        Loaded {
            access: compiled.access,
            config: compiled.config,
            rules: compiled.rules,
            schedule: compiled.schedule,
            templates: compiled.templates,
            limits,
        }
    }
}

/// Compile the config at `path` as `check-config` does: every problem found, or what the
/// daemon runs with, and the warnings to log.
pub fn load(path: &Path) -> Result<(Loaded, Vec<config::Problem>), Vec<config::Problem>> {
    let compiled = config::Loaded::compile(path)?;
    let warnings = compiled.warnings.clone();
    Ok((Loaded::from(compiled), warnings))
}

/// Where a scan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a segment another scan holds.
    Queued,
    Running,
    Complete,
    /// Ran to the end, but too many probes failed locally or not all were attempted: what it
    /// saw is recorded; it opened findings and resolved none.
    Degraded,
    /// Stopped before the end (shutdown); what it saw is recorded.
    Incomplete,
    /// Did not run or could not be recorded.
    Failed,
}

impl JobState {
    /// As the store keeps it.
    pub fn parse(s: &str) -> Option<JobState> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Complete,
            JobState::Degraded,
            JobState::Incomplete,
            JobState::Failed,
        ]
        .into_iter()
        .find(|j| j.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Complete => "complete",
            JobState::Degraded => "degraded",
            JobState::Incomplete => "incomplete",
            JobState::Failed => "failed",
        }
    }

    pub fn is_done(self) -> bool {
        matches!(
            self,
            JobState::Complete | JobState::Degraded | JobState::Incomplete | JobState::Failed
        )
    }
}

/// A scan asked for by the API or the scheduler, as `GET /api/v1/scans/{id}` shows it: a
/// row of the store's job queue ([`crate::store::JobRow`]), which every hub sharing the store
/// reads.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub state: JobState,
    /// As asked; empty = every segment.
    pub segments: Vec<String>,
    /// `api` or `schedule`.
    pub origin: String,
    /// The sensor it was handed to (a hub's on-demand scan of a sensor's segment).
    pub sensor: Option<String>,
    pub submitted_at: DateTime<Utc>,
    /// The store's id of the run, once it is recorded.
    pub scan_id: Option<String>,
    pub error: Option<String>,
}

impl Job {
    fn from_row(row: crate::store::JobRow) -> Result<Job, crate::store::StoreError> {
        let state =
            JobState::parse(&row.state).ok_or_else(|| crate::store::StoreError::CorruptRow {
                table: "scan_jobs",
                column: "state".to_string(),
                row: row.id.clone(),
                detail: format!("unknown job state {:?}", row.state),
            })?;
        Ok(Job {
            id: row.id,
            state,
            segments: row.segments,
            origin: row.origin,
            sensor: row.sensor,
            submitted_at: row.submitted_at,
            scan_id: row.scan_id,
            error: row.error,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown segment {0:?}")]
    UnknownSegment(String),
    #[error("the daemon is stopping")]
    Stopping,
    #[error("{0} scans are queued or running already (daemon.max_queued_scans); try again later")]
    QueueFull(usize),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The daemon's shared state.
pub struct Daemon {
    loaded: watch::Sender<Arc<Loaded>>,
    pub store: Store,
    pub metrics: DaemonMetrics,
    segment_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Scan jobs this daemon claimed and runs now.
    local_jobs: AtomicUsize,
    /// Wakes the worker: a job was queued here, or one ended.
    work: tokio::sync::Notify,
    scans: Mutex<JoinSet<()>>,
    scan_cancel: CancellationToken,
    scheduler_running: AtomicBool,
    /// The last failure of each kind of store read the API made, until one succeeds again:
    /// `/healthz` reports them (a corrupt row is not seen by a plain ping).
    store_problems: Mutex<std::collections::BTreeMap<&'static str, String>>,
    /// The waivers approved on the operator page (store table `stored_exceptions`), added to
    /// the config's `exceptions` in force at start, at each approval and at each reload.
    stored_waivers: Mutex<Vec<config::Waiver>>,
    /// Findings with a re-test queued or running: one at a time each, so answers cannot pile
    /// up probes.
    retests: Mutex<HashSet<String>>,
    /// The store's link key, read once (when `daemon.link_key_env` is not set).
    stored_link_key: tokio::sync::OnceCell<crate::rectify::LinkKey>,
    /// Sensors' on-demand requests (`hub`).
    pub hub: hub::Hub,
}

/// Lock a std mutex, through poisoning (the data are plain maps, valid after any panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Clears a flag when dropped (the task that set it ended, however).
struct FlagGuard<'a>(&'a AtomicBool);

impl Drop for FlagGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Daemon {
    pub fn new(loaded: Loaded, store: Store) -> Arc<Daemon> {
        let (loaded, _) = watch::channel(Arc::new(loaded));
        Arc::new(Daemon {
            loaded,
            store,
            metrics: DaemonMetrics::default(),
            segment_locks: Mutex::default(),
            local_jobs: AtomicUsize::new(0),
            work: tokio::sync::Notify::new(),
            scans: Mutex::new(JoinSet::new()),
            scan_cancel: CancellationToken::new(),
            scheduler_running: AtomicBool::new(false),
            store_problems: Mutex::default(),
            stored_link_key: tokio::sync::OnceCell::new(),
            stored_waivers: Mutex::default(),
            retests: Mutex::default(),
            hub: hub::Hub::default(),
        })
    }

    /// Read the waivers approved on the operator page again and put them in force beside the
    /// config's `exceptions`.
    pub async fn refresh_waivers(&self) -> Result<(), crate::store::StoreError> {
        let stored = self.store.stored_exceptions().await?;
        let waivers: Vec<config::Waiver> = stored.iter().map(|e| e.waiver()).collect();
        *lock(&self.stored_waivers) = waivers;
        let current = self.current();
        let mut config = current.config.clone();
        self.merge_waivers(&mut config);
        self.loaded.send_replace(Arc::new(Loaded {
            config,
            rules: current.rules.clone(),
            schedule: current.schedule.clone(),
            access: current.access.clone(),
            templates: current.templates.clone(),
            limits: current.limits.clone(),
        }));
        Ok(())
    }

    /// `config.exceptions` from the config file, plus the stored waivers.
    fn merge_waivers(&self, config: &mut Config) {
        config
            .exceptions
            .retain(|w| w.at.file != Path::new(STORED_WAIVER_FILE));
        config
            .exceptions
            .extend(lock(&self.stored_waivers).iter().cloned());
    }

    /// The link key in force: `daemon.link_key_env`'s, else the one kept in the store.
    pub async fn link_key(&self) -> Result<crate::rectify::LinkKey, crate::rectify::KeyError> {
        match self.current().access.link_key.clone() {
            Some(k) => Ok(k),
            None => self.stored_link_key().await,
        }
    }

    /// The link key kept in the store (made the first time), for when the config names none.
    pub async fn stored_link_key(
        &self,
    ) -> Result<crate::rectify::LinkKey, crate::rectify::KeyError> {
        self.stored_link_key
            .get_or_try_init(|| crate::rectify::stored_key(&self.store))
            .await
            .cloned()
    }

    /// Remember how the store read `what` last went (for `/healthz`); `result` passes through.
    pub fn note_store<T>(
        &self,
        what: &'static str,
        result: Result<T, crate::store::StoreError>,
    ) -> Result<T, crate::store::StoreError> {
        let mut problems = lock(&self.store_problems);
        match &result {
            Ok(_) => {
                problems.remove(what);
            }
            Err(e) => {
                problems.insert(what, e.to_string());
            }
        }
        result
    }

    /// The store failures the API saw last and that have not been read successfully since.
    pub fn store_problem(&self) -> Option<String> {
        let problems = lock(&self.store_problems);
        (!problems.is_empty()).then(|| {
            problems
                .iter()
                .map(|(what, e)| format!("{what}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// The config, rules and token in force.
    pub fn current(&self) -> Arc<Loaded> {
        self.loaded.borrow().clone()
    }

    /// Whether the scheduler task is running.
    pub fn scheduler_running(&self) -> bool {
        self.scheduler_running.load(Ordering::SeqCst)
    }

    /// A scan asked for, by id (through any hub sharing the store).
    pub async fn job(&self, id: &str) -> Result<Option<Job>, crate::store::StoreError> {
        self.store.job(id).await?.map(Job::from_row).transpose()
    }

    /// Queue a scan of `segments` (empty = all) and return its id at once; a hub sharing the
    /// store (this one first) runs it as soon as no other scan holds one of its segments.
    /// More than `daemon.max_queued_scans` scans queued or running refuse it.
    pub async fn submit(self: &Arc<Self>, segments: Vec<String>) -> Result<String, SubmitError> {
        let max = self.current().config.daemon.max_queued_scans;
        let pending = self.store.pending_jobs().await?;
        if pending >= max {
            return Err(SubmitError::QueueFull(pending));
        }
        self.enqueue(segments, "api", None, None).await
    }

    /// Queue a job; `tick` is the schedule entry and tick of a scheduled one; `sensor` the
    /// sensor it is handed to (its assignment lists it until it begins it).
    pub(crate) async fn enqueue(
        &self,
        segments: Vec<String>,
        origin: &str,
        tick: Option<(&str, &str)>,
        sensor: Option<&str>,
    ) -> Result<String, SubmitError> {
        if self.scan_cancel.is_cancelled() {
            return Err(SubmitError::Stopping);
        }
        let loaded = self.current();
        if let Some(unknown) = segments.iter().find(|s| loaded.config.segment(s).is_none()) {
            return Err(SubmitError::UnknownSegment(unknown.clone()));
        }
        let now = Utc::now();
        let mut suffix = [0u8; 4];
        // Unique across the hubs sharing the store; a failed fill leaves zeros and the
        // millisecond still separates this daemon's own ids.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix);
        let id = format!(
            "req-{}-{:08x}",
            now.format("%Y%m%dT%H%M%S%.3fZ"),
            u32::from_be_bytes(suffix)
        );
        self.store
            .insert_job(&crate::store::NewJob {
                id: &id,
                origin,
                schedule_key: tick.map(|t| t.0),
                due: tick.map(|t| t.1),
                segments: &segments,
                sensor,
                submitted_at: now,
            })
            .await?;
        self.work.notify_one();
        Ok(id)
    }

    /// Claim and run queued scan jobs until `stop`: the ones this daemon queued (woken at
    /// once) and the ones other hubs sharing the store queued (read every [`CLAIM_POLL`]), at
    /// most [`MAX_LOCAL_JOBS`] at a time.
    pub async fn worker(self: Arc<Self>, stop: CancellationToken) {
        loop {
            while self.local_jobs.load(Ordering::SeqCst) < MAX_LOCAL_JOBS
                && !self.scan_cancel.is_cancelled()
            {
                let loaded = self.current();
                let all: Vec<String> = loaded
                    .config
                    .segments
                    .iter()
                    .map(|s| s.name.clone())
                    .collect();
                match self.store.claim_job(&all).await {
                    Ok(Some(job)) => {
                        self.local_jobs.fetch_add(1, Ordering::SeqCst);
                        self.metrics.scan_started();
                        let mut scans = lock(&self.scans);
                        // Reap finished tasks so the set does not grow with the daemon's age.
                        while scans.try_join_next().is_some() {}
                        scans.spawn(self.clone().run_job(job, loaded));
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::error!(%error, "cannot claim a scan job");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.work.notified() => {}
                _ = tokio::time::sleep(CLAIM_POLL) => {}
            }
        }
    }

    /// A claimed job ended here (ran, failed or was handed back): make room for the next.
    fn job_done(&self) {
        self.local_jobs.fetch_sub(1, Ordering::SeqCst);
        self.work.notify_one();
    }

    async fn finish_job(
        &self,
        id: &str,
        state: JobState,
        scan_id: Option<&str>,
        error: Option<&str>,
    ) {
        if let Err(e) = self
            .store
            .finish_job(id, state.as_str(), scan_id, error)
            .await
        {
            tracing::error!(id = %id, error = %e, "cannot record how the scan job ended");
        }
    }

    async fn run_job(self: Arc<Self>, job: crate::store::JobRow, loaded: Arc<Loaded>) {
        let (id, segments) = (job.id, job.segments);
        let names: Vec<String> = if segments.is_empty() {
            loaded
                .config
                .segments
                .iter()
                .map(|s| s.name.clone())
                .collect()
        } else {
            segments.clone()
        };
        let locks: Vec<Arc<tokio::sync::Mutex<()>>> = {
            let mut map = lock(&self.segment_locks);
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            sorted
                .into_iter()
                .map(|n| map.entry(n).or_default().clone())
                .collect()
        };
        let acquire = async {
            let mut guards = Vec::with_capacity(locks.len());
            for l in locks {
                guards.push(l.lock_owned().await);
            }
            guards
        };
        let guards = tokio::select! {
            _ = self.scan_cancel.cancelled() => None,
            g = acquire => Some(g),
        };
        let Some(_guards) = guards else {
            // Stopped before it started: back to the queue, for another hub or the restart.
            if let Err(error) = self.store.release_job(&id).await {
                tracing::error!(id = %id, %error, "cannot hand the scan job back");
            }
            self.metrics.scan_abandoned();
            self.job_done();
            return;
        };
        tracing::info!(id = %id, segments = ?names, "scan started");
        let request = ScanRequest {
            segments,
            ..ScanRequest::all()
        };
        let started = Instant::now();
        // A task of its own, so a panic in a scan costs that scan, not the daemon.
        let (store, cancel) = (self.store.clone(), self.scan_cancel.clone());
        let scan_config = loaded.clone();
        let result = tokio::spawn(async move {
            scan_and_record(
                &scan_config.config,
                &scan_config.rules,
                &store,
                &request,
                scan_config.limits.clone(),
                ProgressBar::hidden(),
                cancel,
            )
            .await
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the scan task failed: {e}")));
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics.scan_finished(elapsed);
        match result {
            Ok((observations, report)) => {
                let state = match observations.run.state {
                    RunState::Complete => JobState::Complete,
                    RunState::Degraded => JobState::Degraded,
                    _ => JobState::Incomplete,
                };
                tracing::info!(
                    id = %id,
                    scan_id = %observations.run.id,
                    state = state.as_str(),
                    hosts = report.hosts.len(),
                    findings = report.findings.len(),
                    seconds = elapsed,
                    "scan finished"
                );
                self.finish_job(&id, state, Some(&observations.run.id), None)
                    .await;
            }
            Err(error) => {
                let error = crate::app::error_chain(&error);
                tracing::error!(id = %id, %error, "scan failed");
                self.finish_job(&id, JobState::Failed, None, Some(&error))
                    .await;
            }
        }
        self.job_done();
    }

    /// Apply the config at `path` if it loads; keep the one in force otherwise.
    pub fn reload(&self, path: &Path) -> bool {
        let now = Utc::now();
        match load(path) {
            Ok((new, warnings)) => {
                for warning in &warnings {
                    tracing::warn!(%warning, "config");
                }
                let old = self.current();
                if new.config.store.describe() != old.config.store.describe() {
                    tracing::warn!(
                        store = %old.config.store.describe(),
                        "store.path changed; the daemon keeps its open store until restarted"
                    );
                }
                if new.config.daemon.listen != old.config.daemon.listen {
                    tracing::warn!("daemon.listen changed; it takes effect at the next restart");
                }
                // Keep the process-wide limits (and the scans using them) unless they changed.
                let new = if new.config.scan.rate == old.config.scan.rate
                    && new.config.scan.concurrency == old.config.scan.concurrency
                {
                    Loaded {
                        limits: old.limits.clone(),
                        ..new
                    }
                } else {
                    new
                };
                let mut new = new;
                self.merge_waivers(&mut new.config);
                warn_dropped_tokens(&old, &new);
                self.metrics.tokens(&new.access);
                self.loaded.send_replace(Arc::new(new));
                self.metrics.reloaded(true, now);
                tracing::info!(config = %path.display(), "configuration reloaded");
                true
            }
            Err(problems) => {
                self.metrics.reloaded(false, now);
                // One line per problem, worded exactly as `check-config` prints it.
                for problem in &problems {
                    tracing::error!(%problem, "reload rejected");
                }
                tracing::error!(
                    config = %path.display(),
                    problems = problems.len(),
                    "reload rejected; the previous configuration stays in force"
                );
                false
            }
        }
    }

    /// Cron-driven scans and bulletins until `stop`; rebuilt at each reload. Only the leader
    /// acts on a tick (`Store::try_lead`: on PostgreSQL one hub holds the leader lock, on
    /// SQLite the one process), and each tick is taken once in the store, so hubs sharing it
    /// run each scheduled scan once and one scheduled bulletin per period.
    pub async fn scheduler(self: Arc<Self>, stop: CancellationToken) {
        self.scheduler_running.store(true, Ordering::SeqCst);
        let _flag = FlagGuard(&self.scheduler_running);
        let mut changes = self.loaded.subscribe();
        let mut leading = false;
        'reload: loop {
            let loaded = changes.borrow_and_update().clone();
            let tz = loaded.config.organisation.timezone;
            let mut entries: Vec<(String, &Cron, Option<&Vec<String>>)> = loaded
                .schedule
                .scans
                .iter()
                .map(|(cron, segments)| {
                    (
                        format!("scan {} {}", cron.pattern, segments.join(",")),
                        cron,
                        Some(segments),
                    )
                })
                .collect();
            entries.push(("bulletin".to_string(), &loaded.schedule.bulletin, None));
            let start = Utc::now();
            let mut next: Vec<Option<DateTime<Utc>>> = entries
                .iter()
                .map(|(_, cron, _)| next_after(cron, start, tz))
                .collect();
            loop {
                let now = Utc::now();
                let nap = next
                    .iter()
                    .flatten()
                    .min()
                    .map(|t| (*t - now).to_std().unwrap_or(Duration::ZERO))
                    .unwrap_or(MAX_NAP)
                    .min(MAX_NAP)
                    .min(LEAD_RETRY);
                tokio::select! {
                    _ = stop.cancelled() => break 'reload,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break 'reload;
                        }
                        continue 'reload;
                    }
                    _ = tokio::time::sleep(nap) => {}
                }
                let now_leading = match self.store.try_lead().await {
                    Ok(l) => l,
                    Err(error) => {
                        tracing::error!(%error, "cannot tell whether this hub leads");
                        false
                    }
                };
                if now_leading != leading {
                    leading = now_leading;
                    self.metrics.leading(leading);
                    if leading {
                        tracing::info!("this hub leads: it runs the schedules and the bulletin");
                    } else {
                        tracing::warn!("this hub no longer leads");
                    }
                }
                if leading {
                    match self.store.reap().await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(runs = n, "closed the runs of a hub that stopped"),
                        Err(error) => tracing::error!(%error, "cannot close a stopped hub's runs"),
                    }
                }
                let now = Utc::now();
                for (i, (key, cron, segments)) in entries.iter().enumerate() {
                    let Some(at) = next[i].filter(|at| *at <= now) else {
                        continue;
                    };
                    if leading {
                        match segments {
                            Some(segments) => self.scheduled_scan(key, at, segments).await,
                            None => self.scheduled_bulletin(&loaded, now).await,
                        }
                    }
                    // From now, not from `at`: ticks missed while busy are skipped.
                    next[i] = next_after(cron, now.max(at), tz);
                }
            }
        }
    }

    /// Schedule entry `key` fired at `at`: queue its scan (of the segments no sensor owns),
    /// unless another hub took this tick or the entry's previous scan is still queued or
    /// running.
    async fn scheduled_scan(&self, key: &str, at: DateTime<Utc>, segments: &[String]) {
        // On a hub, the segments a sensor owns are its sensor's to scan.
        let own = hub::own_segments(&self.current().config, segments);
        let segments = match &own {
            None => segments,
            Some(own) if own.is_empty() => {
                tracing::debug!(schedule = key, "every segment is a sensor's; tick skipped");
                return;
            }
            Some(own) => own.as_slice(),
        };
        let due = crate::store::timestamp(at);
        match self.store.take_tick(key, &due).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(schedule = key, "tick already taken by another hub");
                return;
            }
            Err(error) => {
                tracing::error!(schedule = key, %error, "cannot take the schedule's tick");
                return;
            }
        }
        match self.store.schedule_busy(key).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(
                    schedule = key,
                    "previous scheduled scan still queued or running; tick skipped"
                );
                return;
            }
            Err(error) => {
                tracing::error!(schedule = key, %error, "cannot read the job queue");
                return;
            }
        }
        match self
            .enqueue(segments.to_vec(), "schedule", Some((key, &due)), None)
            .await
        {
            Ok(id) => tracing::info!(schedule = key, id = %id, "scheduled scan queued"),
            Err(error) => tracing::warn!(schedule = key, %error, "scheduled scan not started"),
        }
    }

    /// Queue the re-test (复测) of `finding`, answered 已整改 in answer `answer_id`: it runs at
    /// once (after any scan holding the finding's segment), through the scope and the limits
    /// like every scan, and sets the answer's state to what it found. A task awaited at
    /// shutdown like the scans.
    pub fn queue_retest(self: &Arc<Self>, finding: crate::finding::Finding, answer_id: String) {
        if self.scan_cancel.is_cancelled() {
            return;
        }
        if !lock(&self.retests).insert(finding.fingerprint.clone()) {
            return;
        }
        let daemon = self.clone();
        let mut tasks = lock(&self.scans);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let segment_lock = finding
                .segment
                .as_ref()
                .map(|s| lock(&daemon.segment_locks).entry(s.clone()).or_default().clone());
            let _guard = match segment_lock {
                Some(l) => tokio::select! {
                    _ = daemon.scan_cancel.cancelled() => return,
                    g = l.lock_owned() => Some(g),
                },
                None => None,
            };
            let loaded = daemon.current();
            let (store, cancel) = (daemon.store.clone(), daemon.scan_cancel.clone());
            let fingerprint = finding.fingerprint.clone();
            tracing::info!(finding = %fingerprint, "re-test started");
            let result = tokio::spawn(async move {
                crate::pass::retest(
                    &loaded.config,
                    &loaded.rules,
                    &store,
                    &finding,
                    loaded.limits.clone(),
                    cancel,
                )
                .await
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the re-test task failed: {e}")));
            let state = match result {
                Ok(outcome) => {
                    tracing::info!(finding = %fingerprint, outcome = outcome.as_str(), "re-test finished");
                    outcome.as_str()
                }
                Err(error) => {
                    let error = crate::app::error_chain(&error);
                    tracing::error!(finding = %fingerprint, %error, "re-test failed");
                    "retest_error"
                }
            };
            if let Err(error) = daemon.store.set_answer_state(&answer_id, state).await {
                tracing::error!(%error, "cannot record the re-test's outcome");
            }
            lock(&daemon.retests).remove(&fingerprint);
        });
    }

    /// Whether a re-test of `fingerprint` is queued or running.
    pub fn retest_pending(&self, fingerprint: &str) -> bool {
        lock(&self.retests).contains(fingerprint)
    }

    /// Build the period's bulletin and queue its mail (`crate::bulletin::scheduled`), as a task
    /// awaited at shutdown like the scans; once per period: the period's tick is taken in the
    /// store first (a second tick in the same period, or another hub's, does nothing).
    async fn scheduled_bulletin(self: &Arc<Self>, loaded: &Arc<Loaded>, now: DateTime<Utc>) {
        if self.scan_cancel.is_cancelled() {
            return;
        }
        let period = crate::bulletin::scheduled_period(&loaded.config, now);
        match self.store.take_tick("bulletin", &period.key()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(period = %period.key(), "the period's bulletin was built already");
                return;
            }
            Err(error) => {
                tracing::error!(%error, "cannot take the bulletin's tick");
                return;
            }
        }
        let (loaded, store) = (loaded.clone(), self.store.clone());
        let runtime = tokio::runtime::Handle::current();
        let mut tasks = lock(&self.scans);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            tracing::info!(period = %period.key(), "bulletin due by bulletin.cron");
            // On a blocking thread, like the scans: the bulletin's future need not be `Send`.
            let result = tokio::task::spawn_blocking(move || {
                runtime.block_on(crate::bulletin::scheduled(
                    &loaded.config,
                    &loaded.rules,
                    &loaded.templates,
                    &store,
                    loaded.access.link_key.as_ref(),
                    &period,
                    now,
                ))
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the bulletin task failed: {e}")));
            if let Err(error) = result {
                let error = crate::app::error_chain(&error);
                tracing::error!(%error, "scheduled bulletin failed");
            }
        });
    }

    /// Stop taking scans and cancel the ones queued or running; wait for them until
    /// `deadline`.
    pub async fn stop_scans(&self, deadline: Instant) {
        self.scan_cancel.cancel();
        let mut scans = std::mem::take(&mut *lock(&self.scans));
        loop {
            match tokio::time::timeout_at(deadline, scans.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::error!(
                        left = scans.len(),
                        "scans did not stop within the grace period; abandoned"
                    );
                    scans.abort_all();
                    break;
                }
            }
        }
    }
}

/// A reload that leaves a role without its token disables what it allowed: say so.
fn warn_dropped_tokens(old: &Loaded, new: &Loaded) {
    let (o, n) = (&old.access, &new.access);
    if o.operator.is_some() && n.operator.is_none() {
        tracing::warn!(
            var = %new.config.daemon.api_token_env,
            "the reload left no operator token: POST /api/v1/scans is refused (403) from now on"
        );
    }
    if o.read.is_some() && n.read.is_none() {
        tracing::warn!(
            var = %new.config.daemon.read_token_env,
            "the reload left no read token: it no longer reads the API"
        );
    }
}

/// The first tick of `cron` after `t`, reading the cron in `tz`.
fn next_after(cron: &Cron, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&t.with_timezone(&tz), false)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// `netpatrol daemon -c FILE`: run until SIGTERM/SIGINT; exit 0 on a clean stop, 64 when the
/// config does not load at start, 1 when the store or the listen address cannot be opened.
pub async fn run(config_path: &Path) -> ExitCode {
    let loaded = match load(config_path) {
        Ok((loaded, warnings)) => {
            config::print_problems(&warnings);
            loaded
        }
        Err(problems) => {
            config::print_problems(&problems);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let store = match Store::connect(&loaded.config.store).await {
        Ok(s) => s,
        Err(error) => {
            eprintln!("netpatrol: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listen = loaded.config.daemon.listen;
    let token_configured = loaded.access.operator.is_some();
    let token_env = loaded.config.daemon.api_token_env.clone();
    let tls = loaded.access.web.as_ref().is_some_and(|w| w.tls.is_some());
    let daemon = Daemon::new(loaded, store.clone());
    if let Err(error) = daemon.refresh_waivers().await {
        tracing::error!(%error, "cannot read the waivers approved on the operator page");
    }
    daemon.metrics.reloaded(true, Utc::now());
    daemon.metrics.tokens(&daemon.current().access);
    hub::recover(&daemon).await;

    // Signal handlers before anything runs, so an early SIGTERM is not the default (death).
    let (mut hup, mut term) = match (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(h), Ok(t)) => (h, t),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("netpatrol: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };

    let mut tasks = JoinSet::new();
    let scheduler_stop = CancellationToken::new();
    let exporter_stop = CancellationToken::new();
    if let Some(addr) = listen {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(error) => {
                eprintln!("netpatrol: cannot listen on {addr}: {error}");
                store.close().await;
                return ExitCode::FAILURE;
            }
        };
        if !token_configured {
            tracing::warn!(
                var = %token_env,
                "no API token configured: POST /api/v1/scans is refused"
            );
        }
        tracing::info!(%addr, tls, "serving /metrics, /healthz and /api/v1");
        let (daemon, stop) = (daemon.clone(), exporter_stop.clone());
        tasks.spawn(async move {
            if let Err(error) = api::serve(listener, daemon, stop).await {
                tracing::error!(%error, "HTTP server failed");
            }
        });
    }
    tasks.spawn(daemon.clone().scheduler(scheduler_stop.clone()));
    tasks.spawn(daemon.clone().worker(scheduler_stop.clone()));
    tracing::info!(config = %config_path.display(), "daemon started");

    loop {
        tokio::select! {
            _ = hup.recv() => {
                daemon.reload(config_path);
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            ended = tasks.join_next() => {
                // A long-lived task ended on its own: carry on without it (health says so).
                if let Some(Err(error)) = ended {
                    tracing::error!(%error, "daemon task ended");
                }
                if tasks.is_empty() {
                    tracing::error!("no daemon task left; stopping");
                    break;
                }
            }
        }
    }

    tracing::info!("stopping");
    let deadline = Instant::now() + GRACE;
    scheduler_stop.cancel();
    daemon.stop_scans(deadline).await;
    if tokio::time::timeout_at(deadline, store.close())
        .await
        .is_err()
    {
        tracing::error!("the store did not close within the grace period");
    }
    exporter_stop.cancel();
    // The exporter gets a last second even when the grace period is spent.
    let exporter_deadline = deadline.max(Instant::now() + Duration::from_secs(1));
    while let Ok(Some(_)) = tokio::time::timeout_at(exporter_deadline, tasks.join_next()).await {}
    tasks.abort_all();
    ExitCode::SUCCESS
}
