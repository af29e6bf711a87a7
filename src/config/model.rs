//! Validated configuration: the domain types the rest of netpatrol uses.
//!
//! Built only by [`super::load`] from the raw serde structs in `raw.rs`, after every check of
//! `validate.rs` passed, so code downstream can rely on what is written here: ids are unique,
//! every reference resolves, CIDRs parse and lie inside their segment, dates are in order.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use chrono::NaiveDate;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Position;
use crate::facts::Locus;
use crate::severity::Severity;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from; relative register paths were resolved against its folder.
    pub source: PathBuf,
    pub organisation: Organisation,
    pub store: StoreSettings,
    pub trust: TrustSettings,
    pub scan: ScanSettings,
    pub departments: Vec<Department>,
    pub segments: Vec<Segment>,
    pub approvals: Vec<Approval>,
    pub projects: Vec<Project>,
    pub daemon: DaemonSettings,
    pub bulletin: BulletinSettings,
    pub smtp: Option<SmtpSettings>,
    pub rules: RuleSettings,
    pub compliance: ComplianceSettings,
    /// Waivers, in the order written.
    pub exceptions: Vec<Waiver>,
    /// On a hub: the sensors and their segments (a segment at most one sensor's).
    pub sensors: Vec<SensorSettings>,
    /// On a sensor: its hub.
    pub hub: Option<HubSettings>,
}

impl Config {
    /// The sensor that scans segment `name` for this hub, if any.
    pub fn sensor_of(&self, name: &str) -> Option<&SensorSettings> {
        self.sensors
            .iter()
            .find(|s| s.segments.iter().any(|n| n == name))
    }

    /// A sensor of this hub by id.
    pub fn sensor(&self, id: &str) -> Option<&SensorSettings> {
        self.sensors.iter().find(|s| s.id == id)
    }
}

/// A sensor as its hub knows it (`sensors[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorSettings {
    pub id: String,
    /// The segments it scans, by name (each declared, none another sensor's).
    pub segments: Vec<String>,
    /// Environment variable holding its bearer token.
    pub token_env: String,
}

/// A sensor's hub (`hub:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// Base URL, no trailing slash: https, or http to a loopback host.
    pub url: String,
    /// This sensor's id.
    pub sensor: String,
    pub token_env: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub poll: Duration,
    pub retry_max: Duration,
    /// How long an unsent batch is kept (at least 72 hours).
    pub keep: Duration,
}

#[derive(Debug, Clone)]
pub struct Organisation {
    /// Default "netpatrol".
    pub name: String,
    /// Default Asia/Shanghai.
    pub timezone: chrono_tz::Tz,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// SQLite database file, used when `url` is none. Default `netpatrol.db` beside the
    /// config file.
    pub path: PathBuf,
    /// PostgreSQL store instead of SQLite (`postgres://USER@HOST:PORT/DATABASE`, parsed and
    /// without a password). Default none.
    pub url: Option<String>,
    /// Environment variable holding the PostgreSQL password. Default none.
    pub password_env: Option<String>,
}

