//! The pass: one scan taken from probes to the store, shared by the CLI commands (`app`) and
//! the daemon, neither of which calls the other.
//!
//! scan (probes, `crate::scan`) -> assess (reconcile, rules, findings lifecycle; pure) ->
//! report (the JSON document of a scan) -> record (the store). Input: a loaded config and rule
//! set, the store, what to scan, the process-wide limits and a cancellation token. Output: the
//! observations and the report.
//!
//! [`retest`] is the re-test (复测) of one finding a department answered 已整改: a scan of
//! that one endpoint (`scan::plan_endpoint`) assessed like any scan, but it records no run and
//! changes no finding but its own: resolved now when absent, left open (with its due date)
//! when still present, untouched when the re-test could not judge.
//!
//! [`assess_and_record`] is the step after the probes, alone: the hub runs it on a sensor's
//! scan (`daemon::hub`), so a sensor's observations are assessed exactly as the hub's own.
//!
//! Durability: the run is written `running` before the first probe; each batch of hosts the
//! scan finishes is checkpointed while the scan goes on, so a killed process leaves an
//! incomplete run holding what it saw. The final record is one transaction: when it fails (a
//! full disk), nothing of it is written, the run stays as its checkpoints left it, and the
//! report still comes back inside [`PassError::NotRecorded`] so the caller can print or write it.

use std::collections::HashMap;
use std::sync::Arc;

use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::finding;
use crate::observation::{HostObservation, ScanObservations};
use crate::output::report::{self, Report};
use crate::probe::Cx;
use crate::reconcile::History;
use crate::rules::RuleSet;
use crate::scan::{self, ScanRequest};
use crate::scope::Limits;
use crate::store::{Store, StoreError};

/// The scan ran, but its record could not be written; the report is kept for the caller.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("cannot record the scan: {source}")]
    NotRecorded {
        report: Box<Report>,
        #[source]
        source: StoreError,
    },
}

/// Scan, assess (reconcile, rules, findings lifecycle), record in the store, build the report.
pub async fn scan_and_record(
    config: &Config,
    rules: &RuleSet,
    store: &Store,
    request: &ScanRequest,
    limits: Arc<Limits>,
    progress: ProgressBar,
    cancel: CancellationToken,
) -> anyhow::Result<(ScanObservations, Report)> {
    let planned = scan::plan(config, request)?;
    // Without the run row no checkpoint could be written: the scan still runs and is
    // recorded (or not) at the end.
    let begun = match store.begin_run(&planned.run).await {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, run = %planned.run.id, "cannot record the start of the scan");
            false
        }
    };
    let (sink, mut batches) = mpsc::unbounded_channel::<Vec<HostObservation>>();
    let writer = {
        let (store, run) = (store.clone(), planned.run.clone());
        tokio::spawn(async move {
            while let Some(hosts) = batches.recv().await {
                if !begun {
                    continue;
                }
                let hosts: Vec<HostObservation> = hosts;
                let departments: Vec<Option<String>> = hosts
                    .iter()
                    .map(|h| h.placement.department.clone())
                    .collect();
                if let Err(error) = store.checkpoint(&run, &hosts, &departments).await {
                    tracing::error!(%error, run = %run.id, "cannot checkpoint the scan");
                }
            }
        })
    };
    let cx = Cx::new(limits, cancel, progress);
    let observations = scan::execute(config, planned, &cx, Some(sink)).await;
    // The sink is dropped with the scan: the writer drains what is queued, then ends.
    if let Err(error) = writer.await {
        tracing::error!(%error, "the checkpoint writer ended abnormally");
    }

    let report = assess_and_record(config, rules, store, &observations, Recording::Always)
        .await?
        .ok_or_else(|| anyhow::anyhow!("run {} was recorded already", observations.run.id))?;
    Ok((observations, report))
}

/// Whether a run may be recorded again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// The pass: the run is this process's own.
    Always,
    /// A sensor's scan on the hub: only if the run is still `running` in the store, so a
    /// final batch sent again (or seen by two hubs) counts once.
    Once,
}

