//! Reconciliation: holds what a scan saw against the bureau's registers and computes the
//! [`Facts`] the rules test.
//!
//! Pure and synchronous: inputs are the validated [`Config`], the scan's observations, what the
//! store remembers ([`History`]) and the date; output is one [`SubjectFacts`] per host, service,
//! scanned segment, approval of a scanned segment and project: its [`Locus`] (what a finding
//! about it is about, the one type the lifecycle and the waivers use too) and its facts. No
//! I/O, no clock.
//!
//! Placement ([`place`], the one computation of it): a host's department is its segment's owner
//! when the segment is departmental, else the department of an approval or project that covers
//! it. The scan places each live host once, when its PTR name is known, and the placement
//! travels on its observation; reconciliation reads it and never places a host again. An approval is valid on a day from
//! `approved_on` through `expires_on` (inclusive); a host is approved when a valid approval
//! covers its address, and a service when that approval also lists its port (or lists none).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use chrono::{Months, NaiveDate};

use crate::config::{Approval, Asset, Config, NetworkKind, Project, ProjectStage};
use crate::facts::{Facts, Locus, Subject};
use crate::observation::{HostObservation, ScanObservations};
use crate::probe::tls::{TlsFacts, TlsVersion};

/// Where a host stands in the registers, computed once per host per scan (by the scan, as soon
/// as its PTR name is known) and carried on its observation to the TLS and HTTP stages (SNI and
/// Host names), the checkpoint writer, reconciliation, the report and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub segment: String,
    pub network: NetworkKind,
    pub department: Option<String>,
    /// Approvals whose addresses cover the host (valid or not), in register order.
    pub approvals: Vec<String>,
    /// Projects that list the host among their assets (by address, or by its PTR name).
    pub projects: Vec<String>,
    /// The names the host goes by: the host names of projects that list it, then its PTR. The
    /// TLS and HTTP probes send the first as SNI / Host; certificates are matched against all.
    pub names: Vec<String>,
}

impl Placement {
    /// A host in `segment` that no approval or project covers and that has no name (as for
    /// observations made by hand, before [`place`] ran).
    pub fn bare(segment: &str, network: NetworkKind) -> Placement {
        Placement {
            segment: segment.to_string(),
            network,
            department: None,
            approvals: Vec::new(),
            projects: Vec::new(),
            names: Vec::new(),
        }
    }
}

/// What the store remembers that reconciliation needs: the last day each address answered
/// before this scan.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub last_seen: HashMap<IpAddr, NaiveDate>,
}

/// One thing a rule can be evaluated against: its locus (what identifies it in a finding) and
/// its facts.
#[derive(Debug, Clone)]
pub struct SubjectFacts {
    pub locus: Locus,
    pub facts: Facts,
}

impl SubjectFacts {
    fn new(subject: Subject) -> SubjectFacts {
        SubjectFacts {
            locus: Locus::of(subject),
            facts: Facts::new(),
        }
    }
}

/// Whether `approval` is in force on `today`.
pub fn approval_valid(approval: &Approval, today: NaiveDate) -> bool {
    approval.approved_on <= today && approval.expires_on.is_none_or(|end| today <= end)
}

/// Approvals whose addresses cover `ip` within `segment`.
pub fn approvals_for<'a>(
    config: &'a Config,
    segment: &'a str,
    ip: IpAddr,
) -> impl Iterator<Item = &'a Approval> + 'a {
    config
        .approvals
        .iter()
        .filter(move |a| a.segment == segment && a.addresses.iter().any(|n| n.contains(&ip)))
}

/// Projects that list `ip` among their assets (by address, or by its PTR name `ptr`).
pub fn projects_for<'a>(
    config: &'a Config,
    ip: IpAddr,
    ptr: Option<&'a str>,
) -> impl Iterator<Item = &'a Project> + 'a {
    config.projects.iter().filter(move |p| {
        p.assets.iter().any(|asset| match asset {
            Asset::Address(net) => net.contains(&ip),
            Asset::Name(name) => ptr.is_some_and(|ptr| ptr.eq_ignore_ascii_case(name)),
        })
    })
}

