//! Validation: raw structs in, domain types of `model` out.
//!
//! A pure function (no I/O): every check runs and every problem is collected, each pointing at
//! the offending value (file:line:col in YAML, file:row plus column name in CSV). References
//! into a register whose file could not be read are not checked, to avoid cascades.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;
use ipnet::IpNet;

use serde_saphyr::Spanned;

use super::Problem;
use super::model::*;
use super::ports;
use super::raw::{self, ConfigFile, Text};
use super::registers::{Loaded, Origin, Registers};
use crate::scope::MAX_ENUMERATED;
use crate::severity::Severity;

/// Bound of every millisecond setting: a minute.
const MAX_MILLIS: u64 = 60_000;

const NETWORKS: &str = "extranet, metro, departmental, internet, other";
const STAGES: &str = "planned, building, trial, accepted, in_use, retired";

/// Turns the raw config and its registers into a [`Config`], or every problem found.
pub fn validate(
    file: ConfigFile,
    regs: Registers,
    path: &Path,
    base: &Path,
) -> Result<Config, Vec<Problem>> {
    let mut v = Validator {
        config: Origin {
            file: path.to_path_buf(),
            csv_row: None,
        },
        problems: Vec::new(),
    };
    let organisation = v.organisation(file.organisation);
    let store = v.store(file.store, base);
    let trust = TrustSettings {
        ca_files: file
            .trust
            .map(|t| t.ca_files.iter().map(|f| resolve(base, &f.value)).collect())
            .unwrap_or_default(),
    };
    let scan = v.scan(file.scan);
    let departments = v.departments(&regs.departments);
    let department_ids = regs
        .departments
        .complete
        .then(|| departments.iter().map(|d| d.id.clone()).collect::<Vec<_>>());
    let segments = match &regs.segments {
        Some(segments) => v.segments(segments, department_ids.as_deref()),
        None => {
            v.problems
                .push(Problem::new(path, "missing required key `segments`"));
            Vec::new()
        }
    };
    let segments_known = regs.segments.as_ref().is_some_and(|s| s.complete);
    let segment_map: Option<HashMap<&str, &Segment>> = segments_known.then(|| {
        segments
            .iter()
            .rev()
            .map(|s| (s.name.as_str(), s))
            .collect()
    });
    let approvals = v.approvals(
        &regs.approvals,
        department_ids.as_deref(),
        segment_map.as_ref(),
    );
    let projects = v.projects(&regs.projects, department_ids.as_deref());
    let tz = organisation.timezone;
    let daemon = v.daemon(file.daemon, segment_map.as_ref(), tz);
    let bulletin = v.bulletin(file.bulletin, base, tz);
    let smtp = file.smtp.map(|s| v.smtp(s));
    let rules = v.rules(file.rules, base);
    let compliance = v.compliance(file.compliance);
    let project_ids = regs
        .projects
        .complete
        .then(|| projects.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
    let exceptions = v.exceptions(
        &regs.exceptions,
        department_ids.as_deref(),
        segment_map.as_ref(),
        project_ids.as_deref(),
    );

    let sensors = v.sensors(&file.sensors, segment_map.as_ref());
    let hub = file.hub.map(|h| v.hub(h, base));

    if !v.problems.is_empty() {
        return Err(v.problems);
    }
    Ok(Config {
        source: path.to_path_buf(),
        organisation,
        store,
        trust,
        scan,
        departments,
        segments,
        approvals,
        projects,
        daemon,
        bulletin,
        smtp,
        rules,
        compliance,
        exceptions,
        sensors,
        hub,
    })
}

/// `path` as written if absolute, else relative to the config's folder.
fn resolve(base: &Path, path: &str) -> PathBuf {
    base.join(path)
}

struct Validator {
    /// Origin of values written in the config file itself.
    config: Origin,
    problems: Vec<Problem>,
}

/// Where an item was first seen, for duplicate messages.
fn line_of(origin: &Origin, value: &Text) -> u64 {
    origin.csv_row.unwrap_or_else(|| value.referenced.line())
}

impl Validator {
    fn push(&mut self, origin: &Origin, value: &Text, key: &str, message: impl Into<String>) {
        self.problems.push(origin.at(value, key, message));
    }

    /// Problem at a value written in the config file itself.
    fn here(&mut self, value: &Text, message: impl Into<String>) {
        let origin = self.config.clone();
        self.push(&origin, value, "", message);
    }

    fn date(&mut self, origin: &Origin, value: &Text, key: &str) -> Option<NaiveDate> {
        match NaiveDate::parse_from_str(value.value.trim(), "%Y-%m-%d") {
            Ok(date) => Some(date),
            Err(_) => {
                let message = format!("invalid date `{}`: expected YYYY-MM-DD", value.value);
                self.push(origin, value, key, message);
                None
            }
        }
    }

    /// A segment's cidr: a network, not every address (`/0`), and small enough to enumerate.
    fn cidr(&mut self, origin: &Origin, value: &Text) -> Option<IpNet> {
        let net = self.net(origin, value, "cidrs", "cidr")?;
        if net.prefix_len() == 0 {
            let message = format!(
                "cidr `{}` is every address: name the networks to scan",
                value.value
            );
            self.push(origin, value, "cidrs", message);
            return None;
        }
        let size = net_size(&net);
        if size > MAX_ENUMERATED {
            let message = format!(
                "cidr `{}` has {size} addresses, more than the {MAX_ENUMERATED} netpatrol enumerates",
                value.value
            );
            self.push(origin, value, "cidrs", message);
            return None;
        }
        Some(net)
    }

    fn net(&mut self, origin: &Origin, value: &Text, key: &str, what: &str) -> Option<IpNet> {
        match parse_net(&value.value) {
            Some(net) => Some(net),
            None => {
                let message = format!("invalid {what} `{}`", value.value);
                self.push(origin, value, key, message);
                None
            }
        }
    }

    /// Checks a reference into a register; `known` is `None` when that register is incomplete.
    fn reference(
        &mut self,
        origin: &Origin,
        value: &Text,
        key: &str,
        what: &str,
        known: Option<&[String]>,
    ) {
        if let Some(known) = known
            && !known.contains(&value.value)
        {
            let message = format!("unknown {what} `{}`", value.value);
            self.push(origin, value, key, message);
        }
    }

    /// Reports a duplicate id; returns false for duplicates.
    fn unique<'a>(
        &mut self,
        seen: &mut HashMap<&'a str, u64>,
        origin: &Origin,
        id: &'a Text,
        key: &str,
        what: &str,
    ) -> bool {
        if let Some(first) = seen.get(id.value.as_str()) {
            let message = format!("duplicate {what} `{}` (first at line {first})", id.value);
            self.push(origin, id, key, message);
            return false;
        }
        seen.insert(id.value.as_str(), line_of(origin, id));
        true
    }

    fn email(&mut self, origin: &Origin, value: &Text, key: &str) -> String {
        let text = value.value.trim();
        let ok = text
            .split_once('@')
            .is_some_and(|(user, domain)| !user.is_empty() && !domain.is_empty());
        if !ok {
            let message = format!(
                "invalid email `{}`: expected an address with `@`",
                value.value
            );
            self.push(origin, value, key, message);
        }
        text.to_string()
    }

    fn port_list(&mut self, origin: &Origin, items: &[Text], key: &str) -> Vec<u16> {
        let mut parts = Vec::new();
        for item in items {
            match ports::parse_item(&item.value) {
                Ok(part) => parts.push(part),
                Err(message) => self.push(origin, item, key, message),
            }
        }
        ports::merge(parts)
    }

    /// `store`: a SQLite path or a PostgreSQL URL, one of them. The URL is parsed only:
    /// nothing is tried on the network here.
    fn store(&mut self, raw: Option<raw::StoreConfig>, base: &Path) -> StoreSettings {
        let raw = raw.unwrap_or(raw::StoreConfig {
            path: None,
            url: None,
            password_env: None,
        });
        let path = resolve(
            base,
            raw.path
                .as_ref()
                .map_or("netpatrol.db", |p| p.value.as_str()),
        );
        let url = raw.url.as_ref().and_then(|u| {
            if raw.path.is_some() {
                self.here(
                    u,
                    "store: give either path (SQLite) or url (PostgreSQL), not both",
                );
                return None;
            }
            self.store_url(u)
        });
        let password_env = raw.password_env.as_ref().and_then(|p| {
            if raw.url.is_none() {
                self.here(
                    p,
                    "store.password_env is only for a PostgreSQL store (store.url)",
                );
                return None;
            }
            if p.value.trim().is_empty() {
                self.here(
                    p,
                    "store.password_env: expected an environment variable name",
                );
                return None;
            }
            Some(p.value.trim().to_string())
        });
        StoreSettings {
            path,
            url,
            password_env,
        }
    }

    /// A `store.url`: postgres:// or postgresql://, parseable, without a password.
    fn store_url(&mut self, value: &Text) -> Option<String> {
        let text = value.value.trim();
        let expected = "expected postgres://USER@HOST:PORT/DATABASE";
        let Ok(url) = url::Url::parse(text) else {
            self.here(value, format!("invalid store url: {expected}"));
            return None;
        };
        if url.password().is_some() {
            self.here(
                value,
                "secrets are not read from the config: remove the password from store.url and use store.password_env",
            );
            return None;
        }
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            let message = format!(
                "unsupported store url scheme `{}`: {expected} (a SQLite store is store.path)",
                url.scheme()
            );
            self.here(value, message);
            return None;
        }
        if let Err(e) = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(text) {
            self.here(value, format!("invalid store url `{text}`: {e}"));
            return None;
        }
        Some(text.to_string())
    }

    fn organisation(&mut self, raw: Option<raw::OrganisationConfig>) -> Organisation {
        let raw = raw.unwrap_or(raw::OrganisationConfig {
            name: None,
            timezone: None,
        });
        let timezone = match &raw.timezone {
            None => chrono_tz::Asia::Shanghai,
            Some(tz) => match tz.value.parse::<chrono_tz::Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    self.here(tz, format!("unknown timezone `{}`", tz.value));
                    chrono_tz::Asia::Shanghai
                }
            },
        };
        Organisation {
            name: raw.name.unwrap_or_else(|| "netpatrol".to_string()),
            timezone,
        }
    }

    fn scan(&mut self, raw: Option<raw::ScanConfig>) -> ScanSettings {
        let Some(raw) = raw else {
            return default_scan();
        };
        let defaults = default_scan();
        let origin = self.config.clone();
        let ports = match &raw.ports {
            Some(list) => self.port_list(&origin, &list.0, "ports"),
            None => defaults.ports,
        };
        let concurrency = match &raw.concurrency {
            None => defaults.concurrency,
            Some(c) if (1..=65536).contains(&c.value) => c.value as usize,
            Some(c) => {
                let message = format!("concurrency must be 1 to 65536, got {}", c.value);
                self.problems.push(Problem::at(
                    &origin.file,
                    c.referenced.line(),
                    c.referenced.column(),
                    message,
                ));
                defaults.concurrency
            }
        };
        let timeout = self.millis(raw.timeout_ms.as_ref(), "timeout_ms", defaults.timeout);
        let rate = self.count(raw.rate.as_ref(), "rate", 0..=1_000_000, defaults.rate);
        let retries = self.count(
            raw.retries.as_ref(),
            "retries",
            0..=10,
            defaults.retries.into(),
        ) as u8;
        let banner_timeout = self.millis(
            raw.banner_timeout_ms.as_ref(),
            "banner_timeout_ms",
            defaults.banner_timeout,
        );
        let dns = match raw.dns {
            None => defaults.dns,
            Some(dns) => DnsSettings {
                enabled: dns.enabled.unwrap_or(true),
                nameservers: dns
                    .nameservers
                    .iter()
                    .filter_map(|ns| match parse_nameserver(&ns.value) {
                        Some(addr) => Some(addr),
                        None => {
                            let message = format!(
                                "invalid nameserver `{}`: expected ADDR or ADDR:PORT",
                                ns.value
                            );
                            self.here(ns, message);
                            None
                        }
                    })
                    .collect(),
            },
        };
        ScanSettings {
            icmp: raw.icmp.unwrap_or(defaults.icmp),
            ports,
            rate,
            concurrency,
            timeout,
            retries,
            banner_timeout,
            dns,
        }
    }

    fn millis(
        &mut self,
        raw: Option<&serde_saphyr::Spanned<u64>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        match raw {
            None => default,
            Some(ms) if (1..=MAX_MILLIS).contains(&ms.value) => Duration::from_millis(ms.value),
            Some(ms) => {
                self.problems.push(Problem::at(
                    &self.config.file,
                    ms.referenced.line(),
                    ms.referenced.column(),
                    format!("{key} must be 1 to {MAX_MILLIS}, got {}", ms.value),
                ));
                default
            }
        }
    }

    fn departments(&mut self, loaded: &Loaded<raw::DepartmentConfig>) -> Vec<Department> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (origin, d) in &loaded.items {
            let unique = self.unique(&mut seen, origin, &d.id, "id", "department id");
            let emails = d
                .emails
                .iter()
                .map(|e| self.email(origin, e, "emails"))
                .collect();
            let leader_emails = d
                .leader_emails
                .iter()
                .map(|e| self.email(origin, e, "leader_emails"))
                .collect();
            if unique {
                out.push(Department {
                    id: d.id.value.clone(),
                    name: d.name.clone(),
                    emails,
                    leader_emails,
                });
            }
        }
        out
    }

    fn segments(
        &mut self,
        loaded: &Loaded<raw::SegmentConfig>,
        departments: Option<&[String]>,
    ) -> Vec<Segment> {
        let mut seen = HashMap::new();
        let mut out: Vec<Segment> = Vec::new();
        // (segment index in `out`, origin, written cidr) for the overlap check.
        let mut written: Vec<(usize, &Origin, &Text, IpNet)> = Vec::new();
        for (origin, s) in &loaded.items {
            let unique = self.unique(&mut seen, origin, &s.name, "name", "segment name");
            let network = match parse_network(&s.network.value) {
                Some(n) => Some(n),
                None => {
                    let message = format!(
                        "unknown network `{}`: expected one of {NETWORKS}",
                        s.network.value
                    );
                    self.push(origin, &s.network, "network", message);
                    None
                }
            };
            if s.cidrs.is_empty() {
                let message = format!("segment `{}` needs at least one cidr", s.name.value);
                self.push(origin, &s.name, "cidrs", message);
            }
            let mut cidrs = Vec::new();
            let mut mine = Vec::new();
            for c in &s.cidrs {
                if let Some(net) = self.cidr(origin, c) {
                    cidrs.push(net);
                    mine.push((c, net));
                }
            }
            let mut exclude = Vec::new();
            for e in &s.exclude {
                if let Some(net) = self.net(origin, e, "exclude", "exclude") {
                    if !cidrs.is_empty() && !cidrs.iter().any(|c| c.contains(&net)) {
                        let message = format!(
                            "exclude `{}` is outside segment `{}`",
                            e.value, s.name.value
                        );
                        self.push(origin, e, "exclude", message);
                    }
                    exclude.push(net);
                }
            }
            if let Some(d) = &s.department {
                self.reference(origin, d, "department", "department", departments);
            }
            if network == Some(NetworkKind::Departmental) && s.department.is_none() {
                let message = format!(
                    "departmental segment `{}` needs a `department`",
                    s.name.value
                );
                self.push(origin, &s.network, "department", message);
            }
            let consolidate_by = s.consolidate_by.as_ref().and_then(|c| {
                let date = self.date(origin, c, "consolidate_by");
                if network.is_some_and(|n| n != NetworkKind::Departmental) {
                    let message = "`consolidate_by` applies only to departmental segments";
                    self.push(origin, c, "consolidate_by", message);
                }
                date
            });
            if unique {
                let index = out.len();
                for (text, net) in mine {
                    for (other, other_origin, other_text, other_net) in &written {
                        if overlaps(&net, other_net) && *other != index {
                            let message = format!(
                                "cidr `{}` of segment `{}` overlaps `{}` of segment `{}` (line {})",
                                text.value,
                                s.name.value,
                                other_text.value,
                                out[*other].name,
                                line_of(other_origin, other_text),
                            );
                            self.push(origin, text, "cidrs", message);
                        }
                    }
                    written.push((index, origin, text, net));
                }
                out.push(Segment {
                    name: s.name.value.clone(),
                    network: network.unwrap_or(NetworkKind::Other),
                    cidrs,
                    exclude,
                    department: s.department.as_ref().map(|d| d.value.clone()),
                    consolidate_by,
                });
            }
        }
        out
    }

    fn approvals(
        &mut self,
        loaded: &Loaded<raw::ApprovalConfig>,
        departments: Option<&[String]>,
        segments: Option<&HashMap<&str, &Segment>>,
    ) -> Vec<Approval> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (origin, a) in &loaded.items {
            let unique = self.unique(&mut seen, origin, &a.id, "id", "approval id");
            self.reference(
                origin,
                &a.department,
                "department",
                "department",
                departments,
            );
            let segment = segments.map(|map| map.get(a.segment.value.as_str()).copied());
            if let Some(None) = segment {
                let message = format!("unknown segment `{}`", a.segment.value);
                self.push(origin, &a.segment, "segment", message);
            }
            let mut addresses = Vec::new();
            for text in &a.addresses {
                if let Some(net) = self.net(origin, text, "addresses", "address") {
                    if let Some(Some(seg)) = segment
                        && !seg.cidrs.iter().any(|c| c.contains(&net))
                    {
                        let message =
                            format!("address `{}` is outside segment `{}`", text.value, seg.name);
                        self.push(origin, text, "addresses", message);
                    }
                    addresses.push(net);
                }
            }
            let ports = a.ports.as_ref().map(|p| self.port_list(origin, p, "ports"));
            let approved_on = self.date(origin, &a.approved_on, "approved_on");
            let expires_on = a
                .expires_on
                .as_ref()
                .and_then(|e| self.date(origin, e, "expires_on"));
            if let (Some(from), Some(to), Some(text)) = (approved_on, expires_on, &a.expires_on)
                && to < from
            {
                let message = format!("`expires_on` {to} is before `approved_on` {from}");
                self.push(origin, text, "expires_on", message);
            }
            if let (true, Some(approved_on)) = (unique, approved_on) {
                out.push(Approval {
                    id: a.id.value.clone(),
                    department: a.department.value.clone(),
                    segment: a.segment.value.clone(),
                    addresses,
                    ports,
                    approved_on,
                    expires_on,
                });
            }
        }
        out
    }

    fn projects(
        &mut self,
        loaded: &Loaded<raw::ProjectConfig>,
        departments: Option<&[String]>,
    ) -> Vec<Project> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (origin, p) in &loaded.items {
            let unique = self.unique(&mut seen, origin, &p.id, "id", "project id");
            self.reference(
                origin,
                &p.department,
                "department",
                "department",
                departments,
            );
            let stage = match parse_stage(&p.stage.value) {
                Some(stage) => Some(stage),
                None => {
                    let message = format!(
                        "unknown stage `{}`: expected one of {STAGES}",
                        p.stage.value
                    );
                    self.push(origin, &p.stage, "stage", message);
                    None
                }
            };
            let accepted_on = p
                .accepted_on
                .as_ref()
                .and_then(|a| self.date(origin, a, "accepted_on"));
            match (stage, &p.accepted_on) {
                (
                    Some(ProjectStage::Planned | ProjectStage::Building | ProjectStage::Trial),
                    Some(text),
                ) => {
                    let message = format!(
                        "`accepted_on` is set but stage `{}` is not accepted yet",
                        p.stage.value
                    );
                    self.push(origin, text, "accepted_on", message);
                }
                (Some(ProjectStage::Accepted | ProjectStage::InUse), None) => {
                    let message = format!("stage `{}` needs `accepted_on`", p.stage.value);
                    self.push(origin, &p.stage, "accepted_on", message);
                }
                _ => {}
            }
            let mut assets = Vec::new();
            for text in &p.assets {
                if let Some(net) = parse_net(&text.value) {
                    assets.push(Asset::Address(net));
                } else if is_host_name(&text.value) {
                    assets.push(Asset::Name(text.value.trim().to_ascii_lowercase()));
                } else {
                    let message = format!(
                        "invalid asset `{}`: expected an address or a host name",
                        text.value
                    );
                    self.push(origin, text, "assets", message);
                }
            }
            let mlps = p.mlps.as_ref().map(|m| {
                let level = match m.level.value.trim().parse::<u8>() {
                    Ok(level) if (1..=5).contains(&level) => level,
                    _ => {
                        let message = format!("mlps level must be 1 to 5, got `{}`", m.level.value);
                        self.push(origin, &m.level, "mlps.level", message);
                        0
                    }
                };
                MlpsAssessment {
                    level,
                    filing_no: m.filing_no.clone(),
                    assessed_on: m
                        .assessed_on
                        .as_ref()
                        .and_then(|d| self.date(origin, d, "mlps.assessed_on")),
                    conclusion: m.conclusion.clone(),
                }
            });
            let crypto = p.crypto.as_ref().map(|c| CryptoAssessment {
                assessed_on: c
                    .assessed_on
                    .as_ref()
                    .and_then(|d| self.date(origin, d, "crypto.assessed_on")),
                conclusion: c.conclusion.clone(),
            });
            if let (true, Some(stage)) = (unique, stage) {
                out.push(Project {
                    id: p.id.value.clone(),
                    name: p.name.clone(),
                    department: p.department.value.clone(),
                    stage,
                    accepted_on,
                    assets,
                    mlps,
                    crypto,
                });
            }
        }
        out
    }

    /// A cron expression as the daemon's scheduler reads it (croner, in the organisation's
    /// timezone): parsed, and firing at least once.
    fn cron(&mut self, value: &Text, tz: chrono_tz::Tz) {
        let text = value.value.trim();
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            let message = format!("invalid cron `{}`: expected 5 or 6 fields", value.value);
            self.here(value, message);
            return;
        }
        match parse_cron(text) {
            Err(error) => {
                let message = format!("invalid cron `{}`: {error}", value.value);
                self.here(value, message);
            }
            Ok(cron) => {
                let now = chrono::Utc::now().with_timezone(&tz);
                if cron.find_next_occurrence(&now, false).is_err() {
                    let message = format!("cron `{}` never fires", value.value);
                    self.here(value, message);
                }
            }
        }
    }

    /// `sensors:` ids well formed and unique, segments declared, each segment at most one
    /// sensor's.
    fn sensors(
        &mut self,
        raw: &[raw::SensorConfig],
        segments: Option<&HashMap<&str, &Segment>>,
    ) -> Vec<SensorSettings> {
        let mut out: Vec<SensorSettings> = Vec::new();
        let mut owner: HashMap<String, String> = HashMap::new();
        for (i, s) in raw.iter().enumerate() {
            let Some(id) = &s.id else {
                self.problems.push(Problem::new(
                    &self.config.file,
                    format!("sensors[{i}]: missing required key `id`"),
                ));
                continue;
            };
            let name = id.value.trim().to_string();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                let message = format!(
                    "invalid sensor id `{}`: letters, digits, `-` and `_` only",
                    id.value
                );
                self.here(id, message);
                continue;
            }
            if out.iter().any(|o| o.id == name) {
                self.here(id, format!("duplicate sensor id `{name}`"));
                continue;
            }
            if s.segments.is_empty() {
                self.here(id, format!("sensor `{name}` has no segments"));
            }
            let mut names = Vec::new();
            for seg in &s.segments {
                let seg_name = seg.value.trim().to_string();
                if let Some(map) = segments
                    && !map.contains_key(seg_name.as_str())
                {
                    self.here(seg, format!("unknown segment `{seg_name}`"));
                    continue;
                }
                if let Some(first) = owner.get(&seg_name) {
                    let message = format!(
                        "segment `{seg_name}` is assigned to sensor `{first}` already: a segment has at most one sensor"
                    );
                    self.here(seg, message);
                    continue;
                }
                owner.insert(seg_name.clone(), name.clone());
                if !names.contains(&seg_name) {
                    names.push(seg_name);
                }
            }
            let token_env = s.token_env.as_ref().map_or_else(
                || {
                    format!(
                        "NETPATROL_SENSOR_{}",
                        name.to_ascii_uppercase().replace('-', "_")
                    )
                },
                |t| t.value.trim().to_string(),
            );
            out.push(SensorSettings {
                id: name,
                segments: names,
                token_env,
            });
        }
        out
    }

    /// `hub:` on a sensor: the URL (https unless the host is loopback), the sensor id, the
    /// bounds. (That the token is set and the files read is the compile step's `hub` check.)
    fn hub(&mut self, raw: raw::HubConfig, base: &Path) -> HubSettings {
        let file = self.config.file.clone();
        let url = match &raw.url {
            None => {
                self.problems
                    .push(Problem::new(&file, "hub: missing required key `url`"));
                String::new()
            }
            Some(u) => {
                let text = u.value.trim().trim_end_matches('/').to_string();
                match url::Url::parse(&text) {
                    Ok(parsed) if parsed.scheme() == "https" && parsed.host().is_some() => text,
                    Ok(parsed) if parsed.scheme() == "http" && is_loopback_host(&parsed) => text,
                    Ok(parsed) if parsed.scheme() == "http" => {
                        let message = format!(
                            "hub.url `{}` is plain http to a host that is not loopback: use https",
                            u.value
                        );
                        self.here(u, message);
                        text
                    }
                    _ => {
                        let message = format!(
                            "invalid hub.url `{}`: expected https://HOST[:PORT]",
                            u.value
                        );
                        self.here(u, message);
                        text
                    }
                }
            }
        };
        let sensor = match &raw.sensor {
            None => {
                self.problems
                    .push(Problem::new(&file, "hub: missing required key `sensor`"));
                String::new()
            }
            Some(s) => s.value.trim().to_string(),
        };
        if raw.cert_file.is_some() != raw.key_file.is_some() {
            self.problems.push(Problem::new(
                &file,
                "hub.cert_file and hub.key_file go together: give both or neither",
            ));
        }
        let mut bounded =
            |value: &Option<Spanned<u64>>, key: &str, min: u64, max: u64, default: u64| match value
            {
                None => default,
                Some(v) if (min..=max).contains(&v.value) => v.value,
                Some(v) => {
                    let message = if max == u64::MAX {
                        format!("hub.{key} must be at least {min}, not {}", v.value)
                    } else {
                        format!("hub.{key} must be {min} to {max}, not {}", v.value)
                    };
                    self.problems.push(Problem::at(
                        &file,
                        v.referenced.line(),
                        v.referenced.column(),
                        message,
                    ));
                    default
                }
            };
        let poll = bounded(&raw.poll_seconds, "poll_seconds", 1, 86_400, 60);
        let retry_max = bounded(&raw.retry_max_seconds, "retry_max_seconds", 1, 3600, 60);
        let keep = bounded(&raw.keep_hours, "keep_hours", 72, u64::MAX, 168);
        let path = |p: &Option<Text>| p.as_ref().map(|p| resolve(base, p.value.trim()));
        HubSettings {
            url,
            sensor,
            token_env: raw.token_env.as_ref().map_or_else(
                || "NETPATROL_SENSOR_TOKEN".to_string(),
                |t| t.value.trim().to_string(),
            ),
            ca_file: path(&raw.ca_file),
            cert_file: path(&raw.cert_file),
            key_file: path(&raw.key_file),
            poll: Duration::from_secs(poll),
            retry_max: Duration::from_secs(retry_max),
            keep: Duration::from_secs(keep.saturating_mul(3600)),
        }
    }

    fn daemon(
        &mut self,
        raw: Option<raw::DaemonConfig>,
        segments: Option<&HashMap<&str, &Segment>>,
        tz: chrono_tz::Tz,
    ) -> DaemonSettings {
        let default_env = "NETPATROL_API_TOKEN".to_string();
        let Some(raw) = raw else {
            return DaemonSettings {
                listen: None,
                listen_at: None,
                api_token_env: default_env,
                scans: Vec::new(),
                read_token_env: "NETPATROL_READ_TOKEN".to_string(),
                web_config: None,
                max_queued_scans: 8,
                link_key_env: "NETPATROL_LINK_KEY".to_string(),
                public_url: None,
            };
        };
        if let Some(secret) = &raw.api_token {
            self.problems.push(Problem::at(
                &self.config.file,
                secret.referenced.line(),
                secret.referenced.column(),
                "secrets are not read from the config: use api_token_env",
            ));
        }
        let listen = raw
            .listen
            .as_ref()
            .and_then(|l| match l.value.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    let message =
                        format!("invalid listen address `{}`: expected ADDR:PORT", l.value);
                    self.here(l, message);
                    None
                }
            });
        let mut scans = Vec::new();
        for s in &raw.scans {
            self.cron(&s.cron, tz);
            for name in &s.segments {
                if let Some(map) = segments
                    && !map.contains_key(name.value.as_str())
                {
                    self.here(name, format!("unknown segment `{}`", name.value));
                }
            }
            scans.push(ScheduledScan {
                cron: s.cron.value.trim().to_string(),
                segments: s.segments.iter().map(|n| n.value.clone()).collect(),
            });
        }
        let public_url = raw.public_url.as_ref().and_then(|u| {
            let text = u.value.trim().trim_end_matches('/');
            let scheme_ok = text.starts_with("https://") || text.starts_with("http://");
            let rest = text.split_once("://").map_or("", |(_, r)| r);
            if scheme_ok && !rest.is_empty() && !text.contains(char::is_whitespace) {
                Some(text.to_string())
            } else {
                let message = format!(
                    "invalid daemon.public_url `{}`: expected http(s)://HOST[:PORT][/PATH]",
                    u.value
                );
                self.here(u, message);
                None
            }
        });
        if raw.max_queued_scans == Some(0) {
            self.problems.push(Problem::new(
                &self.config.file,
                "daemon.max_queued_scans must be at least 1",
            ));
        }
        DaemonSettings {
            listen,
            listen_at: raw
                .listen
                .as_ref()
                .map(|l| self.config.position(l, "listen")),
            api_token_env: raw.api_token_env.unwrap_or(default_env),
            scans,
            read_token_env: raw
                .read_token_env
                .unwrap_or_else(|| "NETPATROL_READ_TOKEN".to_string()),
            web_config: raw.web_config.map(|t| {
                self.config
                    .file
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(&t.value)
            }),
            max_queued_scans: raw.max_queued_scans.map_or(8, |n| n as usize),
            link_key_env: raw
                .link_key_env
                .unwrap_or_else(|| "NETPATROL_LINK_KEY".to_string()),
            public_url,
        }
    }

    fn bulletin(
        &mut self,
        raw: Option<raw::BulletinConfig>,
        base: &Path,
        tz: chrono_tz::Tz,
    ) -> BulletinSettings {
        let raw = raw.unwrap_or(raw::BulletinConfig {
            cron: None,
            lang: None,
            out_dir: None,
            recipients: Vec::new(),
            notify_departments: None,
            escalate_after_days: None,
            templates_dir: None,
        });
        if let Some(cron) = &raw.cron {
            self.cron(cron, tz);
        }
        let lang = match &raw.lang {
            None => "zh".to_string(),
            Some(l) if l.value == "zh" || l.value == "en" => l.value.clone(),
            Some(l) => {
                self.here(l, format!("unknown lang `{}`: expected zh or en", l.value));
                "zh".to_string()
            }
        };
        let templates_dir = raw.templates_dir.as_ref().map(|d| {
            let path = resolve(base, &d.value);
            if !path.is_dir() {
                self.here(
                    d,
                    format!("templates_dir `{}` is not a folder", path.display()),
                );
            }
            path
        });
        let origin = self.config.clone();
        BulletinSettings {
            cron: raw
                .cron
                .map(|c| c.value.trim().to_string())
                .unwrap_or_else(|| "0 9 1 * *".to_string()),
            lang,
            out_dir: resolve(base, raw.out_dir.as_deref().unwrap_or("bulletins")),
            recipients: raw
                .recipients
                .iter()
                .map(|r| self.email(&origin, r, "recipients"))
                .collect(),
            notify_departments: raw.notify_departments.unwrap_or(true),
            escalate_after_days: raw.escalate_after_days.unwrap_or(30),
            templates_dir,
        }
    }

    fn smtp(&mut self, raw: raw::SmtpConfig) -> SmtpSettings {
        if let Some(secret) = &raw.password {
            self.problems.push(Problem::at(
                &self.config.file,
                secret.referenced.line(),
                secret.referenced.column(),
                "secrets are not read from the config: use password_env",
            ));
        }
        if raw.host.value.trim().is_empty() {
            self.here(&raw.host, "empty smtp host");
        }
        let security = match raw.security.as_ref().map(|s| s.value.as_str()) {
            None | Some("starttls") => SmtpSecurity::StartTls,
            Some("tls") => SmtpSecurity::Tls,
            Some("none") => SmtpSecurity::None,
            Some(other) => {
                let message =
                    format!("unknown security `{other}`: expected one of starttls, tls, none");
                if let Some(s) = &raw.security {
                    self.here(s, message);
                }
                SmtpSecurity::StartTls
            }
        };
        let default_port = match security {
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        };
        let port = match &raw.port {
            None => default_port,
            Some(p) if (1..=65535).contains(&p.value) => p.value as u16,
            Some(p) => {
                self.problems.push(Problem::at(
                    &self.config.file,
                    p.referenced.line(),
                    p.referenced.column(),
                    format!("port `{}` is out of range 1-65535", p.value),
                ));
                default_port
            }
        };
        let origin = self.config.clone();
        let from = raw.from.value.trim().to_string();
        if !from.contains('@') {
            let message = format!("invalid `from` `{from}`: expected an address with `@`");
            self.push(&origin, &raw.from, "from", message);
        }
        SmtpSettings {
            host: raw.host.value.trim().to_string(),
            port,
            security,
            username: raw.username,
            password_env: raw.password_env,
            from,
        }
    }
}

