//! The hub side of sensors (`sensors:` in the config): the two sensor routes, the ingestion of
//! a sensor's scan, the on-demand requests handed to sensors.
//!
//! Input: batches a sensor posts (`sensor::batch`), authenticated by that sensor's own token
//! (`access::Access::check_sensor`, in the API's guard, audited like every route). Output: the
//! sensor's runs in the store, assessed and recorded exactly as the hub's own scans
//! (`pass::assess_and_record`, the one step after the probes).
//!
//! Invariants:
//! - a batch is stored durably (one transaction: batch row, payload, the run begun at the
//!   scan's first batch, the sensor's contact) before it is answered 200; a batch whose id is
//!   stored already is answered 200 and changes nothing;
//! - hosts outside the segments the hub assigns that sensor (by the hub's own cidrs and
//!   excludes) are dropped and counted (`refused` in the answer and the batch row, a WARN
//!   line): the rest of the batch is kept. So a sensor can only ever report on its own
//!   segments, and its run covers only those (the run's `segments` are narrowed to them), so a
//!   finding is resolved only by the scan of the sensor assigned its segment;
//! - at the final batch (once every batch before it is in) the scan is assembled, each host
//!   placed with the hub's registers (`reconcile::place`: placement never comes off the wire)
//!   and recorded with [`Recording::Once`]: a final batch sent again, or a hub restarted
//!   between storing it and recording the run ([`recover`] at start), records nothing twice;
//! - the hub's own scheduled scans skip the segments a sensor owns ([`own_segments`]); an
//!   on-demand scan of such a segment is handed to its sensor through its assignment
//!   ([`requests_for`]): a job in the store's queue naming the sensor, listed (by any hub
//!   sharing the store) until the sensor's first batch of it arrives, then `running` as that
//!   run, and ended with the run's state when the run is recorded (`GET /api/v1/scans/{id}`
//!   follows it like any job).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::api::AuditNote;
use super::{Daemon, Loaded};
use crate::config::{Config, SensorSettings};
use crate::observation::{HostObservation, RunState, ScanObservations};
use crate::pass::{self, Recording};
use crate::reconcile;
use crate::scope::Scope;
use crate::sensor::batch::{self, AssignedScan, Assignment, Batch, ScanRequestFor};
use crate::store::{IncomingBatch, Received};

/// Largest batch body accepted (a batch of 256 hosts with TLS and HTTP facts stays far below).
pub const BATCH_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// How long the answer to a final batch waits for the scan to be recorded (below the API's
/// request timeout); the recording goes on after it.
const RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The hub's state in the daemon.
#[derive(Debug, Default)]
pub struct Hub {
    /// One scan assembled at a time in this process (the store makes it once across hubs).
    finishing: tokio::sync::Mutex<()>,
}

type Shared = Arc<Daemon>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The on-demand scans waiting for `sensor`: jobs in the store's queue handed to it, until
/// its first batch of each (any hub sharing the store lists them).
pub async fn requests_for(
    daemon: &Daemon,
    sensor: &str,
) -> Result<Vec<ScanRequestFor>, crate::store::StoreError> {
    Ok(daemon
        .store
        .sensor_requests(sensor)
        .await?
        .into_iter()
        .map(|(id, segments)| ScanRequestFor { id, segments })
        .collect())
}

/// The segments of a scheduled scan (`segments`, empty = all) that the hub scans itself:
/// `None` when no sensor is configured (the scan is unchanged), else the segments no sensor
/// owns (possibly none).
pub fn own_segments(config: &Config, segments: &[String]) -> Option<Vec<String>> {
    if config.sensors.is_empty() {
        return None;
    }
    let wanted: Vec<String> = if segments.is_empty() {
        config.segments.iter().map(|s| s.name.clone()).collect()
    } else {
        segments.to_vec()
    };
    Some(
        wanted
            .into_iter()
            .filter(|s| config.sensor_of(s).is_none())
            .collect(),
    )
}