impl StoreSettings {
    /// The store as named in messages: the SQLite file or the PostgreSQL URL.
    pub fn describe(&self) -> String {
        match &self.url {
            Some(url) => url.clone(),
            None => self.path.display().to_string(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct TrustSettings {
    pub ca_files: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ScanSettings {
    /// ICMP echo as one liveness signal. Default true.
    pub icmp: bool,
    /// Ports to connect to, sorted ascending, without duplicates. Default: the `default` set.
    pub ports: Vec<u16>,
    /// New connection attempts per second, whole process; 0 = unlimited. Default 2000.
    pub rate: u32,
    /// Probes in flight, whole process. Default 256.
    pub concurrency: usize,
    /// Per connection / handshake step. Default 1500 ms.
    pub timeout: Duration,
    /// Extra attempts for a port that stayed silent (timed out). Default 1.
    pub retries: u8,
    /// How long to wait for a service's greeting after connecting. Default 1000 ms.
    pub banner_timeout: Duration,
    /// Reverse DNS settings.
    pub dns: DnsSettings,
}

#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Look up PTR records of live hosts. Default true.
    pub enabled: bool,
    /// Nameservers to ask; empty = the system resolver configuration (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Department {
    pub id: String,
    pub name: String,
    pub emails: Vec<String>,
    /// Copied on a notice with escalated items. Default none.
    pub leader_emails: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    Extranet,
    Metro,
    Departmental,
    Internet,
    Other,
}

impl NetworkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::Extranet => "extranet",
            NetworkKind::Metro => "metro",
            NetworkKind::Departmental => "departmental",
            NetworkKind::Internet => "internet",
            NetworkKind::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    pub network: NetworkKind,
    /// Declared networks, as written (host bits may be set in the YAML; stored truncated).
    pub cidrs: Vec<IpNet>,
    /// Addresses or networks inside `cidrs` that must never be probed.
    pub exclude: Vec<IpNet>,
    /// Owning department id; always set for departmental segments.
    pub department: Option<String>,
    /// Departmental only: the date by which it must be merged into the metro network or extranet.
    pub consolidate_by: Option<NaiveDate>,
}

impl Segment {
    /// Whether `ip` is declared by this segment and not excluded.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|n| n.contains(&ip)) && !self.exclude.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub id: String,
    pub department: String,
    pub segment: String,
    pub addresses: Vec<IpNet>,
    /// Services approved to be reachable; `None` = any.
    pub ports: Option<Vec<u16>>,
    pub approved_on: NaiveDate,
    pub expires_on: Option<NaiveDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectStage {
    Planned,
    Building,
    Trial,
    Accepted,
    InUse,
    Retired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asset {
    Address(IpNet),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub department: String,
    pub stage: ProjectStage,
    pub accepted_on: Option<NaiveDate>,
    pub assets: Vec<Asset>,
    pub mlps: Option<MlpsAssessment>,
    pub crypto: Option<CryptoAssessment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpsAssessment {
    /// 1 to 5.
    pub level: u8,
    pub filing_no: Option<String>,
    pub assessed_on: Option<NaiveDate>,
    pub conclusion: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoAssessment {
    pub assessed_on: Option<NaiveDate>,
    pub conclusion: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DaemonSettings {
    /// No HTTP server when absent.
    pub listen: Option<SocketAddr>,
    /// Where `listen` was written, for the compile step's warnings about it.
    pub listen_at: Option<Position>,
    /// Environment variable holding the API bearer token. Default `NETPATROL_API_TOKEN`.
    pub api_token_env: String,
    pub scans: Vec<ScheduledScan>,
    /// Environment variable holding the read-only token. Default `NETPATROL_READ_TOKEN`.
    pub read_token_env: String,
    /// The exporter-toolkit web config file (absolute or relative to the config's directory).
    pub web_config: Option<std::path::PathBuf>,
    /// Scans accepted and not finished, at most (API submissions beyond answer 429). Default 8.
    pub max_queued_scans: usize,
    /// Environment variable holding the rectification link key. Default `NETPATROL_LINK_KEY`.
    pub link_key_env: String,
    /// The URL departments reach the daemon at (no trailing slash); none = notices carry no
    /// link.
    pub public_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ScheduledScan {
    pub cron: String,
    /// Empty = all segments.
    pub segments: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BulletinSettings {
    /// Default "0 9 1 * *".
    pub cron: String,
    /// "zh" (default) or "en".
    pub lang: String,
    pub out_dir: PathBuf,
    pub recipients: Vec<String>,
    pub notify_departments: bool,
    /// Days past due after which an item is escalated (bulletin section 逾期未整改, leaders
    /// copied); 0 = never. Default 30.
    pub escalate_after_days: u32,
    /// Replacements for the built-in bulletin templates, by file name. Default none.
    pub templates_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    StartTls,
    Tls,
    None,
}

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub from: String,
}

#[derive(Debug, Clone, Default)]
pub struct RuleSettings {
    /// Extra rule folders, resolved against the config's folder; each of their `*.yaml` files
    /// loads after the built-in pack. Default none.
    pub dirs: Vec<PathBuf>,
    /// Per rule id. Ids are checked against the loaded rules by `rules::RuleSet::load`.
    pub overrides: BTreeMap<String, RuleOverride>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOverride {
    /// Replaces the rule's own severity. Default: keep it.
    pub severity: Option<Severity>,
    /// False turns the rule off. Default true.
    pub enabled: bool,
    /// Where the rule id was written.
    pub at: Position,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComplianceSettings {
    /// `access.approval_unused` after this many days without an answer. Default 30.
    pub approval_unused_days: u32,
    /// MLPS level to months between assessments. Default {2: 24, 3: 12, 4: 6, 5: 6}; a level
    /// absent here (level 1 by default) has no periodic assessment.
    pub mlps_interval_months: BTreeMap<u8, u32>,
    /// 密评 is required for projects in use at this MLPS level and above. Default 3.
    pub crypto_min_level: u8,
    /// Months between 密评 assessments. Default 12.
    pub crypto_interval_months: u32,
    /// A finding resolves after this many consecutive scans without it. Default 2.
    pub resolve_after_scans: u32,
    /// A scan whose probes failed locally (descriptors, buffers, ...) above this share of the
    /// probes it attempted is degraded: it opens findings, resolves none. Default 0.01.
    pub max_local_failure_ratio: f64,
}

impl Default for ComplianceSettings {
    fn default() -> Self {
        ComplianceSettings {
            approval_unused_days: 30,
            mlps_interval_months: BTreeMap::from([(2, 24), (3, 12), (4, 6), (5, 6)]),
            crypto_min_level: 3,
            crypto_interval_months: 12,
            resolve_after_scans: 2,
            max_local_failure_ratio: 0.01,
        }
    }
}

impl ComplianceSettings {
    /// Months between MLPS assessments at `level`; `None` when that level has none.
    pub fn mlps_interval(&self, level: u8) -> Option<u32> {
        self.mlps_interval_months.get(&level).copied()
    }
}

/// A waiver (例外): findings of matching rules within the scope are accepted until `expires_on`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiver {
    /// A rule id, or a prefix ending in `*` such as `exposure.*`.
    pub rule: String,
    /// Scope: every key given must match; absent keys match anything.
    pub ip: Option<IpNet>,
    pub port: Option<u16>,
    pub segment: Option<String>,
    pub department: Option<String>,
    pub project: Option<String>,
    pub reason: String,
    pub approver: String,
    /// The last day the waiver applies.
    pub expires_on: NaiveDate,
    /// Where `rule` was written.
    pub at: Position,
}

impl Waiver {
    /// Whether the rule pattern names `id`: equal, or `id` starts with the prefix before `*`.
    pub fn matches_rule(&self, id: &str) -> bool {
        match self.rule.strip_suffix('*') {
            Some(prefix) => id.starts_with(prefix),
            None => self.rule == id,
        }
    }

    /// Whether the waiver applies on `today` (its expiry day included).
    pub fn is_active(&self, today: NaiveDate) -> bool {
        today <= self.expires_on
    }

    /// Whether the waiver covers a finding of rule `id` about `locus` (expiry not checked).
    /// A scope key the finding has no value for (e.g. `port` for a host finding) does not match;
    /// a `project` scope matches any of the locus's `projects`.
    pub fn matches(&self, id: &str, locus: &Locus) -> bool {
        fn scope<T: PartialEq + ?Sized>(want: Option<&T>, got: Option<&T>) -> bool {
            want.is_none_or(|w| got == Some(w))
        }
        self.matches_rule(id)
            && self
                .ip
                .is_none_or(|net| locus.ip.is_some_and(|ip| net.contains(&ip)))
            && scope(self.port.as_ref(), locus.port.as_ref())
            && scope(self.segment.as_deref(), locus.segment.as_deref())
            && scope(self.department.as_deref(), locus.department.as_deref())
            && self
                .project
                .as_ref()
                .is_none_or(|p| locus.projects.contains(p))
    }
}

impl Config {
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    pub fn department(&self, id: &str) -> Option<&Department> {
        self.departments.iter().find(|d| d.id == id)
    }
}
