//! The wire format between a sensor and its hub: batches of observations and the assignment.
//!
//! A scan travels as batches (`POST /api/v1/sensors/{id}/batches`), in sequence: number 0
//! when the scan starts (no hosts: the hub begins the run), then one per [`crate::scan::BATCH`]
//! addresses the scan finished that had live hosts (its checkpoint), and a last one marked
//! `final` carrying the run's end state, coverage and probe errors. Each has its own id (a
//! UUID), so a batch sent twice is recognised and counts once. Hosts are the section-3 shape
//! of the observations, without placement (the hub places each host with its own registers)
//! and without findings (the hub assesses).
//!
//! Public so that tools and benchmarks can build batches (`benches/`).

use serde::{Deserialize, Serialize};

use crate::observation::{HostObservation, ProbeErrors, ScanRun};
use crate::probe::{ProbeKind, Reason};

/// One batch of one scan of one sensor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    /// The batch's id, a UUID (v4).
    pub batch: String,
    /// The sensor's id (`hub.sensor`); the route's id must be the same.
    pub sensor: String,
    /// The scan run. Its `id` starts with the sensor's id and `-`. On the final batch it
    /// holds the end state, `finished_at`, `probes` and `coverage`; on the others the run as
    /// it started.
    pub scan: ScanRun,
    /// 0 for the scan's first batch, then 1, 2, ... in the order they were made.
    pub seq: u64,
    /// The scan's last batch.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Live hosts of this batch, in address order.
    #[serde(default)]
    pub hosts: Vec<HostObservation>,
    /// On the final batch: probe failures by kind and bounded reason, over the whole scan.
    #[serde(default)]
    pub probe_errors: Vec<ProbeErrorCount>,
    /// Batches waiting in the sensor's outbox when this one was sent (itself included).
    #[serde(default)]
    pub backlog: u64,
    /// The on-demand request (from the assignment's `requests`) this scan answers.
    #[serde(default)]
    pub request: Option<String>,
}

/// One entry of a scan's probe errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeErrorCount {
    pub probe: ProbeKind,
    pub reason: Reason,
    pub count: u64,
}

/// Probe errors as the wire lists them.
pub fn error_list(errors: &ProbeErrors) -> Vec<ProbeErrorCount> {
    errors
        .iter()
        .map(|(&(probe, reason), &count)| ProbeErrorCount {
            probe,
            reason,
            count,
        })
        .collect()
}

/// Probe errors from their wire list (repeated pairs add up).
pub fn error_map(list: &[ProbeErrorCount]) -> ProbeErrors {
    let mut out = ProbeErrors::new();
    for e in list {
        *out.entry((e.probe, e.reason)).or_default() += e.count;
    }
    out
}

/// What the hub asks of a sensor (`GET /api/v1/sensors/{id}/assignment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub sensor: String,
    /// The segments the hub assigns the sensor, by name (the sensor scans those its own
    /// config also declares).
    pub segments: Vec<String>,
    /// IANA timezone the crons are read in (the hub's organisation).
    pub timezone: String,
    /// The hub's scheduled scans that cover the sensor's segments, narrowed to them.
    pub schedules: Vec<AssignedScan>,
    /// On-demand scans asked for at the hub and not begun yet.
    #[serde(default)]
    pub requests: Vec<ScanRequestFor>,
}

/// One scheduled scan a sensor runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedScan {
    pub cron: String,
    pub segments: Vec<String>,
}

/// One on-demand scan a sensor runs once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRequestFor {
    pub id: String,
    pub segments: Vec<String>,
}

/// A fresh random UUID (version 4), lowercase hex with dashes.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        // No system randomness: the clock and a counter still make ids unique here.
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64;
        b[..8].copy_from_slice(&nanos.to_be_bytes());
        b[8..].copy_from_slice(&N.fetch_add(1, Ordering::SeqCst).to_be_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether `id` reads as a UUID (36 characters, hex and dashes in their places).
pub fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}