impl Validator {
    fn rules(&mut self, raw: Option<raw::RulesConfig>, base: &Path) -> RuleSettings {
        let Some(raw) = raw else {
            return RuleSettings::default();
        };
        let origin = self.config.clone();
        let mut overrides = BTreeMap::new();
        for (id, o) in raw.overrides.iter().flat_map(|p| &p.0) {
            let severity = o
                .severity
                .as_ref()
                .and_then(|s| match Severity::parse(&s.value) {
                    Some(severity) => Some(severity),
                    None => {
                        let message = format!(
                            "unknown severity `{}`: expected one of {}",
                            s.value,
                            Severity::NAMES
                        );
                        self.here(s, message);
                        None
                    }
                });
            let rule = RuleOverride {
                severity,
                enabled: o.enabled.unwrap_or(true),
                at: origin.position(id, ""),
            };
            overrides.insert(id.value.clone(), rule);
        }
        RuleSettings {
            dirs: raw.dirs.iter().map(|d| resolve(base, &d.value)).collect(),
            overrides,
        }
    }

    /// A count from `raw` within `range`, or `default` (with a problem when out of range).
    fn count(
        &mut self,
        raw: Option<&serde_saphyr::Spanned<u64>>,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
        default: u32,
    ) -> u32 {
        match raw {
            None => default,
            Some(n) if range.contains(&n.value) => n.value as u32,
            Some(n) => {
                self.problems.push(Problem::at(
                    &self.config.file,
                    n.referenced.line(),
                    n.referenced.column(),
                    format!(
                        "{key} must be {} to {}, got {}",
                        range.start(),
                        range.end(),
                        n.value
                    ),
                ));
                default
            }
        }
    }