/// `POST /api/v1/scans` on a hub: the segments a sensor owns go to that sensor's
/// assignment, the others to the hub's own scan queue. `None` when no requested segment is a
/// sensor's (the ordinary path answers).
pub async fn submit(daemon: &Arc<Daemon>, segments: &[String]) -> Option<Response> {
    let loaded = daemon.current();
    let config = &loaded.config;
    let wanted: Vec<String> = if segments.is_empty() {
        config.segments.iter().map(|s| s.name.clone()).collect()
    } else {
        segments.to_vec()
    };
    if let Some(unknown) = wanted.iter().find(|s| config.segment(s).is_none()) {
        return Some(error(
            StatusCode::BAD_REQUEST,
            format!("unknown segment {unknown:?}"),
        ));
    }
    if !wanted.iter().any(|s| config.sensor_of(s).is_some()) {
        return None;
    }
    let mut by_sensor: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut own = Vec::new();
    for s in wanted {
        match config.sensor_of(&s) {
            Some(sensor) => by_sensor.entry(sensor.id.clone()).or_default().push(s),
            None => own.push(s),
        }
    }
    let mut handed = Vec::new();
    for (sensor, segments) in by_sensor {
        match daemon
            .enqueue(segments.clone(), "api", None, Some(&sensor))
            .await
        {
            Ok(id) => handed.push(json!({"sensor": sensor, "request": id, "segments": segments})),
            Err(e) => return Some(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        }
    }
    let local = if own.is_empty() {
        None
    } else {
        match daemon.submit(own.clone()).await {
            Ok(id) => Some(id),
            Err(e) => return Some(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        }
    };
    let id = local.clone().unwrap_or_else(|| {
        handed
            .first()
            .and_then(|h| h["request"].as_str())
            .unwrap_or("-")
            .to_string()
    });
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "id": id,
            "state": "queued",
            "segments": own,
            "sensors": handed,
        })),
    )
        .into_response();
    response.extensions_mut().insert(AuditNote(format!(
        "scan {id}, handed to sensors: {}",
        handed
            .iter()
            .filter_map(|h| h["request"].as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )));
    Some(response)
}

