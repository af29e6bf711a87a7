//! The pass: one scan taken from probes to the store, shared by the CLI commands (`app`) and
//! the daemon, neither of which calls the other.
//!
//! scan (probes, `crate::scan`) -> assess (reconcile, rules, findings lifecycle; pure) ->
//! report (the JSON document of a scan) -> record (the store). Input: a loaded config and rule
//! set, the store, what to scan, the process-wide limits and a cancellation token. Output: the
//! observations and the report.
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
    let assessment = finding::assess(config, rules, &observations, &history, &existing, today);
    let report = report::build(config, &observations, &assessment.current, today);
    let departments: HashMap<String, Option<String>> = observations
        .hosts
        .iter()
        .map(|h| (h.ip.to_string(), h.placement.department.clone()))
        .collect();
    let json = serde_json::to_value(&report)?;
    if let Err(source) = store
        .record(
            &observations,
            &|ip| departments.get(ip).cloned().flatten(),
            &assessment.changed,
            &assessment.events,
            &json,
        )
        .await
    {
        return Err(PassError::NotRecorded {
            report: Box::new(report),
            source,
        }
        .into());
    }
    Ok((observations, report))
}
