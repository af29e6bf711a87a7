//! Findings and their lifecycle.
//!
//! A finding is a rule that held for a subject. Its identity is a stable fingerprint of rule,
//! address, port and project (plus segment or approval for those subjects), so the same problem
//! seen again is the same finding. Lifecycle, advanced once per scan by [`advance`] (pure; the
//! time is passed in):
//!
//! - **opened** the first time it is seen: `first_seen`, and `due` = that day + the rule's days;
//! - **seen** again: `last_seen` moves on, the absence count goes back to zero;
//! - **resolved** after it was absent from `resolve_after` consecutive scans that *covered* it
//!   (a complete scan of its address or segment that ran every probe its rule needs);
//! - **reopened** when it returns after that: a new due date from the day it came back.
//!
//! Waivers do not change the stored state: whether a finding is waived is decided when it is
//! shown, from the config's exceptions and the date, so an expired waiver stops hiding it at once.
//! A waiver is matched against the finding's [`Locus`] (every project that lists its host, not
//! only the one the finding names).
//!
//! A degraded or incomplete scan (see `RunState`) covers nothing: it opens and refreshes what it
//! saw and resolves no finding.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::config::{Asset, Config, Waiver};
use crate::facts::{Locus, Subject};
use crate::observation::{RunState, ScanObservations};
use crate::reconcile::{self, History, SubjectFacts};
use crate::rules::{Hit, RuleSet, Severity, Text};
use crate::scope::Scope;

/// Stored state of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Open,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        match s {
            "open" => Some(State::Open),
            "resolved" => Some(State::Resolved),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub fingerprint: String,
    pub rule: String,
    pub severity: Severity,
    pub subject: Subject,
    pub ip: Option<String>,
    pub port: Option<u16>,
    pub segment: Option<String>,
    pub department: Option<String>,
    pub project: Option<String>,
    pub approval: Option<String>,
    pub title: Text,
    pub evidence: Text,
    pub basis: Vec<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Rectification deadline (organisation's calendar).
    pub due: NaiveDate,
    pub state: State,
    /// Consecutive covering scans without it.
    pub absent_scans: u32,
    pub resolved_at: Option<DateTime<Utc>>,
    pub reopened_at: Option<DateTime<Utc>>,
}

/// A lifecycle event, kept as history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Opened,
    Resolved,
    Reopened,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Opened => "opened",
            Event::Resolved => "resolved",
            Event::Reopened => "reopened",
        }
    }
}

/// A rule that held for a subject in this scan.
#[derive(Debug, Clone)]
pub struct Observed {
    pub fingerprint: String,
    pub rule: String,
    pub severity: Severity,
    pub deadline_days: u32,
    pub locus: Locus,
    pub title: Text,
    pub evidence: Text,
    pub basis: Vec<String>,
}

/// The stable identity of a rule's finding about a subject.
pub fn fingerprint(rule: &str, s: &Locus) -> String {
    let ip = s.ip.map(|ip| ip.to_string()).unwrap_or_default();
    let port = s.port.map(|p| p.to_string()).unwrap_or_default();
    let (project, extra) = match s.subject {
        Subject::Project => (s.project.as_deref().unwrap_or(""), ""),
        Subject::Segment => ("", s.segment.as_deref().unwrap_or("")),
        Subject::Approval => ("", s.approval.as_deref().unwrap_or("")),
        Subject::Host | Subject::Service => ("", ""),
    };
    format!("{rule}|{ip}|{port}|{project}|{extra}")
}

impl Observed {
    pub fn new(hit: &Hit<'_>, s: &SubjectFacts) -> Observed {
        Observed {
            fingerprint: fingerprint(&hit.rule.id, &s.locus),
            rule: hit.rule.id.clone(),
            severity: hit.rule.severity,
            deadline_days: hit.rule.deadline_days,
            locus: s.locus.clone(),
            title: hit.rule.title.clone(),
            evidence: hit.evidence.clone(),
            basis: hit.rule.basis.clone(),
        }
    }
}