/// The assignment of sensor `sensor` under `config`: its segments, the scheduled scans that
/// cover them (narrowed to them), and the requests waiting for it.
pub fn assignment_of(
    config: &Config,
    sensor: &SensorSettings,
    requests: Vec<ScanRequestFor>,
) -> Assignment {
    let schedules = config
        .daemon
        .scans
        .iter()
        .filter_map(|s| {
            let segments: Vec<String> = if s.segments.is_empty() {
                sensor.segments.clone()
            } else {
                s.segments
                    .iter()
                    .filter(|n| sensor.segments.contains(n))
                    .cloned()
                    .collect()
            };
            (!segments.is_empty()).then(|| AssignedScan {
                cron: s.cron.clone(),
                segments,
            })
        })
        .collect();
    Assignment {
        sensor: sensor.id.clone(),
        segments: sensor.segments.clone(),
        timezone: config.organisation.timezone.name().to_string(),
        schedules,
        requests,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct AssignmentQuery {
    /// The sensor's outbox backlog, when it tells.
    backlog: Option<u64>,
}

/// `GET /api/v1/sensors/{id}/assignment`.
pub(super) async fn assignment(
    State(daemon): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<AssignmentQuery>,
) -> Response {
    let loaded = daemon.current();
    let Some(sensor) = loaded.config.sensor(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no sensor {id:?}"));
    };
    let backlog = query.backlog;
    if let Err(e) = daemon.store.sensor_contact(&id, Utc::now(), backlog).await {
        tracing::error!(error = %e, sensor = %id, "cannot note the sensor's contact");
    }
    let requests = match requests_for(&daemon, &id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, sensor = %id, "cannot read the sensor's requests");
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    let body = assignment_of(&loaded.config, sensor, requests);
    axum::Json(body).into_response()
}

/// `POST /api/v1/sensors/{id}/batches`.
pub(super) async fn batches(
    State(daemon): State<Shared>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("batch larger than {BATCH_BODY_LIMIT} bytes"),
            );
        }
        Err(e) => return error(e.status(), e.body_text()),
    };
    let loaded = daemon.current();
    let Some(sensor) = loaded.config.sensor(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no sensor {id:?}"));
    };
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid batch: {e}")),
    };
    if batch.sensor != id {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the batch is sensor {:?}'s, not {id:?}'s", batch.sensor),
        );
    }
    if !batch::is_uuid(&batch.batch) {
        return error(StatusCode::BAD_REQUEST, "the batch id is not a UUID");
    }
    if !batch.scan.id.starts_with(&format!("{id}-")) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "the scan id must start with the sensor's id and `-`: {:?}",
                batch.scan.id
            ),
        );
    }
    let scope = sensor_scope(&loaded.config, sensor);
    let refused = batch
        .hosts
        .iter()
        .filter(|h| scope.target(h.ip).is_none())
        .count() as u64;
    if refused > 0 {
        tracing::warn!(
            sensor = %id,
            batch = %batch.batch,
            refused,
            "hosts outside the sensor's segments dropped"
        );
    }
    let payload = String::from_utf8_lossy(&body);
    // The run covers the sensor's own segments only, whatever it claims.
    let mut run = batch.scan.clone();
    run.segments.retain(|s| sensor.segments.contains(s));
    let incoming = IncomingBatch {
        batch: &batch.batch,
        sensor: &id,
        run: &run,
        seq: batch.seq,
        is_final: batch.is_final,
        hosts: batch.hosts.len() as u64 - refused,
        refused,
        backlog: batch.backlog,
        payload: &payload,
    };
    let received = match daemon.store.receive_batch(&incoming, Utc::now()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, sensor = %id, "cannot store the batch");
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    if let Some(request) = &batch.request
        && let Err(e) = daemon
            .store
            .begin_sensor_job(request, &id, &batch.scan.id)
            .await
    {
        tracing::error!(error = %e, sensor = %id, request = %request, "cannot note the request begun");
    }
    let mut recorded = false;
    if batch.is_final {
        // Recorded in a task of its own: a large scan may take longer than a request may, and
        // a request cut off must not cut the recording off with it (it would roll back, and
        // the sensor's resend would start it over). The answer waits for it a while.
        let task = {
            let (daemon, loaded, sensor, scan) = (
                daemon.clone(),
                loaded.clone(),
                sensor.clone(),
                batch.scan.id.clone(),
            );
            tokio::spawn(async move { finish(&daemon, &loaded, &sensor, &scan).await })
        };
        match tokio::time::timeout(RECORD_WAIT, task).await {
            Ok(Ok(Ok(r))) => recorded = r,
            Ok(Ok(Err(e))) => {
                // Stored: the sensor sends it again, or the next start records it.
                tracing::error!(error = %e, sensor = %id, scan = %batch.scan.id, "cannot record the sensor's scan");
                return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, sensor = %id, scan = %batch.scan.id, "the recording task failed");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the recording task failed",
                );
            }
            Err(_) => {
                tracing::info!(sensor = %id, scan = %batch.scan.id, "still recording the scan; answered before it is done")
            }
        }
    }
    let status = match received {
        Received::New => "accepted",
        Received::Duplicate => "duplicate",
    };
    let mut response = axum::Json(json!({
        "batch": batch.batch,
        "status": status,
        "hosts": incoming.hosts,
        "refused": refused,
        "recorded": recorded,
    }))
    .into_response();
    response.extensions_mut().insert(AuditNote(format!(
        "batch {} of {} ({status}{})",
        batch.batch,
        batch.scan.id,
        if recorded { ", run recorded" } else { "" }
    )));
    response
}

