//! The scan report: the JSON document of docs/report.md and a table for the terminal.
//!
//! Input: a scan's observations and the config (for register placement). Output: a
//! `serde_json::Value` (built through typed structs, so field names cannot drift) or text.
//! Times are shown in the organisation's timezone.

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use unicode_width::UnicodeWidthStr;

use crate::config::{Config, NetworkKind};
use crate::finding::{self, Finding};
use crate::observation::{ProbeFailure, RunState, ScanObservations};
use crate::probe::Coverage;
use crate::rules::Severity;

#[derive(Debug, Serialize)]
pub struct Report {
    pub scan: ScanSection,
    pub hosts: Vec<HostEntry>,
    pub findings: Vec<FindingEntry>,
}

/// A finding as the report shows it. Texts in Chinese (the default language), with the English
/// beside them as extensions.
#[derive(Debug, Serialize)]
pub struct FindingEntry {
    pub rule: String,
    pub severity: Severity,
    pub ip: Option<String>,
    pub port: Option<u16>,
    pub department: Option<String>,
    pub project: Option<String>,
    pub title: String,
    pub evidence: String,
    pub basis: Vec<String>,
    pub first_seen: String,
    pub due: String,
    /// Extensions.
    pub title_en: String,
    pub evidence_en: String,
    pub segment: Option<String>,
    pub approval: Option<String>,
    /// `open`, or `waived` while an unexpired exception covers it.
    pub state: &'static str,
    pub waiver: Option<WaiverEntry>,
    pub overdue: bool,
    pub fingerprint: String,
}

#[derive(Debug, Serialize)]
pub struct WaiverEntry {
    pub reason: String,
    pub approver: String,
    pub expires_on: String,
}

#[derive(Debug, Serialize)]
pub struct ScanSection {
    pub id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub segments: Vec<String>,
    pub addresses: u64,
    pub probes: u64,
    /// `complete`; `degraded` when probes failed locally past the threshold or not all were
    /// attempted (it opens findings, resolves none); `incomplete` when stopped early.
    pub state: RunState,
    /// Probes planned, answered, failed remotely and failed locally.
    pub coverage: Coverage,
}

#[derive(Debug, Serialize)]
pub struct HostEntry {
    pub ip: String,
    pub segment: String,
    pub network: NetworkKind,
    pub department: Option<String>,
    pub alive: bool,
    pub ptr: Option<String>,
    pub approvals: Vec<String>,
    pub projects: Vec<String>,
    pub services: Vec<ServiceEntry>,
}

#[derive(Debug, Serialize)]
pub struct ServiceEntry {
    pub port: u16,
    pub protocol: &'static str,
    pub service: String,
    pub banner: Option<String>,
    /// Extension: product and version, when the service names them.
    pub product: Option<String>,
    pub version: Option<String>,
    /// Filled by the TLS probe.
    pub tls: Option<serde_json::Value>,
    /// Filled by the HTTP probe.
    pub http: Option<serde_json::Value>,
    /// Probes that failed on this port: probe kind and bounded reason.
    pub failures: Vec<ProbeFailure>,
}

