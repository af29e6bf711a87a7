//! Observations: the facts one scan gathered, as pure data.
//!
//! Produced by `scan` from probe results; consumed by `reconcile` (and the rules, later), the
//! store and the report. Nothing here does I/O. Timestamps are UTC; presentation converts them
//! to the organisation's timezone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::NetworkKind;
use crate::probe::http::HttpFacts;
use crate::probe::tls::TlsFacts;
use crate::probe::{Coverage, ProbeKind, Reason};
use crate::reconcile::Placement;

/// One scan run: what was asked and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanRun {
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub segments: Vec<String>,
    /// Addresses in scope.
    pub addresses: u64,
    /// Probe attempts made (ICMP echoes, TCP connects, DNS lookups).
    pub probes: u64,
    pub probe_kinds: Vec<ProbeKind>,
    pub state: RunState,
    /// Probes planned, answered, failed remotely and failed locally.
    pub coverage: Coverage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Complete,
    /// Stopped before it finished (Ctrl-C, shutdown); what it saw is kept, marked as partial.
    Incomplete,
    /// Ran to the end, but blind in part: probes failed locally past
    /// `compliance.max_local_failure_ratio`, or not every planned probe was attempted. Its
    /// findings open; none resolves.
    Degraded,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Complete => "complete",
            RunState::Incomplete => "incomplete",
            RunState::Degraded => "degraded",
        }
    }

    /// Whether the run saw everything it planned to see, so that what it did not see may be
    /// taken as absent (findings resolve only after such runs).
    pub fn is_complete(self) -> bool {
        self == RunState::Complete
    }
}

/// Why a host counts as alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Answered an ICMP echo.
    Icmp,
    /// Accepted a TCP connection.
    OpenPort,
}

/// A live host and what it exposes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostObservation {
    pub ip: IpAddr,
    pub segment: String,
    pub network: NetworkKind,
    /// ICMP echo round trip, when it answered.
    pub icmp_rtt: Option<Duration>,
    pub alive_by: Vec<Liveness>,
    pub ptr: Option<String>,
    pub services: Vec<ServiceObservation>,
    /// Where the host stands in the registers, placed once by the scan (not serialised: the
    /// report and the store write its parts; a hub places a sensor's hosts with its own
    /// registers, so what comes off the wire is [`Placement::bare`] until then).
    #[serde(skip, default = "unplaced")]
    pub placement: Placement,
}

/// An open TCP port and what it said.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceObservation {
    pub port: u16,
    /// Always `tcp` for now; read back only as one of the names netpatrol writes.
    #[serde(deserialize_with = "protocol_name")]
    pub protocol: Protocol,
    /// Service name: from the greeting first, the port second, `unknown` otherwise.
    pub service: String,
    pub product: Option<String>,
    pub version: Option<String>,
    /// The greeting in printable form, when the service sent one.
    pub banner: Option<String>,
    pub connect_time: Duration,
    /// TLS/TLCP posture, when the TLS probe ran: `Some(None)` = not TLS.
    pub tls: Option<Option<TlsFacts>>,
    /// The web page, when the HTTP probe found one.
    pub http: Option<HttpFacts>,
    /// Whether the service answered data without credentials, when a safe check exists for it.
    pub unauthenticated: Option<bool>,
    /// What the unauthenticated check saw (e.g. `redis_version:6.2.6`).
    pub exposure_evidence: Option<String>,
    /// Probes that ran on this port and failed (kind and bounded reason), so that "failed" is
    /// never read as "absent".
    pub failures: Vec<ProbeFailure>,
}

/// A transport protocol's name (`tcp`). An alias rather than `&'static str` written out, so
/// that serde's derive does not take the field as borrowed from the input: it is read by
/// [`protocol_name`] into a static name.
pub type Protocol = &'static str;

/// A deserialised host's placement until the reader places it with its registers.
fn unplaced() -> Placement {
    Placement::bare("", NetworkKind::Other)
}

/// The transport protocols netpatrol observes, as `&'static str` so that the scan never
/// allocates one per service; anything else on the wire is an error.
fn protocol_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let name = String::deserialize(d)?;
    match name.as_str() {
        "tcp" => Ok("tcp"),
        other => Err(serde::de::Error::custom(format!(
            "unknown protocol {other:?} (expected \"tcp\")"
        ))),
    }
}

/// One probe of one port that got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProbeFailure {
    pub probe: ProbeKind,
    pub reason: Reason,
}

/// Counts of probe failures by kind and bounded reason (refusals of closed ports are not errors
/// and are not counted here).
pub type ProbeErrors = BTreeMap<(ProbeKind, Reason), u64>;

/// Everything one scan saw.
#[derive(Debug, Clone)]
pub struct ScanObservations {
    pub run: ScanRun,
    /// Live hosts, in address order.
    pub hosts: Vec<HostObservation>,
    pub errors: ProbeErrors,
}
