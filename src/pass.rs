//! The pass: one scan taken from probes to the store, shared by the CLI commands (`app`) and
//! the daemon, neither of which calls the other.
//!
//! scan (probes, `crate::scan`) -> assess (reconcile, rules, findings lifecycle; pure) ->
//! report (the JSON document of a scan) -> record (the store). Input: a loaded config and rule
//! set, the store, what to scan, the process-wide limits and a cancellation token. Output: the
//! observations and the report.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::finding;
use crate::observation::ScanObservations;
use crate::output::report::{self, Report};
use crate::reconcile::History;
use crate::rules::RuleSet;
use crate::scan::{self, ScanRequest};
use crate::scope::Limits;
use crate::store::Store;

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
    let observations = scan::run(config, request, limits, progress, cancel).await?;
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
    let departments: HashMap<String, Option<String>> = report
        .hosts
        .iter()
        .map(|h| (h.ip.clone(), h.department.clone()))
        .collect();
    let json = serde_json::to_value(&report)?;
    store
        .record(
            &observations,
            &|ip| departments.get(ip).cloned().flatten(),
            &assessment.changed,
            &assessment.events,
            &json,
        )
        .await
        .context("cannot record the scan")?;
    Ok((observations, report))
}