/// Place one host of `segment` (a `network` segment) in the registers: the one computation of
/// a host's placement. `ptr` is its reverse DNS name, when known.
pub fn place(
    config: &Config,
    segment: &str,
    network: NetworkKind,
    ip: IpAddr,
    ptr: Option<&str>,
) -> Placement {
    let approvals: Vec<&Approval> = approvals_for(config, segment, ip).collect();
    let projects: Vec<&Project> = projects_for(config, ip, ptr).collect();
    let department = config
        .segment(segment)
        .and_then(|s| s.department.clone())
        .or_else(|| approvals.first().map(|a| a.department.clone()))
        .or_else(|| projects.first().map(|p| p.department.clone()));
    let mut names: Vec<String> = projects
        .iter()
        .flat_map(|p| &p.assets)
        .filter_map(|a| match a {
            Asset::Name(n) => Some(n.clone()),
            Asset::Address(_) => None,
        })
        .collect();
    names.extend(ptr.map(str::to_string));
    names.dedup();
    Placement {
        segment: segment.to_string(),
        network,
        department,
        approvals: approvals.iter().map(|a| a.id.clone()).collect(),
        projects: projects.iter().map(|p| p.id.clone()).collect(),
        names,
    }
}

/// Every subject of one scan, with its facts.
pub fn subjects(
    config: &Config,
    scan: &ScanObservations,
    history: &History,
    today: NaiveDate,
) -> Vec<SubjectFacts> {
    let mut out = Vec::new();
    for host in &scan.hosts {
        host_subjects(config, host, today, &mut out);
    }
    let scanned: BTreeSet<&str> = scan.run.segments.iter().map(String::as_str).collect();
    for segment in config
        .segments
        .iter()
        .filter(|s| scanned.contains(s.name.as_str()))
    {
        let mut s = SubjectFacts::new(Subject::Segment);
        s.locus.segment = Some(segment.name.clone());
        s.locus.department = segment.department.clone();
        let f = &mut s.facts;
        f.set("segment.name", segment.name.as_str());
        f.set("segment.network", segment.network.as_str());
        f.set("segment.department", segment.department.clone());
        let live = scan
            .hosts
            .iter()
            .filter(|h| h.segment == segment.name)
            .count();
        f.set("segment.live_hosts", live as i64);
        f.set(
            "segment.consolidate_by",
            segment.consolidate_by.map(|d| d.to_string()),
        );
        f.set(
            "segment.consolidation_overdue",
            segment.consolidate_by.is_some_and(|d| d < today),
        );
        out.push(s);
    }
    let seen_now: BTreeSet<IpAddr> = scan.hosts.iter().map(|h| h.ip).collect();
    for approval in config
        .approvals
        .iter()
        .filter(|a| scanned.contains(a.segment.as_str()))
    {
        let mut s = SubjectFacts::new(Subject::Approval);
        s.locus.segment = Some(approval.segment.clone());
        s.locus.department = Some(approval.department.clone());
        s.locus.approval = Some(approval.id.clone());
        let covers = |ip: &IpAddr| approval.addresses.iter().any(|n| n.contains(ip));
        let last_seen = if seen_now.iter().any(covers) {
            Some(today)
        } else {
            history
                .last_seen
                .iter()
                .filter(|(ip, _)| covers(ip))
                .map(|(_, d)| *d)
                .max()
        };
        let silent_since = last_seen.unwrap_or(approval.approved_on);
        let days_silent = (today - silent_since).num_days().max(0);
        let valid = approval_valid(approval, today);
        let f = &mut s.facts;
        f.set("approval.id", approval.id.as_str());
        f.set("approval.department", approval.department.as_str());
        f.set("approval.segment", approval.segment.as_str());
        f.set("approval.valid", valid);
        f.set("approval.days_silent", days_silent);
        f.set(
            "approval.unused",
            valid && days_silent >= i64::from(config.compliance.approval_unused_days),
        );
        out.push(s);
    }
    for project in &config.projects {
        out.push(project_subject(config, project, scan, today));
    }
    out
}

