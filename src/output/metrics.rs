//! Metrics: every series netpatrol exports, in one place (operators read them in docs/metrics.md).
//!
//! Input: the store (read at scrape time), the loaded config (registers, timezone) and the few
//! values only the running daemon knows ([`DaemonMetrics`]). Output: the Prometheus/OpenMetrics
//! text of `GET /metrics`.
//!
//! Invariants: the store-derived families are rebuilt from scratch at every scrape, so a host,
//! finding or segment that went away leaves no stale series; label values come only from
//! bounded sets (config ids, rule ids, severities, probe kinds and reasons, TLS version names,
//! addresses inside declared segments), never from error text. A label that has no value
//! (a host no register places) reads `none`.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `netpatrol_build_info` | gauge (1) | `version` | |
//! | `netpatrol_hosts` | gauge | `segment`, `network`, `department` | live hosts in the latest complete scan of each segment |
//! | `netpatrol_services` | gauge | `segment`, `network`, `department` | open ports in that scan |
//! | `netpatrol_findings` | gauge | `severity`, `rule`, `department` | open findings, waived ones excluded |
//! | `netpatrol_findings_waived` | gauge | `severity`, `rule`, `department` | open findings an active waiver covers |
//! | `netpatrol_findings_overdue` | gauge | `severity`, `department` | open, not waived, `due` before today (organisation calendar) |
//! | `netpatrol_unapproved_hosts` | gauge | `segment`, `department` | open, not waived `access.unapproved_host` findings |
//! | `netpatrol_tls_cert_not_after_seconds` | gauge | `ip`, `port`, `segment`, `department` | certificate expiry, Unix time |
//! | `netpatrol_tls_protocol_accepted` | gauge (1) | `ip`, `port`, `version` | one series per TLS endpoint and version it accepts (`SSLv3`…`TLSv1.3`) |
//! | `netpatrol_tls_sm_supported` | gauge (0/1) | `ip`, `port`, `department` | TLCP or an SM suite (RFC 8998) accepted |
//! | `netpatrol_project_assessment_due_seconds` | gauge | `project`, `department`, `kind` | next MLPS (`mlps`) or 密评 (`crypto`) assessment, Unix time of that day's start |
//! | `netpatrol_scan_duration_seconds` | histogram | | scans this daemon ran (complete or cut short) |
//! | `netpatrol_scans_running` | gauge | | scans in flight in this daemon |
//! | `netpatrol_scan_jobs` | gauge | `state` | scan jobs in the store's queue by state (`queued`, `running`: every hub sharing the store) |
//! | `netpatrol_leader` | gauge (0/1) | | whether this daemon leads (runs the schedules and the bulletin; one hub among those sharing a PostgreSQL store) |
//! | `netpatrol_scan_last_success_timestamp_seconds` | gauge | `segment` | end of the latest complete scan covering it |
//! | `netpatrol_scan_coverage_ratio` | gauge | `segment` | (answered + failed remotely) / planned probes of the latest finished scan covering it (a degraded scan shows here) |
//! | `netpatrol_probe_errors_total` | counter | `probe`, `reason` | summed over every recorded scan |
//! | `netpatrol_sensor_last_contact_timestamp_seconds` | gauge | `sensor` | when the hub last heard from each configured sensor (assignment fetched or batch posted), Unix time; absent until it has |
//! | `netpatrol_sensor_backlog_batches` | gauge | `sensor` | batches waiting in the sensor's outbox, as it last reported |
//! | `netpatrol_sensor_coverage_ratio` | gauge | `sensor` | (answered + failed remotely) / planned probes of the sensor's latest finished scan |
//! | `netpatrol_outbox_messages` | gauge | `state` | mail by outbox state (`queued` always present) |
//! | `netpatrol_rectification_items` | gauge | `department`, `state` | the rectification loop, by the latest answer on each finding: `unanswered` (open, not waived, no answer), `awaiting_retest`, `retest_passed`, `retest_failed`, `retest_inconclusive`, `waiver_requested`, `waiver_approved` (a dispute turned into a waiver too), `disputed`, `denied`, `dispute_closed`, `rule_overridden`; only pairs with items |
//! | `netpatrol_config_reload_success` | gauge (0/1) | | whether the last (re)load was applied |
//! | `netpatrol_config_last_reload_timestamp_seconds` | gauge | | when the last (re)load was attempted |
//! | `netpatrol_api_token_configured` | gauge (0/1) | `role` (`operator`, `read`) | whether the config in force has that token |
//! | `process_resident_memory_bytes`, `process_start_time_seconds`, `process_cpu_seconds_total` | | | from `/proc/self` |

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::config::Config;
use crate::probe::tls::TlsVersion;
use crate::probe::{ProbeKind, Reason};
use crate::reconcile;
use crate::store::{FindingCount, FindingFilter, LatestRun, PlacementCount, Store, StoreError};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic Prometheus text format, served unless OpenMetrics is asked for (`Accept`):
/// what `curl | promtool check metrics` and older scrapers read.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// [`render`]'s OpenMetrics text in the classic Prometheus text format (0.0.4): a counter
/// family's `# HELP`/`# TYPE` name its `_total` samples (OpenMetrics names the family without
/// the suffix, which promtool reads as samples without help); `# UNIT` and `# EOF` dropped.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        match meta {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) && !name.ends_with("_total") {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// TLS versions `netpatrol_tls_protocol_accepted` has a series for, oldest first (TLCP is
/// told by the SM gauge).
pub const TLS_VERSIONS: [TlsVersion; 5] = [
    TlsVersion::Ssl3,
    TlsVersion::Tls10,
    TlsVersion::Tls11,
    TlsVersion::Tls12,
    TlsVersion::Tls13,
];

