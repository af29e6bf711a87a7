//! Validated configuration: the domain types the rest of netpatrol uses.
//!
//! Built only by [`super::load`] from the raw serde structs in `raw.rs`, after every check of
//! `validate.rs` passed, so code downstream can rely on what is written here: ids are unique,
//! every reference resolves, CIDRs parse and lie inside their segment, dates are in order.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use chrono::NaiveDate;
use ipnet::IpNet;
use serde::Serialize;

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
    /// SQLite database file. Default `netpatrol.db` beside the config file.
    pub path: PathBuf,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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
    /// Environment variable holding the API bearer token. Default `NETPATROL_API_TOKEN`.
    pub api_token_env: String,
    pub scans: Vec<ScheduledScan>,
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

impl Config {
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    pub fn department(&self, id: &str) -> Option<&Department> {
        self.departments.iter().find(|d| d.id == id)
    }
}