fn due(from: NaiveDate, days: u32) -> NaiveDate {
    from.checked_add_days(chrono::Days::new(days.into()))
        .unwrap_or(NaiveDate::MAX)
}

/// Advance the lifecycle by one scan.
///
/// `existing`: the stored findings; `observed`: what held in this scan; `covered`: whether this
/// scan could have seen a finding's condition; `now` and `today` (organisation calendar).
/// Returns the findings that changed and their events.
pub fn advance(
    existing: &[Finding],
    observed: &[Observed],
    covered: &dyn Fn(&Finding) -> bool,
    now: DateTime<Utc>,
    today: NaiveDate,
    resolve_after: u32,
) -> (Vec<Finding>, Vec<(String, Event)>) {
    let by_fp: HashMap<&str, &Finding> = existing
        .iter()
        .map(|f| (f.fingerprint.as_str(), f))
        .collect();
    let mut changed = Vec::new();
    let mut events = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for o in observed {
        if !seen.insert(o.fingerprint.as_str()) {
            continue;
        }
        let mut f = match by_fp.get(o.fingerprint.as_str()) {
            Some(old) => (*old).clone(),
            None => {
                events.push((o.fingerprint.clone(), Event::Opened));
                Finding {
                    fingerprint: o.fingerprint.clone(),
                    rule: o.rule.clone(),
                    severity: o.severity,
                    subject: o.locus.subject,
                    ip: None,
                    port: None,
                    segment: None,
                    department: None,
                    project: None,
                    approval: None,
                    title: o.title.clone(),
                    evidence: o.evidence.clone(),
                    basis: o.basis.clone(),
                    first_seen: now,
                    last_seen: now,
                    due: due(today, o.deadline_days),
                    state: State::Open,
                    absent_scans: 0,
                    resolved_at: None,
                    reopened_at: None,
                }
            }
        };
        if f.state == State::Resolved {
            events.push((o.fingerprint.clone(), Event::Reopened));
            f.state = State::Open;
            f.resolved_at = None;
            f.reopened_at = Some(now);
            f.due = due(today, o.deadline_days);
        }
        // What the finding says follows the latest observation and rule pack.
        f.severity = o.severity;
        f.set_locus(&o.locus);
        f.title = o.title.clone();
        f.evidence = o.evidence.clone();
        f.basis = o.basis.clone();
        f.last_seen = now;
        f.absent_scans = 0;
        changed.push(f);
    }
    for old in existing {
        if old.state != State::Open || seen.contains(old.fingerprint.as_str()) || !covered(old) {
            continue;
        }
        let mut f = old.clone();
        f.absent_scans += 1;
        if f.absent_scans >= resolve_after.max(1) {
            f.state = State::Resolved;
            f.resolved_at = Some(now);
            events.push((f.fingerprint.clone(), Event::Resolved));
        }
        changed.push(f);
    }
    (changed, events)
}

impl Finding {
    /// Writes `locus` into the finding's flat fields, which are the store's columns (the
    /// store keeps one project per finding, the one it names). With [`Finding::locus`] the one
    /// conversion between a locus and those columns.
    pub fn set_locus(&mut self, locus: &Locus) {
        self.subject = locus.subject;
        self.ip = locus.ip.map(|ip| ip.to_string());
        self.port = locus.port;
        self.segment = locus.segment.clone();
        self.department = locus.department.clone();
        self.project = locus.project.clone();
        self.approval = locus.approval.clone();
    }