    fn compliance(&mut self, raw: Option<raw::ComplianceConfig>) -> ComplianceSettings {
        let defaults = ComplianceSettings::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let mut mlps_interval_months = defaults.mlps_interval_months.clone();
        for (level, months) in raw.mlps_interval_months.iter().flat_map(|p| &p.0) {
            let Ok(level_u8 @ 1..=5) = u8::try_from(level.value) else {
                self.problems.push(Problem::at(
                    &self.config.file,
                    level.referenced.line(),
                    level.referenced.column(),
                    format!("mlps level must be 1 to 5, got {}", level.value),
                ));
                continue;
            };
            let months = self.count(Some(months), "mlps_interval_months", 1..=120, 0);
            if months > 0 {
                mlps_interval_months.insert(level_u8, months);
            }
        }
        let crypto_min_level = self.count(
            raw.crypto_min_level.as_ref(),
            "crypto_min_level",
            1..=5,
            defaults.crypto_min_level.into(),
        ) as u8;
        ComplianceSettings {
            approval_unused_days: self.count(
                raw.approval_unused_days.as_ref(),
                "approval_unused_days",
                1..=3650,
                defaults.approval_unused_days,
            ),
            mlps_interval_months,
            crypto_min_level,
            crypto_interval_months: self.count(
                raw.crypto_interval_months.as_ref(),
                "crypto_interval_months",
                1..=120,
                defaults.crypto_interval_months,
            ),
            resolve_after_scans: self.count(
                raw.resolve_after_scans.as_ref(),
                "resolve_after_scans",
                1..=100,
                defaults.resolve_after_scans,
            ),
            max_local_failure_ratio: match raw.max_local_failure_ratio {
                None => defaults.max_local_failure_ratio,
                Some(r) if (0.0..=1.0).contains(&r.value) => r.value,
                Some(r) => {
                    self.problems.push(Problem::at(
                        &self.config.file,
                        r.referenced.line(),
                        r.referenced.column(),
                        format!("max_local_failure_ratio must be 0 to 1, got {}", r.value),
                    ));
                    defaults.max_local_failure_ratio
                }
            },
        }
    }