fn host_subjects(
    config: &Config,
    host: &HostObservation,
    today: NaiveDate,
    out: &mut Vec<SubjectFacts>,
) {
    let placement = &host.placement;
    let covering: Vec<&Approval> = config
        .approvals
        .iter()
        .filter(|a| placement.approvals.contains(&a.id))
        .collect();
    let valid: Vec<&Approval> = covering
        .iter()
        .copied()
        .filter(|a| approval_valid(a, today))
        .collect();
    let expired_only = !covering.is_empty()
        && valid.is_empty()
        && covering
            .iter()
            .any(|a| a.expires_on.is_some_and(|end| end < today));

    let mut h = SubjectFacts::new(Subject::Host);
    h.locus.ip = Some(host.ip);
    h.locus.segment = Some(host.segment.clone());
    h.locus.department = placement.department.clone();
    h.locus.project = placement.projects.first().cloned();
    h.locus.projects = placement.projects.clone();
    h.locus.approval = valid.first().or(covering.first()).map(|a| a.id.clone());
    let f = &mut h.facts;
    f.set("host.ip", host.ip.to_string());
    f.set("host.segment", host.segment.as_str());
    f.set("host.network", host.network.as_str());
    f.set("host.department", placement.department.clone());
    f.set("host.ptr", host.ptr.clone());
    f.set("host.approvals", placement.approvals.clone());
    f.set("host.approved", !valid.is_empty());
    f.set("host.approval_expired", expired_only);
    f.set("host.projects", placement.projects.clone());
    f.set(
        "host.services",
        host.services
            .iter()
            .map(|s| s.service.clone())
            .collect::<Vec<_>>(),
    );

    let names_known = !placement.names.is_empty();
    for service in &host.services {
        let mut s = h.clone();
        s.locus.subject = Subject::Service;
        s.locus.port = Some(service.port);
        let approving = valid
            .iter()
            .find(|a| a.ports.as_ref().is_none_or(|p| p.contains(&service.port)));
        if let Some(a) = approving {
            s.locus.approval = Some(a.id.clone());
        }
        let f = &mut s.facts;
        f.set("service.port", i64::from(service.port));
        f.set("service.name", service.service.as_str());
        f.set("service.product", service.product.clone());
        f.set("service.version", service.version.clone());
        f.set("service.banner", service.banner.clone());
        let description: Vec<&str> = [
            Some(service.service.as_str()),
            service.product.as_deref(),
            service.version.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        f.set("service.description", description.join(" "));
        f.set("service.approved", approving.is_some());
        if let Some(tls) = &service.tls {
            tls_facts(f, tls.as_ref(), names_known);
        }
        f.set("service.unauthenticated", service.unauthenticated);
        if let Some(http) = &service.http {
            f.set("http.status", i64::from(http.status));
            f.set("http.scheme", http.scheme.as_str());
            f.set("http.server", http.server.clone());
            f.set("http.hsts", http.hsts);
            f.set("http.redirects_to_https", http.redirects_to_https);
            f.set("http.login_form", http.login_form);
            f.set("http.directory_listing", http.directory_listing);
            f.set("http.admin_paths", http.admin_paths.clone());
        }
        out.push(s);
    }
    out.push(h);
}

/// TLS facts of a service. `names_known`: the host goes by some name (PTR, project asset
/// name); without one, whether the certificate matches "the host name" cannot be judged and
/// `cert.hostname_match` stays unknown (as the probe's `hostname_match: null` says, unless the
/// certificate covers the address itself).
fn tls_facts(f: &mut Facts, tls: Option<&TlsFacts>, names_known: bool) {
    f.set("tls.enabled", tls.is_some());
    let Some(tls) = tls else { return };
    let names = |keep: fn(&TlsVersion) -> bool| -> Vec<String> {
        tls.versions
            .iter()
            .filter(|v| keep(v))
            .map(|v| v.to_string())
            .collect()
    };
    f.set("tls.versions", names(|_| true));
    f.set("tls.legacy_versions", names(|v| v.legacy()));
    f.set("tls.weak_ciphers", tls.weak_ciphers.clone());
    f.set("tls.tlcp", tls.tlcp);
    f.set("tls.sm_suites", tls.sm_suites.clone());
    if tls.tlcp {
        f.set("tls.tlcp_cert_problems", tls.tlcp_cert_problems.clone());
        f.set(
            "tls.tlcp_certs_trusted",
            tls.tlcp_certs.len() >= 2 && tls.tlcp_certs.iter().all(|c| c.trusted),
        );
        f.set(
            "tls.tlcp_certs_self_signed",
            tls.tlcp_certs.iter().any(|c| c.self_signed),
        );
    }
    if let Some(cert) = tls.cert.as_ref().or(tls.tlcp_certs.first()) {
        f.set("cert.subject", cert.subject.as_str());
        f.set("cert.days_left", cert.days_left);
        f.set("cert.self_signed", cert.self_signed);
        f.set("cert.trusted", cert.trusted);
        if let Some(m) = cert.hostname_match
            && (names_known || m)
        {
            f.set("cert.hostname_match", m);
        }
        f.set("cert.key", cert.key.as_str());
        f.set("cert.key_bits", i64::from(cert.key_bits));
        f.set("cert.signature", cert.signature.as_str());
    }
}

fn add_months(date: NaiveDate, months: u32) -> NaiveDate {
    date.checked_add_months(Months::new(months))
        .unwrap_or(NaiveDate::MAX)
}

/// When a project's next assessments fall due, from its last ones and the intervals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssessmentDue {
    /// MLPS: `assessed_on` + the interval of its level; `None` unassessed or without interval.
    pub mlps: Option<NaiveDate>,
    /// 密评: `assessed_on` + `crypto_interval_months`; `None` when never assessed.
    pub crypto: Option<NaiveDate>,
}

