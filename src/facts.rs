//! Facts: the vocabulary shared by reconciliation (which computes them) and the rules (which
//! test them).
//!
//! A rule is evaluated against one *subject*: a host, a service (which also sees its host's
//! facts), a segment, an approval or a project. [`CATALOGUE`] lists every fact, its type, the
//! subject that carries it and the probe it needs, so rules are type-checked when they load and
//! a finding is only judged absent when the scan actually gathered the facts its rule reads.
//! Pure data; no I/O.

use std::collections::HashMap;
use std::fmt;

use crate::probe::ProbeKind;

/// A fact's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("-"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => f.write_str(s),
            Value::List(l) => f.write_str(&l.join(", ")),
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}
impl From<Vec<String>> for Value {
    fn from(v: Vec<String>) -> Value {
        Value::List(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// A fact's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Str,
    List,
}

/// What a finding is about: the subject and what identifies and places it (address, port,
/// segment, department, projects, approval). One type from reconciliation to the lifecycle and
/// the waivers, so no stage re-derives or drops part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locus {
    pub subject: Subject,
    pub ip: Option<std::net::IpAddr>,
    pub port: Option<u16>,
    pub segment: Option<String>,
    pub department: Option<String>,
    /// The project a project-level subject is; for hosts and services, the first project that
    /// lists them (the one a finding names).
    pub project: Option<String>,
    /// Every project that lists the host (or the project itself): a waiver scoped to any of
    /// them applies.
    pub projects: Vec<String>,
    pub approval: Option<String>,
}

impl Locus {
    /// A locus of `subject` with nothing else known yet.
    pub fn of(subject: Subject) -> Locus {
        Locus {
            subject,
            ip: None,
            port: None,
            segment: None,
            department: None,
            project: None,
            projects: Vec::new(),
            approval: None,
        }
    }
}

/// What a rule is evaluated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    Host,
    Service,
    Segment,
    Approval,
    Project,
}

impl Subject {
    pub fn parse(s: &str) -> Option<Subject> {
        Some(match s {
            "host" => Subject::Host,
            "service" => Subject::Service,
            "segment" => Subject::Segment,
            "approval" => Subject::Approval,
            "project" => Subject::Project,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Host => "host",
            Subject::Service => "service",
            Subject::Segment => "segment",
            Subject::Approval => "approval",
            Subject::Project => "project",
        }
    }

    /// Whether a rule on `self` may read a fact carried by `carrier` (a service sees its host).
    pub fn sees(self, carrier: Subject) -> bool {
        self == carrier || (self == Subject::Service && carrier == Subject::Host)
    }
}

/// One entry of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct FactDef {
    pub name: &'static str,
    pub kind: Kind,
    pub subject: Subject,
    /// The probe that must have run for this fact to be known.
    pub needs: Option<ProbeKind>,
    pub doc: &'static str,
}

const fn def(
    name: &'static str,
    kind: Kind,
    subject: Subject,
    needs: Option<ProbeKind>,
    doc: &'static str,
) -> FactDef {
    FactDef {
        name,
        kind,
        subject,
        needs,
        doc,
    }
}

use Kind::{Bool, Int, List, Str};
use Subject::{Approval as A, Host as H, Project as P, Segment as G, Service as S};

const TCP: Option<ProbeKind> = Some(ProbeKind::Tcp);
const BANNER: Option<ProbeKind> = Some(ProbeKind::Banner);
const TLS: Option<ProbeKind> = Some(ProbeKind::Tls);
const HTTP: Option<ProbeKind> = Some(ProbeKind::Http);