    /// The finding's locus as stored, with every project that lists its host (the stored row
    /// names the first one only): a waiver scoped to a host's second project covers it too.
    pub fn locus(&self, config: &Config) -> Locus {
        let ip = self.ip.as_deref().and_then(|s| s.parse().ok());
        let mut projects: Vec<String> = self.project.iter().cloned().collect();
        // A stored finding has no scan's placement at hand: the projects come from the
        // register (by address; the PTR name is not stored with it).
        if let (Some(ip), Some(_)) = (ip, self.segment.as_deref()) {
            for p in reconcile::projects_for(config, ip, None) {
                if !projects.contains(&p.id) {
                    projects.push(p.id.clone());
                }
            }
        }
        Locus {
            subject: self.subject,
            ip,
            port: self.port,
            segment: self.segment.clone(),
            department: self.department.clone(),
            project: self.project.clone(),
            projects,
            approval: self.approval.clone(),
        }
    }
}

/// The waiver that hides `finding` on `today`, if any. Expired waivers hide nothing.
pub fn waiver_for<'a>(
    config: &'a Config,
    finding: &Finding,
    today: NaiveDate,
) -> Option<&'a Waiver> {
    let locus = finding.locus(config);
    config
        .exceptions
        .iter()
        .find(|w| w.is_active(today) && w.matches(&finding.rule, &locus))
}

/// What one scan changed, and what it found.
#[derive(Debug, Clone, Default)]
pub struct Assessment {
    /// Findings whose stored row changes (to be written).
    pub changed: Vec<Finding>,
    pub events: Vec<(String, Event)>,
    /// Open findings this scan saw, most severe first.
    pub current: Vec<Finding>,
}

