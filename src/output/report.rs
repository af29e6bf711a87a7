//! The scan report: the JSON document of CONTRACT.md §3 and a table for the terminal.
//!
//! Input: a scan's observations and the config (for register placement). Output: a
//! `serde_json::Value` (built through typed structs, so field names cannot drift) or text.
//! Times are shown in the organisation's timezone.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use unicode_width::UnicodeWidthStr;

use crate::config::{Config, NetworkKind};
use crate::observation::{RunState, ScanObservations};
use crate::reconcile;

#[derive(Debug, Serialize)]
pub struct Report {
    pub scan: ScanSection,
    pub hosts: Vec<HostEntry>,
    pub findings: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct ScanSection {
    pub id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub segments: Vec<String>,
    pub addresses: u64,
    pub probes: u64,
    /// Extension: `complete`, or `incomplete` when the scan was stopped early.
    pub state: RunState,
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
}

fn rfc3339(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// Build the report of one scan.
pub fn build(config: &Config, scan: &ScanObservations) -> Report {
    let tz = config.organisation.timezone;
    let today = scan.run.started_at.with_timezone(&tz).date_naive();
    let hosts = scan
        .hosts
        .iter()
        .map(|h| {
            let placement = reconcile::place(config, &h.segment, h.ip, h.ptr.as_deref(), today);
            HostEntry {
                ip: h.ip.to_string(),
                segment: h.segment.clone(),
                network: h.network,
                department: placement.department,
                alive: !h.alive_by.is_empty(),
                ptr: h.ptr.clone(),
                approvals: placement.approvals,
                projects: placement.projects,
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
                        tls: None,
                        http: None,
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
        },
        hosts,
        findings: Vec::new(),
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

/// The report as a table for a terminal, grouped by segment in config order.
pub fn table(config: &Config, report: &Report) -> String {
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
            pad("DEPT", 10),
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
                    pad(&clip(dept, 10), 10),
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
                    (name.as_str(), clip(dept, 10), clip(&approval, 14))
                } else {
                    ("", String::new(), String::new())
                };
                let _ = writeln!(
                    out,
                    "  {} {} {} {} {}",
                    pad(n, 16),
                    pad(&d, 10),
                    pad(&a, 14),
                    pad(&svc.port.to_string(), 6),
                    what
                );
            }
        }
    }
    out
}
