//! Sensor: `netpatrol sensor -c FILE` (docs/deployment.md), a vantage point inside one network
//! that scans what its hub assigns and sends the observations to the hub, never findings.
//!
//! Input: the config (its `segments` with their cidrs, `scan` limits, `store` for the local
//! SQLite, `hub`). Loop: fetch the assignment (`GET /api/v1/sensors/{id}/assignment`) every
//! `hub.poll_seconds`, cache it in the local store (a restart while the hub is down still
//! scans from it); run its crons (in the hub's timezone) and its on-demand requests, one scan
//! at a time. Output: each scan's batches ([`batch`]) in the local outbox as they are made,
//! sent by the uploader ([`upload`]) oldest first.
//!
//! Invariants:
//! - the scope is the assigned segment names intersected with the sensor's own config
//!   segments, scanned with the sensor's own cidrs and excludes: a hub cannot widen it; what
//!   it assigned beyond that is refused and logged (WARN, once per assignment);
//! - a scan's first batch is in the outbox before its first probe, each checkpoint batch as
//!   the scan finishes it, the final batch at the end; a sensor killed mid-scan closes that
//!   scan at its next start with a final batch in state `incomplete` (the hub records the run
//!   as incomplete: it resolves nothing);
//! - outbound only; batches wait while the hub is unreachable, at least `hub.keep_hours`
//!   (72 hours or more) before they are dropped;
//! - SIGTERM/SIGINT: the scan in flight is cancelled (its final batch says `incomplete`),
//!   the outbox is kept, exit 0.

pub mod batch;
pub mod upload;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use indicatif::ProgressBar;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::cli::EXIT_USAGE;
use crate::config::{self, Config, HubSettings};
use crate::observation::{HostObservation, RunState, ScanRun};
use crate::probe::{Cx, ProbeKind};
use crate::scan::{self, ScanRequest};
use crate::scope::Limits;
use crate::store::{OutboxBatch, Store, timestamp};
use batch::{Assignment, Batch};
use upload::HubClient;