/// Reconcile, evaluate the rules and advance the lifecycle for one scan. Pure.
pub fn assess(
    config: &Config,
    rules: &RuleSet,
    scan: &ScanObservations,
    history: &History,
    existing: &[Finding],
    today: NaiveDate,
) -> Assessment {
    let now = scan.run.finished_at.unwrap_or(scan.run.started_at);
    let subjects = reconcile::subjects(config, scan, history, today);
    let observed: Vec<Observed> = subjects
        .iter()
        .flat_map(|s| {
            rules
                .evaluate(s.locus.subject, &s.facts)
                .into_iter()
                .map(move |hit| Observed::new(&hit, s))
        })
        .collect();
    let scope = Scope::new(
        config
            .segments
            .iter()
            .filter(|s| scan.run.segments.contains(&s.name)),
    );
    let complete = scan.run.state == RunState::Complete;
    let all_segments = config
        .segments
        .iter()
        .all(|s| scan.run.segments.contains(&s.name));
    let covered = |f: &Finding| -> bool {
        if !complete {
            return false;
        }
        let probes_ran = rules
            .get(&f.rule)
            .is_none_or(|r| r.needs.iter().all(|k| scan.run.probe_kinds.contains(k)));
        if !probes_ran {
            return false;
        }
        let in_scope = |ip: &str| ip.parse().is_ok_and(|ip| scope.target(ip).is_some());
        match f.subject {
            Subject::Host => f.ip.as_deref().is_some_and(in_scope),
            Subject::Service => {
                f.ip.as_deref().is_some_and(in_scope)
                    && f.port.is_some_and(|p| config.scan.ports.contains(&p))
            }
            Subject::Segment | Subject::Approval => f
                .segment
                .as_ref()
                .is_some_and(|s| scan.run.segments.contains(s)),
            Subject::Project => {
                all_segments
                    || config
                        .projects
                        .iter()
                        .find(|p| Some(&p.id) == f.project.as_ref())
                        .is_some_and(|p| {
                            p.assets.iter().any(|a| match a {
                                Asset::Address(net) => scope.target(net.network()).is_some(),
                                Asset::Name(_) => false,
                            })
                        })
            }
        }
    };
    let (changed, events) = advance(
        existing,
        &observed,
        &covered,
        now,
        today,
        config.compliance.resolve_after_scans,
    );
    let seen: std::collections::HashSet<&str> =
        observed.iter().map(|o| o.fingerprint.as_str()).collect();
    let mut current: Vec<Finding> = changed
        .iter()
        .filter(|f| seen.contains(f.fingerprint.as_str()))
        .cloned()
        .collect();
    current.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.department.cmp(&b.department))
            .then_with(|| a.rule.cmp(&b.rule))
            .then_with(|| a.fingerprint.cmp(&b.fingerprint))
    });
    Assessment {
        changed,
        events,
        current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn observed(fp: &str) -> Observed {
        Observed {
            fingerprint: fp.to_string(),
            rule: "access.unapproved_host".into(),
            severity: Severity::High,
            deadline_days: 15,
            locus: Locus {
                ip: Some("192.0.2.7".parse().unwrap()),
                segment: Some("a".into()),
                ..Locus::of(Subject::Host)
            },
            title: Text {
                zh: "标题".into(),
                en: "title".into(),
            },
            evidence: Text {
                zh: "证据".into(),
                en: "evidence".into(),
            },
            basis: vec!["第二十一条".into()],
        }
    }

    fn at(day: u32) -> (DateTime<Utc>, NaiveDate) {
        let t = Utc.with_ymd_and_hms(2026, 3, day, 2, 0, 0).unwrap();
        (t, t.date_naive())
    }

    /// Apply `changed` over `stored`, as the store does.
    fn merge(stored: &mut Vec<Finding>, changed: Vec<Finding>) {
        for f in changed {
            match stored.iter_mut().find(|s| s.fingerprint == f.fingerprint) {
                Some(s) => *s = f,
                None => stored.push(f),
            }
        }
    }

    #[test]
    fn opens_once_resolves_after_n_covered_absences_and_reopens() {
        let mut stored = Vec::new();
        let all = |_: &Finding| true;
        let (t1, d1) = at(1);
        let (changed, events) = advance(&stored, &[observed("x")], &all, t1, d1, 2);
        assert_eq!(events, vec![("x".to_string(), Event::Opened)]);
        assert_eq!(
            changed[0].due,
            NaiveDate::from_ymd_opt(2026, 3, 16).unwrap()
        );
        merge(&mut stored, changed);

        // Seen again: no new event, same first_seen.
        let (t2, d2) = at(2);
        let (changed, events) = advance(&stored, &[observed("x")], &all, t2, d2, 2);
        assert!(events.is_empty());
        assert_eq!(changed[0].first_seen, t1);
        assert_eq!(changed[0].last_seen, t2);
        merge(&mut stored, changed);

        // Absent from a scan that did not cover it: nothing counts.
        let none = |_: &Finding| false;
        let (changed, _) = advance(&stored, &[], &none, at(3).0, at(3).1, 2);
        assert!(changed.is_empty());

        // Absent once: still open; twice: resolved.
        let (changed, events) = advance(&stored, &[], &all, at(4).0, at(4).1, 2);
        assert!(events.is_empty());
        assert_eq!(changed[0].absent_scans, 1);
        merge(&mut stored, changed);
        let (t5, d5) = at(5);
        let (changed, events) = advance(&stored, &[], &all, t5, d5, 2);
        assert_eq!(events, vec![("x".to_string(), Event::Resolved)]);
        assert_eq!(changed[0].resolved_at, Some(t5));
        merge(&mut stored, changed);

        // Back again: reopened with a new deadline from the day it returned.
        let (t9, d9) = at(9);
        let (changed, events) = advance(&stored, &[observed("x")], &all, t9, d9, 2);
        assert_eq!(events, vec![("x".to_string(), Event::Reopened)]);
        assert_eq!(changed[0].state, State::Open);
        assert_eq!(changed[0].first_seen, t1);
        assert_eq!(
            changed[0].due,
            NaiveDate::from_ymd_opt(2026, 3, 24).unwrap()
        );
    }

    #[test]
    fn a_finding_seen_twice_in_one_scan_counts_once() {
        let (t, d) = at(1);
        let (changed, events) = advance(&[], &[observed("x"), observed("x")], &|_| true, t, d, 2);
        assert_eq!(changed.len(), 1);
        assert_eq!(events.len(), 1);
    }
}