    /// A required text of a waiver: present and not blank.
    fn required(
        &mut self,
        origin: &Origin,
        w: &raw::WaiverConfig,
        value: Option<&Text>,
        key: &str,
    ) -> Option<String> {
        match value {
            Some(text) if !text.value.trim().is_empty() => Some(text.value.trim().to_string()),
            Some(text) => {
                self.push(origin, text, key, format!("empty `{key}`"));
                None
            }
            None => {
                let message = format!("waiver for `{}` needs `{key}`", w.rule.value);
                self.push(origin, &w.rule, key, message);
                None
            }
        }
    }

    fn exceptions(
        &mut self,
        loaded: &Loaded<raw::WaiverConfig>,
        departments: Option<&[String]>,
        segments: Option<&HashMap<&str, &Segment>>,
        projects: Option<&[String]>,
    ) -> Vec<Waiver> {
        let mut out = Vec::new();
        for (origin, w) in &loaded.items {
            let pattern = w.rule.value.trim();
            let mut ok = is_rule_pattern(pattern);
            if !ok {
                let message = format!(
                    "invalid rule pattern `{}`: expected a rule id such as `exposure.telnet` or a prefix ending in `*` such as `exposure.*`",
                    w.rule.value
                );
                self.push(origin, &w.rule, "rule", message);
            }
            let ip =
                w.ip.as_ref()
                    .and_then(|t| self.net(origin, t, "ip", "address"));
            let port = w
                .port
                .as_ref()
                .and_then(|t| match t.value.trim().parse::<u16>() {
                    Ok(port) if port > 0 => Some(port),
                    _ => {
                        let message = format!("invalid port `{}`: expected 1 to 65535", t.value);
                        self.push(origin, t, "port", message);
                        None
                    }
                });
            // A scope key that does not parse must not widen the waiver to everything.
            ok &= w.ip.is_none() || ip.is_some();
            ok &= w.port.is_none() || port.is_some();
            if let Some(s) = &w.segment {
                match segments.map(|map| map.get(s.value.as_str()).copied()) {
                    Some(None) => {
                        let message = format!("unknown segment `{}`", s.value);
                        self.push(origin, s, "segment", message);
                    }
                    Some(Some(seg)) => {
                        if let (Some(net), Some(text)) = (ip, &w.ip)
                            && !seg.cidrs.iter().any(|c| c.contains(&net))
                        {
                            let message = format!(
                                "address `{}` is outside segment `{}`",
                                text.value, seg.name
                            );
                            self.push(origin, text, "ip", message);
                        }
                    }
                    None => {}
                }
            }
            if let Some(d) = &w.department {
                self.reference(origin, d, "department", "department", departments);
            }
            if let Some(p) = &w.project {
                self.reference(origin, p, "project", "project", projects);
            }
            let reason = self.required(origin, w, w.reason.as_ref(), "reason");
            let approver = self.required(origin, w, w.approver.as_ref(), "approver");
            let expires_on = match &w.expires_on {
                Some(text) => self.date(origin, text, "expires_on"),
                None => {
                    let message = format!("waiver for `{}` needs `expires_on`", w.rule.value);
                    self.push(origin, &w.rule, "expires_on", message);
                    None
                }
            };
            if let (true, Some(reason), Some(approver), Some(expires_on)) =
                (ok, reason, approver, expires_on)
            {
                out.push(Waiver {
                    rule: pattern.to_string(),
                    ip,
                    port,
                    segment: w.segment.as_ref().map(|s| s.value.clone()),
                    department: w.department.as_ref().map(|d| d.value.clone()),
                    project: w.project.as_ref().map(|p| p.value.clone()),
                    reason,
                    approver,
                    expires_on,
                    at: origin.position(&w.rule, "rule"),
                });
            }
        }
        out
    }
}