/// Every fact a rule can test.
pub const CATALOGUE: &[FactDef] = &[
    // Hosts.
    def("host.ip", Str, H, None, "address"),
    def("host.segment", Str, H, None, "segment name"),
    def(
        "host.network",
        Str,
        H,
        None,
        "extranet | metro | departmental | internet | other",
    ),
    def(
        "host.department",
        Str,
        H,
        None,
        "owning department id, when known",
    ),
    def("host.ptr", Str, H, None, "reverse DNS name"),
    def(
        "host.approvals",
        List,
        H,
        None,
        "ids of approvals covering the address, valid or not",
    ),
    def(
        "host.approved",
        Bool,
        H,
        None,
        "covered by an approval valid today",
    ),
    def(
        "host.approval_expired",
        Bool,
        H,
        None,
        "covered only by approvals that have expired",
    ),
    def(
        "host.projects",
        List,
        H,
        None,
        "ids of projects listing the host as an asset",
    ),
    def(
        "host.services",
        List,
        H,
        TCP,
        "names of the services found open",
    ),
    // Services (a service rule also sees its host's facts).
    def("service.port", Int, S, TCP, "TCP port"),
    def(
        "service.name",
        Str,
        S,
        TCP,
        "service name: from the greeting, else the port",
    ),
    def(
        "service.product",
        Str,
        S,
        BANNER,
        "product the service names",
    ),
    def(
        "service.version",
        Str,
        S,
        BANNER,
        "version the service names",
    ),
    def("service.banner", Str, S, BANNER, "greeting, printable"),
    def(
        "service.description",
        Str,
        S,
        TCP,
        "name, product and version as known, e.g. mysql MySQL 5.7.44",
    ),
    def(
        "service.approved",
        Bool,
        S,
        TCP,
        "an approval valid today covers this host and port",
    ),
    def(
        "service.unauthenticated",
        Bool,
        S,
        BANNER,
        "answers data without credentials",
    ),
    def("tls.enabled", Bool, S, TLS, "speaks TLS or TLCP"),
    def("tls.versions", List, S, TLS, "accepted protocol versions"),
    def(
        "tls.legacy_versions",
        List,
        S,
        TLS,
        "accepted among SSLv3, TLSv1.0, TLSv1.1",
    ),
    def(
        "tls.weak_ciphers",
        List,
        S,
        TLS,
        "accepted suites of a weak class",
    ),
    def(
        "tls.tlcp",
        Bool,
        S,
        TLS,
        "completes a TLCP (GB/T 38636) ServerHello",
    ),
    def(
        "tls.sm_suites",
        List,
        S,
        TLS,
        "accepted SM suites (TLCP or RFC 8998)",
    ),
    def(
        "tls.tlcp_cert_problems",
        List,
        S,
        TLS,
        "TLCP certificate roles gone wrong (GB/T 38636): swapped, signing_certificate_cannot_sign, encryption_certificate_cannot_encrypt, ..._missing; unknown when not TLCP",
    ),
    def(
        "tls.tlcp_certs_trusted",
        Bool,
        S,
        TLS,
        "both TLCP certificates chain to a trusted root; unknown when not TLCP",
    ),
    def(
        "tls.tlcp_certs_self_signed",
        Bool,
        S,
        TLS,
        "a TLCP certificate is self-signed (then it cannot chain to a root); unknown when not TLCP",
    ),
    def("cert.subject", Str, S, TLS, "certificate subject"),
    def(
        "cert.days_left",
        Int,
        S,
        TLS,
        "days until notAfter (negative: expired)",
    ),
    def(
        "cert.self_signed",
        Bool,
        S,
        TLS,
        "issuer is the subject and the signature verifies",
    ),
    def(
        "cert.trusted",
        Bool,
        S,
        TLS,
        "chains to a system root or a configured CA",
    ),
    def(
        "cert.hostname_match",
        Bool,
        S,
        TLS,
        "matches a name the host is known by",
    ),
    def(
        "cert.key",
        Str,
        S,
        TLS,
        "key type and size, e.g. RSA-2048, SM2",
    ),
    def("cert.key_bits", Int, S, TLS, "key size in bits"),
    def("cert.signature", Str, S, TLS, "signature algorithm"),
    def("http.status", Int, S, HTTP, "status of GET /"),
    def("http.scheme", Str, S, HTTP, "http or https"),
    def("http.server", Str, S, HTTP, "Server header"),
    def(
        "http.hsts",
        Bool,
        S,
        HTTP,
        "Strict-Transport-Security sent over HTTPS",
    ),
    def(
        "http.redirects_to_https",
        Bool,
        S,
        HTTP,
        "plain HTTP redirects to HTTPS",
    ),
    def(
        "http.login_form",
        Bool,
        S,
        HTTP,
        "a form with a password field",
    ),
    def(
        "http.directory_listing",
        Bool,
        S,
        HTTP,
        "an index page listing files",
    ),
    def(
        "http.admin_paths",
        List,
        S,
        HTTP,
        "admin console paths that answered",
    ),
    // Segments.
    def("segment.name", Str, G, None, "segment name"),
    def("segment.network", Str, G, None, "network kind"),
    def(
        "segment.department",
        Str,
        G,
        None,
        "owner of a departmental segment",
    ),
    def(
        "segment.live_hosts",
        Int,
        G,
        TCP,
        "live hosts seen in this scan",
    ),
    def(
        "segment.consolidate_by",
        Str,
        G,
        None,
        "date by which it must be merged",
    ),
    def(
        "segment.consolidation_overdue",
        Bool,
        G,
        None,
        "consolidate_by has passed",
    ),
    // Approvals.
    def("approval.id", Str, A, None, "approval number"),
    def("approval.department", Str, A, None, "department"),
    def("approval.segment", Str, A, None, "segment"),
    def(
        "approval.valid",
        Bool,
        A,
        None,
        "approved and not expired today",
    ),
    def(
        "approval.days_silent",
        Int,
        A,
        TCP,
        "days since a covered address last answered (since approval when never)",
    ),
    def(
        "approval.unused",
        Bool,
        A,
        TCP,
        "valid, and silent for the configured number of days",
    ),
    // Projects.
    def("project.id", Str, P, None, "project id"),
    def("project.name", Str, P, None, "project name"),
    def("project.department", Str, P, None, "department"),
    def(
        "project.stage",
        Str,
        P,
        None,
        "planned | building | trial | accepted | in_use | retired",
    ),
    def(
        "project.accepted",
        Bool,
        P,
        None,
        "stage is accepted or in_use",
    ),
    def(
        "project.live",
        Bool,
        P,
        TCP,
        "an asset answered in this scan",
    ),
    def("project.live_assets", List, P, TCP, "assets that answered"),
    def(
        "project.mlps_level",
        Int,
        P,
        None,
        "classified-protection level",
    ),
    def(
        "project.mlps_required",
        Bool,
        P,
        None,
        "in use (or accepted) and so due an MLPS assessment",
    ),
    def(
        "project.mlps_assessed_on",
        Str,
        P,
        None,
        "last MLPS assessment date",
    ),
    def(
        "project.mlps_due",
        Str,
        P,
        None,
        "next MLPS assessment due date",
    ),
    def(
        "project.mlps_missing",
        Bool,
        P,
        None,
        "required and never assessed",
    ),
    def(
        "project.mlps_overdue",
        Bool,
        P,
        None,
        "assessed, but the next assessment is past due",
    ),
    def(
        "project.crypto_required",
        Bool,
        P,
        None,
        "in use at the configured MLPS level or above",
    ),
    def("project.crypto_assessed_on", Str, P, None, "last 密评 date"),
    def("project.crypto_due", Str, P, None, "next 密评 due date"),
    def(
        "project.crypto_missing",
        Bool,
        P,
        None,
        "required and never assessed",
    ),
    def(
        "project.crypto_overdue",
        Bool,
        P,
        None,
        "assessed, but the next assessment is past due",
    ),
    def(
        "project.sm_endpoints",
        Int,
        P,
        TLS,
        "asset endpoints offering TLCP or an RFC 8998 suite",
    ),
    def(
        "project.tls_endpoints",
        Int,
        P,
        TLS,
        "asset endpoints speaking TLS or TLCP",
    ),
];

