//! The one fan-out every scan stage goes through, and the context ([`Cx`]) every probe gets.
//!
//! Input: a stage (probe kind, whether the fan-out holds the concurrency slot, a deadline per
//! probe), a list of jobs and one async function that probes one job. Output: the outcome of
//! each job that found something or failed, as a [`Probed`]; the rest were absent (or not run,
//! when the scan was cancelled), which the [`Tally`] counts.
//!
//! What it owns, so no stage writes it again (blackbox_exporter's `handler.go`):
//! - the concurrency slot: at most `Limits::concurrency` workers, each holding a slot for its
//!   whole probe (probes that open one connection per slot themselves, as TLS does, say so in
//!   their [`Stage`]);
//! - the rate: probes take their connection attempts through [`Cx::attempt`], which also ends
//!   the wait when the scan is cancelled;
//! - the deadline: a probe that runs past its stage's deadline is a `timeout` failure;
//! - cancellation: every probe in flight races the token, so shutdown reaches it at once
//!   however long its own timeouts are, and no new probe starts;
//! - progress (one step per job) and the tally (planned, answered, failed remotely or locally,
//!   reasons per probe kind), which become the scan's coverage.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Failure, ProbeKind, Reason};
use crate::observation::ProbeErrors;
use crate::scope::Limits;

/// One target's outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Probed<T> {
    /// Not attempted (the probe kind was off, or the scan was cancelled first).
    NotRun,
    /// Attempted; the thing probed for is not there (a closed port, not TLS, no PTR record).
    Absent,
    /// Attempted; no usable answer, for this bounded reason.
    Failed { reason: Reason },
    /// Attempted and found.
    Found(T),
}

impl<T> Probed<T> {
    pub fn found(self) -> Option<T> {
        match self {
            Probed::Found(t) => Some(t),
            _ => None,
        }
    }
}

/// How many probes a scan planned and what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub planned: u64,
    /// Attempted and answered (found or absent).
    pub answered: u64,
    /// Attempted; the target or the path to it failed (timeouts, resets, protocol errors).
    pub failed_remote: u64,
    /// Attempted; this machine failed (descriptors, buffers, local addresses, permissions).
    pub failed_local: u64,
}

impl Coverage {
    /// Probes that ended one way or another.
    pub fn attempted(&self) -> u64 {
        self.answered + self.failed_remote + self.failed_local
    }

    /// Share of the planned probes that told something about their target (answered or failed
    /// remotely); 1 when nothing was planned.
    pub fn ratio(&self) -> f64 {
        if self.planned == 0 {
            1.0
        } else {
            (self.answered + self.failed_remote) as f64 / self.planned as f64
        }
    }

    /// Share of the attempted probes that failed locally; 0 when nothing was attempted.
    pub fn local_failure_ratio(&self) -> f64 {
        match self.attempted() {
            0 => 0.0,
            n => self.failed_local as f64 / n as f64,
        }
    }
}

/// Shared counters of one scan: coverage and reasons, read for the report, store and metrics.
#[derive(Debug, Default)]
pub struct Tally {
    /// Probe attempts made (ICMP echoes, TCP connects, DNS lookups, ...).
    probes: AtomicU64,
    planned: AtomicU64,
    answered: AtomicU64,
    failed_remote: AtomicU64,
    failed_local: AtomicU64,
    errors: std::sync::Mutex<ProbeErrors>,
}