/// Assess (reconcile, rules, findings lifecycle) what a scan saw and record it, with its
/// report, in one transaction: the step after the probes, shared by the pass and the hub's
/// ingestion of a sensor's scan (its hosts placed with the hub's registers first). `Ok(None)`
/// when `recording` is [`Recording::Once`] and the run was recorded already: nothing written.
pub async fn assess_and_record(
    config: &Config,
    rules: &RuleSet,
    store: &Store,
    observations: &ScanObservations,
    recording: Recording,
) -> anyhow::Result<Option<Report>> {
    let (assessment, today) = assess(config, rules, store, observations).await?;
    let report = report::build(config, observations, &assessment.current, today);
    let departments: HashMap<String, Option<String>> = observations
        .hosts
        .iter()
        .map(|h| (h.ip.to_string(), h.placement.department.clone()))
        .collect();
    let json = serde_json::to_value(&report)?;
    let departments = |ip: &str| departments.get(ip).cloned().flatten();
    let written = match recording {
        Recording::Always => store
            .record(
                observations,
                &departments,
                &assessment.changed,
                &assessment.events,
                &json,
            )
            .await
            .map(|()| true),
        Recording::Once => {
            store
                .record_once(
                    observations,
                    &departments,
                    &assessment.changed,
                    &assessment.events,
                    &json,
                )
                .await
        }
    };
    match written {
        Ok(true) => Ok(Some(report)),
        Ok(false) => Ok(None),
        Err(source) => Err(PassError::NotRecorded {
            report: Box::new(report),
            source,
        }
        .into()),
    }
}

/// What a re-test (复测) of one finding found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetestOutcome {
    /// 复测通过: the condition is gone; the finding was resolved now.
    Passed,
    /// 整改未通过: still present; the finding stays open with its due date.
    Failed,
    /// The re-test could not judge (probes failed locally, cancelled): nothing changed.
    Inconclusive,
}

impl RetestOutcome {
    /// As the answer's state records it.
    pub fn as_str(self) -> &'static str {
        match self {
            RetestOutcome::Passed => "retest_passed",
            RetestOutcome::Failed => "retest_failed",
            RetestOutcome::Inconclusive => "retest_inconclusive",
        }
    }
}

/// Re-test one finding (复测): scan exactly its address (and its port, when it has one) with
/// the probes its rule needs plus TCP, through the scope and the process-wide limits like any
/// scan; evaluate the rules on what was seen; resolve that finding, and only that one, when
/// it is absent. Records no scan run: one endpoint is not a segment's latest picture, and its
/// absence says nothing about any other finding.
pub async fn retest(
    config: &Config,
    rules: &RuleSet,
    store: &Store,
    target: &finding::Finding,
    limits: Arc<Limits>,
    cancel: CancellationToken,
) -> anyhow::Result<RetestOutcome> {
    let ip: std::net::IpAddr = target
        .ip
        .as_deref()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            anyhow::anyhow!("finding {} has no address to re-test", target.fingerprint)
        })?;
    let mut probes = rules
        .get(&target.rule)
        .map(|r| r.needs.clone())
        .unwrap_or_else(|| crate::probe::ProbeKind::ALL.into_iter().collect());
    probes.insert(crate::probe::ProbeKind::Tcp);
    let planned = scan::plan_endpoint(
        config,
        ip,
        target.port,
        &ScanRequest {
            segments: Vec::new(),
            probes,
        },
    )?;
    let cx = Cx::new(limits, cancel, ProgressBar::hidden());
    let observations = scan::execute(config, planned, &cx, None).await;
    if observations.run.state != crate::observation::RunState::Complete {
        return Ok(RetestOutcome::Inconclusive);
    }
    let (assessment, _) = assess(config, rules, store, &observations).await?;
    if assessment
        .current
        .iter()
        .any(|f| f.fingerprint == target.fingerprint)
    {
        return Ok(RetestOutcome::Failed);
    }
    let at = observations
        .run
        .finished_at
        .unwrap_or(observations.run.started_at);
    store.resolve_by_retest(&target.fingerprint, at).await?;
    Ok(RetestOutcome::Passed)
}

/// Assess what a scan saw against the store's history (last sightings, stored findings), on
/// the organisation's calendar day the scan started: the step a pass and a re-test share.
async fn assess(
    config: &Config,
    rules: &RuleSet,
    store: &Store,
    observations: &ScanObservations,
) -> Result<(finding::Assessment, chrono::NaiveDate), StoreError> {
    let tz = config.organisation.timezone;
    let today = observations.run.started_at.with_timezone(&tz).date_naive();
    let history = History {
        last_seen: store
            .last_seen()
            .await?
            .into_iter()
            .map(|(ip, at)| (ip, at.with_timezone(&tz).date_naive()))
            .collect(),
    };
    let existing = store.findings().await?;
    let assessment = finding::assess(config, rules, observations, &history, &existing, today);
    Ok((assessment, today))
}