/// A rule id (`area.name`: lowercase letters, digits and `_`, with at least one dot), or a
/// prefix of one followed by `*`. A lone `*` would waive every rule: refused.
fn is_rule_pattern(text: &str) -> bool {
    let body = text.strip_suffix('*').unwrap_or(text);
    !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_'))
        && (text.ends_with('*') || body.contains('.'))
}

fn default_scan() -> ScanSettings {
    ScanSettings {
        icmp: true,
        ports: ports::named_port_set("default").unwrap_or_default(),
        rate: 2000,
        concurrency: 256,
        timeout: Duration::from_millis(1500),
        retries: 1,
        banner_timeout: Duration::from_millis(1000),
        dns: DnsSettings {
            enabled: true,
            nameservers: Vec::new(),
        },
    }
}

/// A CIDR, or a bare address as /32 or /128; host bits are cleared. An IPv4-mapped IPv6
/// network (`::ffff:192.0.2.0/120`) is the IPv4 network it maps (`192.0.2.0/24`): the address a
/// socket reaches is the IPv4 one, so scope, excludes and overlaps must see it as such.
pub fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net.trunc(),
        Err(_) => IpNet::from(text.parse::<IpAddr>().ok()?),
    };
    Some(canonical_net(net))
}

/// `net` with an IPv4-mapped IPv6 network (inside `::ffff:0:0/96`) turned into its IPv4 network.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// How many addresses `net` holds (saturating).
fn net_size(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => 1u128 << (32 - n.prefix_len()),
        IpNet::V6(n) => 1u128
            .checked_shl(128 - u32::from(n.prefix_len()))
            .unwrap_or(u128::MAX),
    }
}