/// The catalogue entry of `name`.
pub fn lookup(name: &str) -> Option<&'static FactDef> {
    CATALOGUE.iter().find(|d| d.name == name)
}

/// The facts of one subject. Facts never set read as [`Value::Null`].
#[derive(Debug, Clone, Default)]
pub struct Facts {
    values: HashMap<&'static str, Value>,
}

static NULL: Value = Value::Null;

impl Facts {
    pub fn new() -> Facts {
        Facts::default()
    }

    /// Set a fact. Panics in debug builds when `name` is not in the catalogue: a typo here
    /// would make a rule silently never fire.
    pub fn set(&mut self, name: &'static str, value: impl Into<Value>) {
        debug_assert!(
            lookup(name).is_some(),
            "fact {name} is not in the catalogue"
        );
        self.values.insert(name, value.into());
    }

    pub fn get(&self, name: &str) -> &Value {
        self.values.get(name).unwrap_or(&NULL)
    }

    /// Copy every fact of `other` into `self` (a service's facts over its host's).
    pub fn extend(&mut self, other: &Facts) {
        for (k, v) in &other.values {
            self.values.entry(k).or_insert_with(|| v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_are_unique_and_namespaced() {
        let mut seen = std::collections::HashSet::new();
        for d in CATALOGUE {
            assert!(seen.insert(d.name), "duplicate fact {}", d.name);
            assert!(d.name.contains('.'), "{} has no namespace", d.name);
        }
    }

    #[test]
    fn services_see_host_facts_only() {
        assert!(Subject::Service.sees(Subject::Host));
        assert!(!Subject::Host.sees(Subject::Service));
        assert!(!Subject::Project.sees(Subject::Host));
    }
}