impl Tally {
    /// `n` more probes are planned.
    pub fn plan(&self, n: u64) {
        self.planned.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` probes were attempted and answered (found or absent).
    pub fn answered(&self, n: u64) {
        self.probes.fetch_add(n, Ordering::Relaxed);
        self.answered.fetch_add(n, Ordering::Relaxed);
    }

    /// One probe of `kind` was attempted and failed for `reason` (counted remote or local).
    /// A cancelled probe counts as attempted but is neither answered nor failed.
    pub fn failed(&self, kind: ProbeKind, reason: Reason) {
        self.probes.fetch_add(1, Ordering::Relaxed);
        match reason {
            Reason::Cancelled => return,
            r if r.is_local() => self.failed_local.fetch_add(1, Ordering::Relaxed),
            _ => self.failed_remote.fetch_add(1, Ordering::Relaxed),
        };
        self.error(kind, reason);
    }

    /// Counts a reason without a probe (a stage that could not start at all).
    pub fn error(&self, kind: ProbeKind, reason: Reason) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry((kind, reason)).or_default() += 1;
    }

    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    pub fn coverage(&self) -> Coverage {
        Coverage {
            planned: self.planned.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            failed_remote: self.failed_remote.load(Ordering::Relaxed),
            failed_local: self.failed_local.load(Ordering::Relaxed),
        }
    }

    pub fn errors(&self) -> ProbeErrors {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What every probe of a scan shares: the process-wide limits, the scan's cancellation token,
/// its tally and its progress bar. Cheap to clone.
#[derive(Clone)]
pub struct Cx {
    pub limits: Arc<Limits>,
    pub cancel: CancellationToken,
    pub tally: Arc<Tally>,
    pub progress: ProgressBar,
}

impl Cx {
    pub fn new(limits: Arc<Limits>, cancel: CancellationToken, progress: ProgressBar) -> Cx {
        Cx {
            limits,
            cancel,
            tally: Arc::default(),
            progress,
        }
    }

    /// Waits for one connection attempt of the rate; `Err(cancelled)` when the scan is
    /// cancelled meanwhile.
    pub async fn attempt(&self) -> Result<(), Failure> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Failure::new(Reason::Cancelled, "scan cancelled")),
            _ = self.limits.attempt() => Ok(()),
        }
    }
}

/// How the fan-out runs one stage's probes.
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    pub kind: ProbeKind,
    /// Whether the fan-out holds a concurrency slot for each probe. False only for probes that
    /// take a slot per connection themselves (TLS).
    pub slot: bool,
    /// Longest one probe may run, all its steps together.
    pub deadline: Duration,
    /// Whether the caller already planned these jobs (in the tally and the progress length);
    /// otherwise the fan-out plans them.
    pub planned: bool,
}

/// Runs `probe` over jobs `0..jobs` under `cx` and returns (job index, outcome) for every job
/// that was found or failed (absent and not-run jobs are only counted, so memory follows what
/// was found, not the size of the scope), in no particular order.
///
/// `probe` returns `Ok(Some(_))` found, `Ok(None)` absent, `Err` failed. Each job advances the
/// progress bar by one. After cancellation no job starts, and the jobs in flight end at once as
/// `Failed { reason: Cancelled }`.
pub async fn fan_out<T, F, Fut>(
    cx: &Cx,
    stage: Stage,
    jobs: usize,
    probe: F,
) -> Vec<(usize, Probed<T>)>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<T>, Failure>> + Send,
{
    if !stage.planned {
        cx.tally.plan(jobs as u64);
        cx.progress.inc_length(jobs as u64);
    }
    let probe = Arc::new(probe);
    let next = Arc::new(AtomicUsize::new(0));
    let workers = cx.limits.concurrency().min(jobs);
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let (cx, probe, next) = (cx.clone(), probe.clone(), next.clone());
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                if cx.cancel.is_cancelled() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    break;
                }
                let outcome = run_one(&cx, stage, || probe(i)).await;
                cx.progress.inc(1);
                match outcome {
                    Ok(Some(t)) => {
                        cx.tally.answered(1);
                        out.push((i, Probed::Found(t)));
                    }
                    Ok(None) => cx.tally.answered(1),
                    Err(f) => {
                        tracing::debug!(probe = stage.kind.as_str(), failure = %f, "probe failed");
                        cx.tally.failed(stage.kind, f.reason);
                        out.push((i, Probed::Failed { reason: f.reason }));
                    }
                }
            }
            out
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(found) => out.extend(found),
            Err(error) => tracing::error!(%error, "a probe worker panicked"),
        }
    }
    out
}

/// One probe under the slot, the deadline and cancellation.
async fn run_one<T, Fut>(
    cx: &Cx,
    stage: Stage,
    probe: impl FnOnce() -> Fut,
) -> Result<Option<T>, Failure>
where
    Fut: Future<Output = Result<Option<T>, Failure>>,
{
    let cancelled = || Failure::new(Reason::Cancelled, "scan cancelled");
    let _slot = if stage.slot {
        tokio::select! {
            biased;
            _ = cx.cancel.cancelled() => return Err(cancelled()),
            slot = cx.limits.slot() => Some(slot),
        }
    } else {
        None
    };
    tokio::select! {
        biased;
        _ = cx.cancel.cancelled() => Err(cancelled()),
        done = tokio::time::timeout(stage.deadline, probe()) => match done {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::new(Reason::Timeout, "probe deadline passed")),
        },
    }
}