/// A cron expression as the daemon reads it.
pub fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    use std::str::FromStr;
    croner::Cron::from_str(text.trim()).map_err(|e| {
        // croner's "Component error: Number out of bounds." reads as a sentence; ours are not.
        let text = e.to_string();
        let text = text.trim().trim_end_matches('.');
        let text = text.strip_prefix("Component error: ").unwrap_or(text);
        lowercase(text)
    })
}

fn lowercase(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    text.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

fn parse_network(text: &str) -> Option<NetworkKind> {
    Some(match text {
        "extranet" => NetworkKind::Extranet,
        "metro" => NetworkKind::Metro,
        "departmental" => NetworkKind::Departmental,
        "internet" => NetworkKind::Internet,
        "other" => NetworkKind::Other,
        _ => return None,
    })
}

fn parse_stage(text: &str) -> Option<ProjectStage> {
    Some(match text {
        "planned" => ProjectStage::Planned,
        "building" => ProjectStage::Building,
        "trial" => ProjectStage::Trial,
        "accepted" => ProjectStage::Accepted,
        "in_use" => ProjectStage::InUse,
        "retired" => ProjectStage::Retired,
        _ => return None,
    })
}

/// A DNS name: labels of letters, digits and '-', not starting or ending with '-', joined by '.'.
pub fn is_host_name(text: &str) -> bool {
    let text = text.trim().trim_end_matches('.');
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        // All-numeric dotted text is a mistyped address, not a name.
        && !text.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit()))
}

/// Whether a URL's host is a loopback address or `localhost` (plain http is allowed there).
fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_and_names() {
        assert_eq!(parse_net("192.0.2.7"), "192.0.2.7/32".parse().ok());
        assert_eq!(parse_net("192.0.2.7/24"), "192.0.2.0/24".parse().ok());
        assert_eq!(parse_net("2001:db8::1"), "2001:db8::1/128".parse().ok());
        assert_eq!(parse_net("192.0.2.300"), None);
        assert!(is_host_name("xmsb.example.gov.cn"));
        assert!(!is_host_name("192.0.2.300"));
        assert!(!is_host_name("bad_name.example"));
        assert!(!is_host_name("-a.example"));
        assert_eq!(parse_nameserver("192.0.2.53"), "192.0.2.53:53".parse().ok());
        assert_eq!(
            parse_nameserver("127.0.0.1:5353"),
            "127.0.0.1:5353".parse().ok()
        );
    }
}