/// The next MLPS and 密评 due dates of `project` (shared by the rules' facts and the metrics).
pub fn assessment_due(
    compliance: &crate::config::ComplianceSettings,
    project: &crate::config::Project,
) -> AssessmentDue {
    let mlps = project.mlps.as_ref().and_then(|m| {
        Some(add_months(
            m.assessed_on?,
            compliance.mlps_interval(m.level)?,
        ))
    });
    let crypto = project
        .crypto
        .as_ref()
        .and_then(|c| c.assessed_on)
        .map(|on| add_months(on, compliance.crypto_interval_months));
    AssessmentDue { mlps, crypto }
}

fn project_subject(
    config: &Config,
    project: &crate::config::Project,
    scan: &ScanObservations,
    today: NaiveDate,
) -> SubjectFacts {
    let compliance = &config.compliance;
    let mut s = SubjectFacts::new(Subject::Project);
    s.locus.department = Some(project.department.clone());
    s.locus.project = Some(project.id.clone());
    s.locus.projects = vec![project.id.clone()];
    let assets: Vec<&HostObservation> = scan
        .hosts
        .iter()
        .filter(|h| h.placement.projects.contains(&project.id))
        .collect();
    let live_assets: Vec<String> = assets.iter().map(|h| h.ip.to_string()).collect();
    let tls_endpoints: Vec<&TlsFacts> = assets
        .iter()
        .flat_map(|h| &h.services)
        .filter_map(|s| s.tls.as_ref().and_then(Option::as_ref))
        .collect();
    let sm_endpoints = tls_endpoints
        .iter()
        .filter(|t| t.tlcp || !t.sm_suites.is_empty())
        .count();
    let tls_probed = scan.run.probe_kinds.contains(&crate::probe::ProbeKind::Tls);
    let accepted = matches!(project.stage, ProjectStage::Accepted | ProjectStage::InUse);
    let level = project.mlps.as_ref().map(|m| m.level);
    let mlps_on = project.mlps.as_ref().and_then(|m| m.assessed_on);
    let AssessmentDue {
        mlps: mlps_due,
        crypto: crypto_due,
    } = assessment_due(compliance, project);
    let crypto_required = accepted && level.is_some_and(|l| l >= compliance.crypto_min_level);
    let crypto_on = project.crypto.as_ref().and_then(|c| c.assessed_on);

    let f = &mut s.facts;
    f.set("project.id", project.id.as_str());
    f.set("project.name", project.name.as_str());
    f.set("project.department", project.department.as_str());
    f.set("project.stage", stage_str(project.stage));
    f.set("project.accepted", accepted);
    f.set("project.live", !live_assets.is_empty());
    f.set("project.live_assets", live_assets);
    if tls_probed {
        f.set("project.tls_endpoints", tls_endpoints.len() as i64);
        f.set("project.sm_endpoints", sm_endpoints as i64);
    }
    f.set("project.mlps_level", level.map(i64::from));
    f.set("project.mlps_required", accepted);
    f.set("project.mlps_assessed_on", mlps_on.map(|d| d.to_string()));
    f.set("project.mlps_due", mlps_due.map(|d| d.to_string()));
    f.set("project.mlps_missing", accepted && mlps_on.is_none());
    f.set(
        "project.mlps_overdue",
        accepted && mlps_due.is_some_and(|d| d < today),
    );
    f.set("project.crypto_required", crypto_required);
    f.set(
        "project.crypto_assessed_on",
        crypto_on.map(|d| d.to_string()),
    );
    f.set("project.crypto_due", crypto_due.map(|d| d.to_string()));
    f.set(
        "project.crypto_missing",
        crypto_required && crypto_on.is_none(),
    );
    f.set(
        "project.crypto_overdue",
        crypto_required && crypto_due.is_some_and(|d| d < today),
    );
    s
}

/// The register's spelling of a project stage.
pub fn stage_str(stage: ProjectStage) -> &'static str {
    match stage {
        ProjectStage::Planned => "planned",
        ProjectStage::Building => "building",
        ProjectStage::Trial => "trial",
        ProjectStage::Accepted => "accepted",
        ProjectStage::InUse => "in_use",
        ProjectStage::Retired => "retired",
    }
}