/// Run `netpatrol sensor -c FILE` until SIGTERM/SIGINT.
pub async fn run(config_path: &Path) -> ExitCode {
    let loaded = match config::Loaded::compile(config_path) {
        Ok(l) => l,
        Err(problems) => {
            config::print_problems(&problems);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    config::print_problems(&loaded.warnings);
    let config = loaded.config;
    let Some(hub) = config.hub.clone() else {
        eprintln!(
            "{}: `netpatrol sensor` needs a `hub:` section (url, sensor, token_env)",
            config.source.display()
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let token = match config::secret(&hub.token_env) {
        Ok(Some(t)) => t,
        _ => {
            eprintln!("netpatrol: no sensor token in {}", hub.token_env);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let client = match HubClient::new(&hub, token) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("netpatrol: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let store = match Store::connect(&config.store).await {
        Ok(s) => s,
        Err(error) => {
            eprintln!("netpatrol: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (mut term, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("netpatrol: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = close_open_scans(&store, &hub.sensor).await {
        tracing::error!(%error, "cannot close the scans a previous run left open");
    }

    let stop = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let uploader = tokio::spawn(upload::upload(
        store.clone(),
        client.clone(),
        hub.retry_max,
        wake.clone(),
        stop.clone(),
    ));
    let sensor = Sensor {
        limits: Limits::for_process(config.scan.rate, config.scan.concurrency),
        config,
        hub,
        store: store.clone(),
        client,
        wake,
    };
    let work = tokio::spawn(sensor.work(stop.clone()));
    tracing::info!(config = %config_path.display(), "sensor started");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            // The config is read once: a sensor is restarted to change it.
            _ = hup.recv() => tracing::info!("SIGHUP ignored: restart the sensor to reload its config"),
        }
    }
    tracing::info!("stopping");
    stop.cancel();
    let grace = Duration::from_secs(20);
    if tokio::time::timeout(grace, work).await.is_err() {
        tracing::error!("the scan did not stop within the grace period");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), uploader).await;
    store.close().await;
    ExitCode::SUCCESS
}

/// Give every scan of the outbox without a final batch (the sensor was killed mid-scan) a
/// final batch in state `incomplete`.
pub async fn close_open_scans(store: &Store, sensor: &str) -> Result<(), anyhow::Error> {
    for (first, next_seq) in store.outbox_open_scans().await? {
        let begun: Batch = serde_json::from_str(&first.payload)?;
        let mut run = begun.scan;
        run.state = RunState::Incomplete;
        run.finished_at = None;
        tracing::warn!(scan = %run.id, "scan cut off by the previous stop: sent as incomplete");
        push(
            store,
            Batch {
                batch: batch::new_id(),
                sensor: sensor.to_string(),
                scan: run,
                seq: next_seq,
                is_final: true,
                hosts: Vec::new(),
                probe_errors: Vec::new(),
                backlog: 0,
                request: first.request,
            },
        )
        .await?;
    }
    Ok(())
}

/// Put `batch` in the outbox.
async fn push(store: &Store, batch: Batch) -> Result<(), anyhow::Error> {
    let payload = serde_json::to_string(&batch)?;
    store
        .outbox_push(&OutboxBatch {
            batch: batch.batch,
            scan_id: batch.scan.id,
            seq: batch.seq,
            is_final: batch.is_final,
            request: batch.request,
            created_at: timestamp(Utc::now()),
            payload,
        })
        .await?;
    Ok(())
}

struct Sensor {
    config: Config,
    hub: HubSettings,
    store: Store,
    client: HubClient,
    limits: Arc<Limits>,
    wake: Arc<Notify>,
}

/// What the sensor does now: its scope and the crons it runs.
struct Plan {
    assignment: Assignment,
    scope: Vec<String>,
    tz: chrono_tz::Tz,
    crons: Vec<(Cron, Vec<String>)>,
}

impl Sensor {
    /// The scope of an assignment: assigned ∩ own, and the crons narrowed to it.
    fn plan(&self, assignment: Assignment) -> Plan {
        let own: BTreeSet<&str> = self
            .config
            .segments
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let (scope, refused): (Vec<String>, Vec<String>) = assignment
            .segments
            .iter()
            .cloned()
            .partition(|s| own.contains(s.as_str()));
        if !refused.is_empty() {
            tracing::warn!(
                refused = %refused.join(","),
                "the hub assigned segments this sensor's config does not declare; not scanned"
            );
        }
        let tz = assignment
            .timezone
            .parse()
            .unwrap_or(self.config.organisation.timezone);
        let crons = assignment
            .schedules
            .iter()
            .filter_map(|s| {
                let segments: Vec<String> = s
                    .segments
                    .iter()
                    .filter(|n| scope.contains(n))
                    .cloned()
                    .collect();
                match config::parse_cron(&s.cron) {
                    Ok(c) if !segments.is_empty() => Some((c, segments)),
                    Ok(_) => None,
                    Err(error) => {
                        tracing::warn!(cron = %s.cron, %error, "the hub's cron does not parse; skipped");
                        None
                    }
                }
            })
            .collect();
        Plan {
            assignment,
            scope,
            tz,
            crons,
        }
    }

    /// Fetch the assignment (cache it), or the cached one when the hub cannot be reached.
    async fn refresh(&self, current: Option<&Assignment>) -> Option<Assignment> {
        let backlog = self.store.outbox_backlog().await.unwrap_or(0);
        match self.client.assignment(backlog).await {
            Ok((assignment, text)) => {
                if current != Some(&assignment) {
                    tracing::info!(segments = %assignment.segments.join(","), "assignment from the hub");
                }
                if let Err(error) = self
                    .store
                    .save_assignment(&self.hub.sensor, Utc::now(), &text)
                    .await
                {
                    tracing::error!(%error, "cannot cache the assignment");
                }
                Some(assignment)
            }
            Err(error) => {
                if current.is_some() {
                    tracing::debug!(%error, "assignment not refreshed; keeping the last one");
                    return None;
                }
                match self.store.cached_assignment(&self.hub.sensor).await {
                    Ok(Some((at, text))) => match serde_json::from_str(&text) {
                        Ok(a) => {
                            tracing::warn!(%error, fetched_at = %at, "hub unreachable; scanning by the cached assignment");
                            Some(a)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the cached assignment does not read");
                            None
                        }
                    },
                    Ok(None) => {
                        tracing::warn!(%error, "hub unreachable and no assignment cached yet; waiting");
                        None
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the cached assignment");
                        None
                    }
                }
            }
        }
    }

    async fn work(self, stop: CancellationToken) {
        let mut plan: Option<Plan> = None;
        let mut next: Vec<Option<DateTime<Utc>>> = Vec::new();
        let mut done: HashSet<String> = self
            .store
            .outbox_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut next_poll = tokio::time::Instant::now();
        loop {
            if stop.is_cancelled() {
                return;
            }
            if tokio::time::Instant::now() >= next_poll {
                if let Some(a) = self.refresh(plan.as_ref().map(|p| &p.assignment)).await {
                    let changed = plan.as_ref().is_none_or(|p| p.assignment != a);
                    if changed {
                        let p = self.plan(a);
                        let now = Utc::now();
                        // Crons that did not change keep their next time.
                        let old: BTreeMap<String, Option<DateTime<Utc>>> = plan
                            .as_ref()
                            .map(|o| {
                                o.crons
                                    .iter()
                                    .zip(&next)
                                    .map(|((c, s), n)| (cron_key(c, s), *n))
                                    .collect()
                            })
                            .unwrap_or_default();
                        next = p
                            .crons
                            .iter()
                            .map(|(c, s)| {
                                old.get(&cron_key(c, s))
                                    .copied()
                                    .unwrap_or_else(|| next_after(c, now, p.tz))
                            })
                            .collect();
                        plan = Some(p);
                    }
                }
                next_poll = tokio::time::Instant::now() + self.hub.poll;
            }
            if let Some(p) = &plan {
                // On-demand requests first, once each.
                let requests: Vec<_> = p
                    .assignment
                    .requests
                    .iter()
                    .filter(|r| !done.contains(&r.id))
                    .cloned()
                    .collect();
                for r in requests {
                    done.insert(r.id.clone());
                    let segments: Vec<String> = r
                        .segments
                        .iter()
                        .filter(|s| p.scope.contains(s))
                        .cloned()
                        .collect();
                    self.scan(segments, Some(r.id.clone()), &stop).await;
                    if stop.is_cancelled() {
                        return;
                    }
                }
                let now = Utc::now();
                for ((cron, segments), due) in p.crons.iter().zip(next.iter_mut()) {
                    let Some(at) = due.filter(|at| *at <= now) else {
                        continue;
                    };
                    self.scan(segments.clone(), None, &stop).await;
                    if stop.is_cancelled() {
                        return;
                    }
                    // From now, not from `at`: ticks missed while scanning are skipped.
                    *due = next_after(cron, Utc::now().max(at), p.tz);
                }
            }
            let keep = chrono::Duration::from_std(self.hub.keep).unwrap_or(chrono::Duration::MAX);
            match self.store.outbox_prune(Utc::now() - keep).await {
                Ok(0) => {}
                Ok(n) => tracing::error!(
                    dropped = n,
                    "batches older than hub.keep_hours dropped unsent"
                ),
                Err(error) => tracing::error!(%error, "cannot prune the outbox"),
            }
            let now = Utc::now();
            let until_cron = next
                .iter()
                .flatten()
                .min()
                .map(|t| (*t - now).to_std().unwrap_or(Duration::ZERO));
            let until_poll = next_poll.saturating_duration_since(tokio::time::Instant::now());
            let nap = until_cron.map_or(until_poll, |c| c.min(until_poll));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(nap.max(Duration::from_millis(50))) => {}
            }
        }
    }

    /// One scan of `segments` (already inside the scope), its batches into the outbox.
    async fn scan(&self, segments: Vec<String>, request: Option<String>, stop: &CancellationToken) {
        if segments.is_empty() {
            return;
        }
        let sensor = self.hub.sensor.clone();
        let mut planned = match scan::plan(
            &self.config,
            &ScanRequest {
                segments,
                probes: ProbeKind::ALL.into_iter().collect(),
            },
        ) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(%error, "cannot plan the scan");
                return;
            }
        };
        planned.run.id = format!("{sensor}-{}", planned.run.id);
        let run: ScanRun = planned.run.clone();
        tracing::info!(scan = %run.id, segments = %run.segments.join(","), "scan started");
        let begin = Batch {
            batch: batch::new_id(),
            sensor: sensor.clone(),
            scan: run.clone(),
            seq: 0,
            is_final: false,
            hosts: Vec::new(),
            probe_errors: Vec::new(),
            backlog: 0,
            request: request.clone(),
        };
        if let Err(error) = push(&self.store, begin).await {
            tracing::error!(%error, "cannot queue the scan's first batch; scan not run");
            return;
        }
        self.wake.notify_one();
        let (sink, mut batches) = mpsc::unbounded_channel::<Vec<HostObservation>>();
        let writer = {
            let (store, run, sensor, request, wake) = (
                self.store.clone(),
                run.clone(),
                sensor.clone(),
                request.clone(),
                self.wake.clone(),
            );
            tokio::spawn(async move {
                let mut seq = 1;
                while let Some(hosts) = batches.recv().await {
                    let b = Batch {
                        batch: batch::new_id(),
                        sensor: sensor.clone(),
                        scan: run.clone(),
                        seq,
                        is_final: false,
                        hosts,
                        probe_errors: Vec::new(),
                        backlog: 0,
                        request: request.clone(),
                    };
                    if let Err(error) = push(&store, b).await {
                        tracing::error!(%error, scan = %run.id, "cannot queue a batch");
                        continue;
                    }
                    wake.notify_one();
                    seq += 1;
                }
                seq
            })
        };
        let cx = Cx::new(
            self.limits.clone(),
            stop.child_token(),
            ProgressBar::hidden(),
        );
        let observations = scan::execute(&self.config, planned, &cx, Some(sink)).await;
        let seq = match writer.await {
            Ok(seq) => seq,
            Err(error) => {
                tracing::error!(%error, "the batch writer ended abnormally");
                return;
            }
        };
        let last = Batch {
            batch: batch::new_id(),
            sensor,
            scan: observations.run.clone(),
            seq,
            is_final: true,
            hosts: Vec::new(),
            probe_errors: batch::error_list(&observations.errors),
            backlog: 0,
            request,
        };
        match push(&self.store, last).await {
            Ok(()) => tracing::info!(
                scan = %observations.run.id,
                state = observations.run.state.as_str(),
                hosts = observations.hosts.len(),
                "scan done; batches queued for the hub"
            ),
            Err(error) => tracing::error!(%error, "cannot queue the scan's final batch"),
        }
        self.wake.notify_one();
    }
}

fn cron_key(cron: &Cron, segments: &[String]) -> String {
    format!("{} {}", cron.pattern, segments.join(","))
}

fn next_after(cron: &Cron, t: DateTime<Utc>, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&t.with_timezone(&tz), false)
        .ok()
        .map(|n| n.with_timezone(&Utc))
}