fn rfc3339(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// Build the report of one scan: its hosts, and `findings` (the open ones it saw).
pub fn build(
    config: &Config,
    scan: &ScanObservations,
    findings: &[Finding],
    today: NaiveDate,
) -> Report {
    let tz = config.organisation.timezone;
    let findings = findings
        .iter()
        .map(|f| {
            let waiver = finding::waiver_for(config, f, today);
            FindingEntry {
                rule: f.rule.clone(),
                severity: f.severity,
                ip: f.ip.clone(),
                port: f.port,
                department: f.department.clone(),
                project: f.project.clone(),
                title: f.title.zh.clone(),
                evidence: f.evidence.zh.clone(),
                basis: f.basis.clone(),
                first_seen: rfc3339(f.first_seen, tz),
                due: f.due.to_string(),
                title_en: f.title.en.clone(),
                evidence_en: f.evidence.en.clone(),
                segment: f.segment.clone(),
                approval: f.approval.clone(),
                state: if waiver.is_some() { "waived" } else { "open" },
                waiver: waiver.map(|w| WaiverEntry {
                    reason: w.reason.clone(),
                    approver: w.approver.clone(),
                    expires_on: w.expires_on.to_string(),
                }),
                overdue: f.due < today,
                fingerprint: f.fingerprint.clone(),
            }
        })
        .collect();
    let hosts = scan
        .hosts
        .iter()
        .map(|h| {
            let placement = &h.placement;
            HostEntry {
                ip: h.ip.to_string(),
                segment: h.segment.clone(),
                network: h.network,
                department: placement.department.clone(),
                alive: !h.alive_by.is_empty(),
                ptr: h.ptr.clone(),
                approvals: placement.approvals.clone(),
                projects: placement.projects.clone(),
                services: h
                    .services
                    .iter()
                    .map(|s| ServiceEntry {
                        port: s.port,
                        protocol: s.protocol,
                        service: s.service.clone(),
                        banner: s.banner.clone(),
                        product: s.product.clone(),
                        version: s.version.clone(),
                        tls: s
                            .tls
                            .as_ref()
                            .and_then(|t| t.as_ref())
                            .and_then(|t| serde_json::to_value(t).ok()),
                        http: s.http.as_ref().and_then(|h| serde_json::to_value(h).ok()),
                        failures: s.failures.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    Report {
        scan: ScanSection {
            id: scan.run.id.clone(),
            started_at: rfc3339(scan.run.started_at, tz),
            finished_at: scan.run.finished_at.map(|t| rfc3339(t, tz)),
            segments: scan.run.segments.clone(),
            addresses: scan.run.addresses,
            probes: scan.run.probes,
            state: scan.run.state,
            coverage: scan.run.coverage,
        },
        hosts,
        findings,
    }
}

/// Pad `s` with spaces to `width` terminal columns (CJK characters count two).
fn pad(s: &str, width: usize) -> String {
    let w = UnicodeWidthStr::width(s);
    format!("{s}{}", " ".repeat(width.saturating_sub(w)))
}

/// Cut `s` to at most `max` terminal columns, marking the cut with `…`.
fn clip(s: &str, max: usize) -> String {
    if UnicodeWidthStr::width(s) <= max {
        return s.to_string();
    }
    let mut out = String::new();
    for c in s.chars() {
        if UnicodeWidthStr::width(out.as_str())
            + unicode_width::UnicodeWidthChar::width(c).unwrap_or(0)
            + 1
            > max
        {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// ANSI colour of a severity on a terminal.
fn colour(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "\x1b[1;37;41m",
        Severity::High => "\x1b[1;31m",
        Severity::Medium => "\x1b[33m",
        Severity::Low => "\x1b[36m",
        Severity::Info => "\x1b[2m",
    }
}

/// The findings of a report as a table grouped by department, most severe first; `colour`
/// adds ANSI severity colours (for a terminal).
pub fn findings_table(config: &Config, report: &Report, colours: bool) -> String {
    let mut out = String::new();
    let open = report
        .findings
        .iter()
        .filter(|f| f.waiver.is_none())
        .count();
    let _ = writeln!(
        out,
        "\n问题 findings: {} open, {} waived",
        open,
        report.findings.len() - open
    );
    let mut departments: Vec<Option<&str>> = report
        .findings
        .iter()
        .map(|f| f.department.as_deref())
        .collect();
    departments.sort();
    departments.dedup();
    for dept in departments {
        let name = dept
            .map(|d| config.department(d).map_or(d, |x| x.name.as_str()))
            .unwrap_or("未归属 (no department)");
        let items: Vec<&FindingEntry> = report
            .findings
            .iter()
            .filter(|f| f.department.as_deref() == dept)
            .collect();
        let _ = writeln!(out, "\n== {name}: {} findings", items.len());
        for f in items {
            let sev = pad(f.severity.as_str(), 8);
            let sev = if colours {
                format!("{}{sev}\x1b[0m", colour(f.severity))
            } else {
                sev
            };
            let at = match (&f.ip, f.port) {
                (Some(ip), Some(port)) => format!("{ip}:{port}"),
                (Some(ip), None) => ip.clone(),
                (None, _) => f
                    .approval
                    .clone()
                    .or_else(|| f.project.clone())
                    .or_else(|| f.segment.clone())
                    .unwrap_or_default(),
            };
            let state = match &f.waiver {
                Some(w) => format!(" [已豁免 waived by {} until {}]", w.approver, w.expires_on),
                None if f.overdue => " [逾期 overdue]".to_string(),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {sev} {} {} {}  整改期限 due {}{state}",
                pad(&f.rule, 32),
                pad(&clip(&at, 21), 21),
                f.title,
                f.due
            );
            let _ = writeln!(
                out,
                "  {} {}",
                " ".repeat(8 + 32 + 21 + 2),
                clip(&f.evidence, 80)
            );
        }
    }
    out
}

/// The report as a table for a terminal: hosts grouped by segment in config order, then the
/// findings grouped by department (`colours`: ANSI severity colours).
pub fn table(config: &Config, report: &Report, colours: bool) -> String {
    let mut out = String::new();
    let s = &report.scan;
    let services: usize = report.hosts.iter().map(|h| h.services.len()).sum();
    let _ = writeln!(
        out,
        "扫描 scan {}  {} → {}  [{}]",
        s.id,
        s.started_at,
        s.finished_at.as_deref().unwrap_or("-"),
        match s.state {
            RunState::Complete => "complete",
            RunState::Incomplete => "INCOMPLETE",
            RunState::Degraded => "DEGRADED",
            RunState::Running => "running",
        }
    );
    let _ = writeln!(
        out,
        "{} addresses, {} probes: {} live hosts, {} open services",
        s.addresses,
        s.probes,
        report.hosts.len(),
        services
    );
    let c = &s.coverage;
    let _ = writeln!(
        out,
        "覆盖 coverage: {} planned, {} answered, {} failed remotely, {} failed locally ({:.1}%)",
        c.planned,
        c.answered,
        c.failed_remote,
        c.failed_local,
        c.ratio() * 100.0
    );
    if s.state == RunState::Degraded {
        let _ = writeln!(
            out,
            "注意：本次扫描降级（本机故障致部分探测失败或未执行），只新增问题，不关闭问题。\
             DEGRADED: probes failed on this machine or were not attempted; its findings open, \
             none is resolved"
        );
    }
    for segment in &s.segments {
        let hosts: Vec<&HostEntry> = report
            .hosts
            .iter()
            .filter(|h| &h.segment == segment)
            .collect();
        let network = config
            .segment(segment)
            .map(|seg| seg.network.as_str())
            .unwrap_or("?");
        let n_services: usize = hosts.iter().map(|h| h.services.len()).sum();
        let _ = writeln!(
            out,
            "\n== {segment} ({network}): {} hosts, {} services",
            hosts.len(),
            n_services
        );
        if hosts.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "  {} {} {} {} SERVICE / BANNER",
            pad("ADDRESS", 16),
            pad("DEPT", 14),
            pad("APPROVAL", 14),
            pad("PORT", 6),
        );
        for h in hosts {
            let dept = h
                .department
                .as_deref()
                .and_then(|d| config.department(d).map(|x| x.name.as_str()).or(Some(d)))
                .unwrap_or("-");
            let approval = if h.approvals.is_empty() {
                "未审批".to_string()
            } else {
                h.approvals.join(",")
            };
            let name = match &h.ptr {
                Some(ptr) => format!("{} ({ptr})", h.ip),
                None => h.ip.clone(),
            };
            if h.services.is_empty() {
                let _ = writeln!(
                    out,
                    "  {} {} {} {} (no open port)",
                    pad(&name, 16),
                    pad(&clip(dept, 14), 14),
                    pad(&clip(&approval, 14), 14),
                    pad("-", 6)
                );
            }
            for (i, svc) in h.services.iter().enumerate() {
                let what = match (&svc.product, &svc.version, &svc.banner) {
                    (Some(p), Some(v), _) => format!("{} {p} {v}", svc.service),
                    (Some(p), None, _) => format!("{} {p}", svc.service),
                    (None, _, Some(b)) => format!("{} \"{}\"", svc.service, clip(b, 40)),
                    _ => svc.service.clone(),
                };
                let (n, d, a) = if i == 0 {
                    (name.as_str(), clip(dept, 14), clip(&approval, 14))
                } else {
                    ("", String::new(), String::new())
                };
                let _ = writeln!(
                    out,
                    "  {} {} {} {} {}",
                    pad(n, 16),
                    pad(&d, 14),
                    pad(&a, 14),
                    pad(&svc.port.to_string(), 6),
                    what
                );
            }
        }
    }
    out.push_str(&findings_table(config, report, colours));
    out
}