/// Upper bounds of the scan duration buckets, seconds: from a loopback demo to a night's /16.
const SCAN_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

/// Every probe failure reason (the match below fails to compile when one is added).
const REASONS: [Reason; 11] = [
    Reason::Timeout,
    Reason::Refused,
    Reason::Unreachable,
    Reason::PermissionDenied,
    Reason::Reset,
    Reason::Protocol,
    Reason::Cancelled,
    Reason::NoDescriptors,
    Reason::NoBuffers,
    Reason::NoLocalAddress,
    Reason::Other,
];

#[allow(dead_code)]
fn reasons_exhaustive(r: Reason) {
    match r {
        Reason::Timeout
        | Reason::Refused
        | Reason::Unreachable
        | Reason::PermissionDenied
        | Reason::Reset
        | Reason::Protocol
        | Reason::Cancelled
        | Reason::NoDescriptors
        | Reason::NoBuffers
        | Reason::NoLocalAddress
        | Reason::Other => {}
    }
}

/// The value of a label that has none.
const NONE: &str = "none";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot read the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot encode metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// What only the running daemon knows; cheap to clone (the metrics share their values).
#[derive(Debug, Clone)]
pub struct DaemonMetrics {
    scan_duration: Histogram,
    scans_running: Gauge,
    leader: Gauge,
    reload_success: Gauge,
    reload_timestamp: Gauge<f64, AtomicU64>,
    /// Whether each role's API token is configured (1) or not (0).
    tokens: Family<RoleLabels, Gauge>,
    /// Scrape-time cache of recorded runs' inventory.
    inventory: InventoryCache,
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        DaemonMetrics {
            scan_duration: Histogram::new(SCAN_BUCKETS),
            scans_running: Gauge::default(),
            leader: Gauge::default(),
            reload_success: Gauge::default(),
            reload_timestamp: Gauge::default(),
            tokens: Family::default(),
            inventory: InventoryCache::default(),
        }
    }
}

impl DaemonMetrics {
    pub fn scan_started(&self) {
        self.scans_running.inc();
    }

    /// A scan ended after `seconds` (complete, incomplete or failed).
    pub fn scan_finished(&self, seconds: f64) {
        self.scans_running.dec();
        self.scan_duration.observe(seconds);
    }