/// The hub's scope of one sensor: the segments assigned to it, by the hub's own cidrs.
fn sensor_scope(config: &Config, sensor: &SensorSettings) -> Scope {
    Scope::new(
        config
            .segments
            .iter()
            .filter(|s| sensor.segments.contains(&s.name)),
    )
}

/// Assemble and record the sensor's scan `scan_id` if its final batch and every batch
/// before it are stored and the run is not recorded yet: `true` when recorded now.
async fn finish(
    daemon: &Daemon,
    loaded: &Loaded,
    sensor: &SensorSettings,
    scan_id: &str,
) -> anyhow::Result<bool> {
    let _one = daemon.hub.finishing.lock().await;
    if daemon.store.run_state(scan_id).await?.as_deref() != Some("running") {
        return Ok(false);
    }
    let stored = daemon.store.scan_batches(scan_id).await?;
    let mut batches: Vec<Batch> = Vec::with_capacity(stored.len());
    for (seq, payload) in &stored {
        match serde_json::from_str::<Batch>(payload) {
            Ok(b) => batches.push(b),
            Err(e) => anyhow::bail!("stored batch {seq} of {scan_id} does not read: {e}"),
        }
    }
    let Some(last) = batches.iter().find(|b| b.is_final) else {
        return Ok(false);
    };
    let mut seqs: Vec<u64> = batches.iter().map(|b| b.seq).collect();
    seqs.dedup();
    if seqs != (0..=last.seq).collect::<Vec<_>>() {
        tracing::info!(sensor = %sensor.id, scan = scan_id, "final batch in, waiting for earlier ones");
        return Ok(false);
    }
    let config = &loaded.config;
    let scope = sensor_scope(config, sensor);
    let mut run = last.scan.clone();
    run.segments.retain(|s| sensor.segments.contains(s));
    if run.state == RunState::Running {
        run.state = RunState::Incomplete;
    }
    let errors = batch::error_map(&last.probe_errors);
    let mut hosts: BTreeMap<std::net::IpAddr, HostObservation> = BTreeMap::new();
    for b in batches {
        for mut h in b.hosts {
            let Some(target) = scope.target(h.ip) else {
                continue;
            };
            h.ip = target.ip();
            h.segment = target.segment().to_string();
            h.network = target.network();
            h.placement = reconcile::place(config, &h.segment, h.network, h.ip, h.ptr.as_deref());
            hosts.insert(h.ip, h);
        }
    }
    let observations = ScanObservations {
        run,
        hosts: hosts.into_values().collect(),
        errors,
    };
    let recorded = pass::assess_and_record(
        config,
        &loaded.rules,
        &daemon.store,
        &observations,
        Recording::Once,
    )
    .await?
    .is_some();
    if recorded {
        daemon
            .store
            .finish_sensor_job(scan_id, observations.run.state.as_str())
            .await?;
        tracing::info!(
            sensor = %sensor.id,
            scan = scan_id,
            state = observations.run.state.as_str(),
            hosts = observations.hosts.len(),
            "sensor scan recorded"
        );
    }
    Ok(recorded)
}

/// At start: record the sensors' scans whose final batch was stored but whose run was not
/// recorded (the hub stopped in between).
pub async fn recover(daemon: &Daemon) {
    let loaded = daemon.current();
    let pending = match daemon.store.sensor_runs_to_finish().await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot look for sensor scans left to record");
            return;
        }
    };
    for (sensor, scan) in pending {
        let Some(settings) = loaded.config.sensor(&sensor) else {
            tracing::warn!(%sensor, %scan, "a stored scan of a sensor no longer configured: left as it is");
            continue;
        };
        if let Err(e) = finish(daemon, &loaded, settings, &scan).await {
            tracing::error!(error = %e, %sensor, %scan, "cannot record the sensor's scan");
        }
    }
}