    /// Whether this daemon leads the hubs sharing its store.
    pub fn leading(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// A scan ended before it ran (cancelled while it waited).
    pub fn scan_abandoned(&self) {
        self.scans_running.dec();
    }

    /// A (re)load of config, registers and rules was attempted at `at`.
    pub fn reloaded(&self, ok: bool, at: DateTime<Utc>) {
        self.reload_success.set(i64::from(ok));
        self.reload_timestamp.set(unix(at));
    }

    /// Which API tokens the config in force has.
    pub fn tokens(&self, access: &crate::daemon::access::Access) {
        for (role, set) in [
            ("operator", access.operator.is_some()),
            ("read", access.read.is_some()),
        ] {
            self.tokens
                .get_or_create(&RoleLabels {
                    role: role.to_string(),
                })
                .set(i64::from(set));
        }
    }

    /// Whether the last (re)load was applied.
    pub fn reload_ok(&self) -> bool {
        self.reload_success.get() == 1
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaceLabels {
    segment: String,
    network: String,
    department: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct FindingLabels {
    severity: String,
    rule: String,
    department: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct OverdueLabels {
    severity: String,
    department: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct UnapprovedLabels {
    segment: String,
    department: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    ip: String,
    port: String,
    segment: String,
    department: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    ip: String,
    port: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SmLabels {
    ip: String,
    port: String,
    department: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectLabels {
    project: String,
    department: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SensorLabels {
    sensor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SegmentLabels {
    segment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeErrorLabels {
    probe: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RectificationLabels {
    department: String,
    state: String,
}

/// The loop state of a finding whose latest answer is `a` (a bounded set).
fn loop_state(a: &crate::store::Answer) -> &'static str {
    use crate::store::AnswerKind;
    match (a.kind, a.state.as_str()) {
        (_, "retest_passed") => "retest_passed",
        (_, "retest_failed") => "retest_failed",
        (_, "retest_inconclusive" | "retest_error") => "retest_inconclusive",
        (_, "approved" | "waived") => "waiver_approved",
        (_, "denied") => "denied",
        (_, "closed") => "dispute_closed",
        (_, "overridden") => "rule_overridden",
        (AnswerKind::Done, _) => "awaiting_retest",
        (AnswerKind::Waiver, _) => "waiver_requested",
        (AnswerKind::Dispute, _) => "disputed",
    }
}

/// `netpatrol_rectification_items`.
async fn rectification(
    registry: &mut Registry,
    store: &Store,
    config: &Config,
    today: NaiveDate,
) -> Result<(), MetricsError> {
    let mut latest: HashMap<String, crate::store::Answer> = HashMap::new();
    for a in store.all_answers().await? {
        latest.insert(a.fingerprint.clone(), a);
    }
    let known: HashSet<&str> = config.departments.iter().map(|d| d.id.as_str()).collect();
    let mut counts: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
    for a in latest.values() {
        if known.contains(a.department.as_str()) {
            *counts
                .entry((a.department.clone(), loop_state(a)))
                .or_default() += 1;
        }
    }
    // Unanswered open findings are counted in the store; only the rules an active waiver
    // names need a look at each finding (a waived one is not waiting for an answer).
    let active: Vec<_> = config
        .exceptions
        .iter()
        .filter(|w| w.is_active(today))
        .collect();
    let mut waivable: BTreeSet<String> = BTreeSet::new();
    for (department, rule, n) in store.open_unanswered_counts().await? {
        let Some(dept) = department.filter(|d| known.contains(d.as_str())) else {
            continue;
        };
        if active.iter().any(|w| w.matches_rule(&rule)) {
            waivable.insert(rule.clone());
        }
        *counts.entry((dept, "unanswered")).or_default() += n;
    }
    for rule in waivable {
        let filter = crate::store::FindingFilter {
            rule: Some(rule),
            ..Default::default()
        };
        for f in store.open_findings(&filter).await? {
            let Some(dept) = f.department.as_deref().filter(|d| known.contains(d)) else {
                continue;
            };
            if !latest.contains_key(&f.fingerprint)
                && crate::finding::waiver_for(config, &f, today).is_some()
                && let Some(n) = counts.get_mut(&(dept.to_string(), "unanswered"))
            {
                *n -= 1;
            }
        }
    }
    counts.retain(|_, n| *n > 0);
    let family = Family::<RectificationLabels, Gauge>::default();
    for ((department, state), n) in counts {
        family
            .get_or_create(&RectificationLabels {
                department,
                state: state.to_string(),
            })
            .set(n);
    }
    registry.register(
        "netpatrol_rectification_items",
        "Findings in the rectification loop, by department and the state of the latest answer",
        family,
    );
    Ok(())
}

/// The parts of a recorded service observation the TLS families read.
#[derive(Deserialize)]
struct ServiceData {
    tls: Option<TlsData>,
}

#[derive(Deserialize)]
struct TlsData {
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    tlcp: bool,
    #[serde(default)]
    sm_suites: Vec<String>,
    cert: Option<CertData>,
}

#[derive(Deserialize)]
struct CertData {
    not_after: String,
}

/// What one recorded run's observations say, as the inventory families need it.
#[derive(Debug)]
struct RunInventory {
    placements: Vec<PlacementCount>,
    tls: Vec<TlsEndpoint>,
}

/// A TLS or TLCP endpoint of a run, its labels ready.
#[derive(Debug)]
struct TlsEndpoint {
    ip: String,
    port: String,
    segment: String,
    department: String,
    not_after: Option<f64>,
    versions: Vec<TlsVersion>,
    sm: bool,
}

impl RunInventory {
    async fn load(store: &Store, run: &str) -> Result<RunInventory, StoreError> {
        let placements = store.placement_counts(run).await?;
        let tls = store
            .tls_observations(run)
            .await?
            .into_iter()
            .filter_map(|row| {
                let ServiceData { tls: Some(tls) } = serde_json::from_str(&row.data).ok()? else {
                    return None;
                };
                Some(TlsEndpoint {
                    not_after: tls
                        .cert
                        .as_ref()
                        .and_then(|c| DateTime::parse_from_rfc3339(&c.not_after).ok())
                        .map(|at| at.timestamp() as f64),
                    versions: TLS_VERSIONS
                        .into_iter()
                        .filter(|v| {
                            tls.versions
                                .iter()
                                .any(|t| TlsVersion::parse(t) == Some(*v))
                        })
                        .collect(),
                    sm: tls.tlcp || !tls.sm_suites.is_empty(),
                    department: label(row.department.as_deref()),
                    port: row.port.to_string(),
                    ip: row.ip,
                    segment: row.segment,
                })
            })
            .collect();
        Ok(RunInventory { placements, tls })
    }
}

/// What [`Store::runs_version`] returns.
type RunsVersion = (i64, Option<String>);

/// Open findings as the store counts them (before waivers, which depend on the config).
#[derive(Debug)]
struct FindingTotals {
    counts: Vec<FindingCount>,
    unapproved: Vec<(Option<String>, Option<String>, i64)>,
}

#[derive(Debug, Default)]
struct CachedRuns {
    /// [`Store::runs_version`] when `runs` was read.
    version: Option<RunsVersion>,
    runs: HashMap<String, Arc<RunInventory>>,
    /// The finding totals, for a store version and a day (overdue depends on the day).
    findings: Option<(RunsVersion, NaiveDate, Arc<FindingTotals>)>,
}

/// The inventory of the runs the last scrape showed, shared by the daemon's scrapes.
#[derive(Debug, Default, Clone)]
pub struct InventoryCache(Arc<Mutex<CachedRuns>>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn label(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or(NONE).to_string()
}

/// Unix time of the start of `day` in `tz`.
fn day_start(day: NaiveDate, tz: Tz) -> Option<f64> {
    let midnight = day.and_hms_opt(0, 0, 0)?;
    let t = tz.from_local_datetime(&midnight).earliest()?;
    Some(t.timestamp() as f64)
}

/// The whole exposition at `now`: store-derived families, the daemon's own, process metrics.
pub async fn render(
    store: &Store,
    config: &Config,
    daemon: &DaemonMetrics,
    now: DateTime<Utc>,
) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    let tz = config.organisation.timezone;
    let today = now.with_timezone(&tz).date_naive();

    let build = Family::<VersionLabels, Gauge>::default();
    build
        .get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    registry.register(
        "netpatrol_build_info",
        "Build of the running netpatrol",
        build,
    );

    let names: Vec<&str> = config.segments.iter().map(|s| s.name.as_str()).collect();
    let latest = store.latest_complete_runs(&names).await?;
    // Changes whenever a scan is recorded, the only time hosts, services and findings change.
    let version = store.runs_version().await?;
    let cache = &daemon.inventory;
    inventory(&mut registry, store, config, &latest, cache, &version).await?;
    let coverage = Family::<SegmentLabels, Gauge<f64, AtomicU64>>::default();
    for (segment, ratio) in store.latest_coverage(&names).await? {
        coverage
            .get_or_create(&SegmentLabels { segment })
            .set(ratio);
    }
    registry.register(
        "netpatrol_scan_coverage_ratio",
        "Probes answered or failed remotely over probes planned, latest scan of the segment",
        coverage,
    );
    findings(
        &mut registry,
        store,
        config,
        &latest,
        cache,
        &version,
        today,
    )
    .await?;
    projects(&mut registry, config);
    sensors(&mut registry, store, config).await?;

    let errors = Family::<ProbeErrorLabels, Counter>::default();
    // Every (probe, reason) pair from the start, so rate() and increase() see the first error.
    for probe in ProbeKind::ALL {
        for reason in REASONS {
            errors
                .get_or_create(&ProbeErrorLabels {
                    probe: probe.as_str().to_string(),
                    reason: reason.as_str().to_string(),
                })
                .inc_by(0);
        }
    }
    for (probe, reason, n) in store.probe_error_totals().await? {
        errors
            .get_or_create(&ProbeErrorLabels { probe, reason })
            .inc_by(u64::try_from(n).unwrap_or(0));
    }
    registry.register(
        "netpatrol_probe_errors",
        "Probe failures over every recorded scan, by probe kind and bounded reason",
        errors,
    );

    rectification(&mut registry, store, config, today).await?;

    let jobs = Family::<OutboxLabels, Gauge>::default();
    for state in ["queued", "running"] {
        jobs.get_or_create(&OutboxLabels {
            state: state.to_string(),
        })
        .set(0);
    }
    for (state, n) in store.pending_jobs_by_state().await? {
        jobs.get_or_create(&OutboxLabels { state }).set(n);
    }
    registry.register(
        "netpatrol_scan_jobs",
        "Scan jobs in the store's queue by state, on every hub sharing the store",
        jobs,
    );

    let outbox = Family::<OutboxLabels, Gauge>::default();
    for state in ["queued", "sent", "failed"] {
        outbox
            .get_or_create(&OutboxLabels {
                state: state.to_string(),
            })
            .set(0);
    }
    // The outbox table may hold another shape while mail is being built: a failed count is
    // shown as nothing queued rather than failing the whole scrape.
    match store.outbox_by_state().await {
        Ok(Some(counts)) => {
            for (state, n) in counts {
                outbox.get_or_create(&OutboxLabels { state }).set(n);
            }
        }
        Ok(None) => {}
        Err(error) => tracing::debug!(%error, "outbox not counted"),
    }
    registry.register(
        "netpatrol_outbox_messages",
        "Mail in the outbox, by state",
        outbox,
    );

    registry.register(
        "netpatrol_scan_duration_seconds",
        "Duration of the scans this daemon ran",
        daemon.scan_duration.clone(),
    );
    registry.register(
        "netpatrol_scans_running",
        "Scans in flight in this daemon",
        daemon.scans_running.clone(),
    );
    registry.register(
        "netpatrol_leader",
        "Whether this daemon leads the hubs sharing its store: runs the schedules and the bulletin (1) or not (0)",
        daemon.leader.clone(),
    );
    registry.register(
        "netpatrol_config_reload_success",
        "Whether the last load of config, registers and rules was applied (1) or rejected (0)",
        daemon.reload_success.clone(),
    );
    registry.register(
        "netpatrol_config_last_reload_timestamp_seconds",
        "When config, registers and rules were last (re)loaded, successfully or not",
        daemon.reload_timestamp.clone(),
    );
    registry.register(
        "netpatrol_api_token_configured",
        "Whether the API token of a role (operator: scans; read: GET) is configured (1) or not (0)",
        daemon.tokens.clone(),
    );
    process(&mut registry);

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The hub's sensors: last contact, reported backlog, coverage of the latest scan. Only the
/// sensors the config in force names (a removed sensor's rows leave no series).
async fn sensors(
    registry: &mut Registry,
    store: &Store,
    config: &Config,
) -> Result<(), MetricsError> {
    let contact = Family::<SensorLabels, Gauge<f64, AtomicU64>>::default();
    let backlog = Family::<SensorLabels, Gauge>::default();
    let coverage = Family::<SensorLabels, Gauge<f64, AtomicU64>>::default();
    if !config.sensors.is_empty() {
        let known = |id: &str| config.sensor(id).is_some();
        for c in store.sensor_contacts().await? {
            if !known(&c.sensor) {
                continue;
            }
            let labels = SensorLabels { sensor: c.sensor };
            contact
                .get_or_create(&labels)
                .set(c.last_contact.timestamp_millis() as f64 / 1000.0);
            backlog
                .get_or_create(&labels)
                .set(i64::try_from(c.backlog).unwrap_or(i64::MAX));
        }
        for (sensor, ratio) in store.sensor_coverage().await? {
            if known(&sensor) {
                coverage.get_or_create(&SensorLabels { sensor }).set(ratio);
            }
        }
    }
    registry.register(
        "netpatrol_sensor_last_contact_timestamp_seconds",
        "When the hub last heard from the sensor (assignment fetched or batch posted), Unix time",
        contact,
    );
    registry.register(
        "netpatrol_sensor_backlog_batches",
        "Batches waiting in the sensor's outbox, as it last reported",
        backlog,
    );
    registry.register(
        "netpatrol_sensor_coverage_ratio",
        "Probes answered or failed remotely over probes planned, latest scan of the sensor",
        coverage,
    );
    Ok(())
}

/// Hosts, services, TLS facts and last success, from the latest complete scan of each segment.
async fn inventory(
    registry: &mut Registry,
    store: &Store,
    config: &Config,
    latest: &BTreeMap<String, LatestRun>,
    cache: &InventoryCache,
    version: &RunsVersion,
) -> Result<(), MetricsError> {
    let hosts = Family::<PlaceLabels, Gauge>::default();
    let services = Family::<PlaceLabels, Gauge>::default();
    let last_success = Family::<SegmentLabels, Gauge<f64, AtomicU64>>::default();
    let not_after = Family::<CertLabels, Gauge<f64, AtomicU64>>::default();
    let protocol = Family::<ProtocolLabels, Gauge>::default();
    let sm = Family::<SmLabels, Gauge>::default();

    // Segments whose latest complete scan is each run: one query per run, not per segment.
    let mut by_run: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (segment, run) in latest {
        by_run
            .entry(run.id.as_str())
            .or_default()
            .push(segment.as_str());
        if let Some(at) = run.finished_at {
            last_success
                .get_or_create(&SegmentLabels {
                    segment: segment.clone(),
                })
                .set(unix(at));
        }
    }
    // A run's observations never change once recorded: what they say is kept between
    // scrapes while the run is the latest complete one of a segment, and only a run recorded
    // since is read (a hub with many sensors records runs all day: reading every run again
    // at each new one made scrapes take seconds). A host's place is the one it had when its
    // run was first read; a host moved to another segment counts there from that segment's
    // next scan.
    let mut runs: HashMap<String, Arc<RunInventory>> = lock(&cache.0).runs.clone();
    runs.retain(|id, _| by_run.contains_key(id.as_str()));
    for run in by_run.keys() {
        if !runs.contains_key(*run) {
            runs.insert(
                run.to_string(),
                Arc::new(RunInventory::load(store, run).await?),
            );
        }
    }
    {
        let mut cache = lock(&cache.0);
        if cache.version.as_ref() != Some(version) {
            cache.findings = None;
        }
        cache.version = Some(version.clone());
        cache.runs = runs.clone();
    }
    for (run, segments) in by_run {
        let Some(inv) = runs.get(run) else { continue };
        let mine = |s: &str| segments.contains(&s);
        let mut seen: HashSet<&str> = HashSet::new();
        for c in inv.placements.iter().filter(|c| mine(&c.segment)) {
            seen.insert(&c.segment);
            let labels = PlaceLabels {
                segment: c.segment.clone(),
                network: c.network.clone(),
                department: label(c.department.as_deref()),
            };
            hosts.get_or_create(&labels).inc_by(c.hosts);
            services.get_or_create(&labels).inc_by(c.services);
        }
        // A segment scanned with nothing alive still shows, as 0.
        for s in segments.iter().filter_map(|name| config.segment(name)) {
            if !seen.contains(s.name.as_str()) {
                let labels = PlaceLabels {
                    segment: s.name.clone(),
                    network: s.network.as_str().to_string(),
                    department: label(s.department.as_deref()),
                };
                hosts.get_or_create(&labels).set(0);
                services.get_or_create(&labels).set(0);
            }
        }
        for e in inv.tls.iter().filter(|e| mine(&e.segment)) {
            if let Some(at) = e.not_after {
                not_after
                    .get_or_create(&CertLabels {
                        ip: e.ip.clone(),
                        port: e.port.clone(),
                        segment: e.segment.clone(),
                        department: e.department.clone(),
                    })
                    .set(at);
            }
            // Accepted versions only (value 1): a series per version refused would double the
            // exposition for nothing the dashboards need.
            for version in &e.versions {
                protocol
                    .get_or_create(&ProtocolLabels {
                        ip: e.ip.clone(),
                        port: e.port.clone(),
                        version: version.to_string(),
                    })
                    .set(1);
            }
            sm.get_or_create(&SmLabels {
                ip: e.ip.clone(),
                port: e.port.clone(),
                department: e.department.clone(),
            })
            .set(i64::from(e.sm));
        }
    }
    registry.register(
        "netpatrol_hosts",
        "Live hosts in the latest complete scan of each segment",
        hosts,
    );
    registry.register(
        "netpatrol_services",
        "Open ports in the latest complete scan of each segment",
        services,
    );
    registry.register(
        "netpatrol_scan_last_success_timestamp_seconds",
        "End of the latest complete scan covering the segment",
        last_success,
    );
    registry.register(
        "netpatrol_tls_cert_not_after_seconds",
        "Expiry of the certificate a TLS or TLCP endpoint presents",
        not_after,
    );
    registry.register(
        "netpatrol_tls_protocol_accepted",
        "Whether a TLS endpoint accepts a protocol version (1) or not (0)",
        protocol,
    );
    registry.register(
        "netpatrol_tls_sm_supported",
        "Whether a TLS endpoint speaks TLCP or accepts an SM suite (1) or not (0)",
        sm,
    );
    Ok(())
}

/// The rule whose open findings are the unapproved hosts.
const UNAPPROVED: &str = "access.unapproved_host";

/// Open findings (waived ones apart), overdue ones and unapproved hosts.
async fn findings(
    registry: &mut Registry,
    store: &Store,
    config: &Config,
    latest: &BTreeMap<String, LatestRun>,
    cache: &InventoryCache,
    version: &RunsVersion,
    today: NaiveDate,
) -> Result<(), MetricsError> {
    let cached = {
        let c = lock(&cache.0);
        c.findings
            .as_ref()
            .filter(|(v, day, _)| v == version && *day == today)
            .map(|(_, _, f)| f.clone())
    };
    let counted = match cached {
        Some(f) => f,
        None => {
            let f = Arc::new(FindingTotals {
                counts: store.open_finding_counts(today).await?,
                unapproved: store.open_findings_by_segment(UNAPPROVED).await?,
            });
            lock(&cache.0).findings = Some((version.clone(), today, f.clone()));
            f
        }
    };
    let counts = &counted.counts;
    let active: Vec<_> = config
        .exceptions
        .iter()
        .filter(|w| w.is_active(today))
        .collect();
    // (severity, rule, department) -> (open, overdue), and (segment, department) -> unapproved.
    let mut open: HashMap<(String, String, String), (i64, i64)> = HashMap::new();
    let mut waived: HashMap<(String, String, String), i64> = HashMap::new();
    let mut unapproved: HashMap<(String, String), i64> = HashMap::new();
    for c in counts {
        let e = open
            .entry((
                c.severity.clone(),
                c.rule.clone(),
                label(c.department.as_deref()),
            ))
            .or_default();
        e.0 += c.count;
        e.1 += c.overdue;
    }
    // Every segment scanned completely has a series, 0 when nothing unapproved answers there:
    // a baseline for "new unapproved host" alerts.
    for name in latest.keys() {
        if let Some(s) = config.segment(name) {
            unapproved.insert((s.name.clone(), label(s.department.as_deref())), 0);
        }
    }
    for (segment, department, n) in &counted.unapproved {
        *unapproved
            .entry((label(segment.as_deref()), label(department.as_deref())))
            .or_default() += n;
    }
    // Only rules some active waiver names need a look at each finding.
    let mut rules: Vec<&str> = counts
        .iter()
        .map(|c| c.rule.as_str())
        .filter(|rule| active.iter().any(|w| w.matches_rule(rule)))
        .collect();
    rules.sort_unstable();
    rules.dedup();
    for rule in rules {
        let filter = FindingFilter {
            rule: Some(rule.to_string()),
            ..FindingFilter::default()
        };
        for f in store.open_findings(&filter).await? {
            // The same locus the report's and the bulletin's waiver match sees.
            let locus = f.locus(config);
            if !active.iter().any(|w| w.matches(&f.rule, &locus)) {
                continue;
            }
            let key = (
                f.severity.as_str().to_string(),
                f.rule.clone(),
                label(f.department.as_deref()),
            );
            if let Some((n, late)) = open.get_mut(&key) {
                *n -= 1;
                *late -= i64::from(f.due < today);
            }
            if f.rule == UNAPPROVED
                && let Some(n) = unapproved
                    .get_mut(&(label(f.segment.as_deref()), label(f.department.as_deref())))
            {
                *n -= 1;
            }
            *waived.entry(key).or_default() += 1;
        }
    }

    let findings = Family::<FindingLabels, Gauge>::default();
    let waived_family = Family::<FindingLabels, Gauge>::default();
    let overdue = Family::<OverdueLabels, Gauge>::default();
    let unapproved_family = Family::<UnapprovedLabels, Gauge>::default();
    for ((severity, rule, department), (n, late)) in open {
        // Every (severity, department) with open findings has a series, 0 when none is late.
        overdue
            .get_or_create(&OverdueLabels {
                severity: severity.clone(),
                department: department.clone(),
            })
            .inc_by(late);
        findings
            .get_or_create(&FindingLabels {
                severity,
                rule,
                department,
            })
            .inc_by(n);
    }
    for ((severity, rule, department), n) in waived {
        waived_family
            .get_or_create(&FindingLabels {
                severity,
                rule,
                department,
            })
            .inc_by(n);
    }
    for ((segment, department), n) in unapproved {
        unapproved_family
            .get_or_create(&UnapprovedLabels {
                segment,
                department,
            })
            .set(n);
    }
    registry.register(
        "netpatrol_findings",
        "Open findings, waived ones excluded",
        findings,
    );
    registry.register(
        "netpatrol_findings_waived",
        "Open findings an active waiver (exception) covers",
        waived_family,
    );
    registry.register(
        "netpatrol_findings_overdue",
        "Open findings, not waived, past their rectification deadline",
        overdue,
    );
    registry.register(
        "netpatrol_unapproved_hosts",
        "Hosts answering without a valid network access approval (open access.unapproved_host)",
        unapproved_family,
    );
    Ok(())
}

/// Next MLPS and 密评 assessment of each project, from the register.
fn projects(registry: &mut Registry, config: &Config) {
    let tz = config.organisation.timezone;
    let due = Family::<ProjectLabels, Gauge<f64, AtomicU64>>::default();
    for project in &config.projects {
        let next = reconcile::assessment_due(&config.compliance, project);
        for (kind, day) in [("mlps", next.mlps), ("crypto", next.crypto)] {
            if let Some(at) = day.and_then(|d| day_start(d, tz)) {
                due.get_or_create(&ProjectLabels {
                    project: project.id.clone(),
                    department: project.department.clone(),
                    kind: kind.to_string(),
                })
                .set(at);
            }
        }
    }
    registry.register(
        "netpatrol_project_assessment_due_seconds",
        "Next MLPS (kind=mlps) or commercial cryptography (kind=crypto) assessment due, Unix time",
        due,
    );
}

/// Process metrics from /proc/self (Linux); absent elsewhere.
fn process(registry: &mut Registry) {
    // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ) on every platform it runs on.
    const TICKS: f64 = 100.0;
    if let Some(kib) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
    {
        let rss = Gauge::<f64, AtomicU64>::default();
        rss.set(kib * 1024.0);
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            rss,
        );
    }
    let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok() else {
        return;
    };
    // Fields after the command name, which may itself hold spaces and parentheses.
    let fields: Vec<&str> = match stat.rfind(')') {
        Some(i) => stat[i + 1..].split_whitespace().collect(),
        None => return,
    };
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (num(11), num(12)) {
        let cpu = Counter::<f64, AtomicU64>::default();
        cpu.inc_by((utime + stime) / TICKS);
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            cpu,
        );
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot, num(19)) {
        let started = Gauge::<f64, AtomicU64>::default();
        started.set(boot + start / TICKS);
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            started,
        );
    }
}
