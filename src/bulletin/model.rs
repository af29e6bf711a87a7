//! What a bulletin says: everything the templates show, gathered from the store and the config
//! for one period, in one language, as plain serializable data.
//!
//! The only part of the bulletin that queries the store. Everything user-facing comes in the
//! bulletin's language: labels (`t`), rule titles and remediation (the rules' `Text`), evidence.
//!
//! The rectification loop (通报—整改—反馈—复测) is read from the departments' answers
//! (`rectification_answers`): per department, the items notified (open in the period and not
//! waived, or answered), answered, verified closed (latest answer 复测通过), failed re-test
//! (整改未通过) and overdue; the response and verified-closure rates; the same over six
//! periods, each judged with the answers given by its end. Items overdue by
//! `bulletin.escalate_after_days` or more are escalated (逾期未整改 section; the notice copies
//! the department's leadership).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::Serialize;

use super::{BulletinError, Period};
use crate::config::{Config, NetworkKind, ProjectStage};
use crate::finding::{Finding, State, waiver_for};
use crate::probe::tls::TlsVersion;
use crate::rules::{RuleSet, Severity};
use crate::store::{Answer, AnswerKind, PeriodService, Store};

/// Certificates expiring within this many days of the period's end are listed.
const EXPIRING_DAYS: i64 = 30;
/// Assessments due within this many days of the period's end are flagged.
const DUE_SOON_DAYS: i64 = 60;
/// Periods in the trend chart, this one included.
const TREND_PERIODS: usize = 6;

/// The whole bulletin, as the templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    pub lang: String,
    /// Chinese (the default) or not: the templates switch their prose on it.
    pub zh: bool,
    pub org: String,
    pub number: u32,
    /// "2026年第11期" / "No. 11, 2026".
    pub number_label: String,
    pub period: PeriodView,
    pub previous: PeriodView,
    /// Date of issue, long form.
    pub issued_on: String,
    pub overview: Overview,
    /// 二、违规接入, by department.
    pub access: Vec<DeptItems>,
    pub access_total: usize,
    /// 三、高危暴露.
    pub exposure: Vec<Item>,
    /// 四、证书与加密.
    pub crypto: Crypto,
    /// 五、等保与密评.
    pub projects: Vec<ProjectRow>,
    /// 六、网络归并整合.
    pub consolidation: Vec<SegmentRow>,
    /// 七、整改要求, by department (departments with open items only).
    pub rectification: Vec<DeptItems>,
    /// 已整改: resolved in the period.
    pub resolved: Vec<Item>,
    /// 八、整改反馈与复测: the loop, by department, and its trend.
    pub rect_loop: LoopView,
    /// 逾期未整改: items overdue by `escalate_after_days` or more, by department (none when
    /// escalation is off).
    pub escalated: Vec<DeptItems>,
    /// `bulletin.escalate_after_days` (0 = off).
    pub escalate_after_days: u32,
    /// 附件: every finding open in the period.
    pub appendix: Vec<Item>,
    /// Labels in the bulletin's language.
    pub t: BTreeMap<&'static str, &'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeriodView {
    pub key: String,
    pub from: String,
    pub to: String,
    /// "2026年11月" / "November 2026", or the range.
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub segments: usize,
    /// Segments by network kind: (label, count), kinds with none left out.
    pub segments_by_network: Vec<Count>,
    pub scans: usize,
    pub scans_complete: usize,
    /// Scans that ran to the end but blind in part (`degraded`: local failures or probes not
    /// attempted); they opened findings and resolved none.
    pub scans_degraded: usize,
    pub addresses: u64,
    pub networks: Vec<NetworkRow>,
    pub hosts: usize,
    pub services: usize,
    pub severities: Vec<SeverityRow>,
    /// Findings open in the period (waived ones included).
    pub total: usize,
    pub previous_total: usize,
    /// `total - previous_total`.
    pub delta: i64,
    pub delta_abs: i64,
    pub new: usize,
    pub resolved: usize,
    pub overdue: usize,
    pub waived: usize,
    pub departments_with_items: usize,
    pub trend: Vec<TrendRow>,
    /// Colour legend of the chart: (severity key, label).
    pub legend: Vec<Count>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Count {
    pub key: String,
    pub label: String,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkRow {
    pub key: String,
    pub label: String,
    pub segments: usize,
    pub hosts: usize,
    pub services: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeverityRow {
    pub key: String,
    pub label: String,
    pub count: usize,
    pub previous: usize,
    pub delta: i64,
}

/// One bar of the chart: a period, its findings by severity, widths in percent of the widest.
#[derive(Debug, Clone, Serialize)]
pub struct TrendRow {
    pub label: String,
    pub total: usize,
    pub parts: Vec<TrendPart>,
    /// What is left of the track after the parts.
    pub rest_pct: f64,
    pub current: bool,
    /// The bar for text formats: up to 40 `#`.
    pub bar: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrendPart {
    pub key: String,
    pub count: usize,
    pub pct: f64,
}

/// A finding, as a bulletin line.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// Position in its list, from 1.
    pub no: usize,
    /// 问题编号: stable across bulletins (from the finding's fingerprint).
    pub id: String,
    pub rule: String,
    pub department_id: String,
    pub department: String,
    pub segment: String,
    pub ip: String,
    pub port: String,
    /// `ip:port`, `ip`, the project or the segment: where the problem is.
    pub target: String,
    pub project: String,
    /// The rule's title.
    pub kind: String,
    pub severity: String,
    pub severity_label: String,
    /// The evidence.
    pub description: String,
    pub remediation: String,
    pub basis: String,
    pub first_seen: String,
    pub due: String,
    /// `open` | `overdue` | `resolved` | `waived`.
    pub status: String,
    pub status_label: String,
    pub overdue: bool,
    /// Open since before this period (so in an earlier bulletin) and overdue.
    pub carried: bool,
    pub resolved_on: String,
    /// Days past the due date (0 when not overdue).
    pub overdue_days: i64,
    /// Overdue by `escalate_after_days` or more (escalated to the leadership).
    pub escalated: bool,
    /// The department's latest answer by the period's end and what became of it
    /// ("已整改 · 复测通过"), empty when none.
    pub feedback: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeptItems {
    pub id: String,
    pub name: String,
    pub emails: Vec<String>,
    /// Copied on the notice when it carries escalated items.
    pub leader_emails: Vec<String>,
    /// Items escalated (overdue by `escalate_after_days` or more).
    pub escalated: usize,
    pub items: Vec<Item>,
    pub overdue: usize,
    pub carried: usize,
    /// Earliest deadline among the items.
    pub earliest_due: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Crypto {
    /// TLS or TLCP endpoints seen in the period.
    pub endpoints: usize,
    pub tls13: usize,
    pub legacy: usize,
    /// Endpoints speaking TLCP or offering SM suites.
    pub sm: usize,
    pub sm_pct: String,
    pub certs: Vec<CertRow>,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertRow {
    pub target: String,
    pub department: String,
    pub subject: String,
    pub issuer: String,
    pub not_after: String,
    /// Days from the period's end; negative once expired.
    pub days_left: i64,
    pub expired: bool,
    pub state_label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectRow {
    pub id: String,
    pub name: String,
    pub department: String,
    pub stage: String,
    pub level: String,
    pub filing_no: String,
    pub mlps_on: String,
    pub mlps_conclusion: String,
    pub mlps_due: String,
    pub crypto_required: bool,
    pub crypto_on: String,
    pub crypto_conclusion: String,
    pub crypto_due: String,
    pub problems: Vec<String>,
    pub status: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentRow {
    pub name: String,
    pub department: String,
    pub cidrs: String,
    pub live_hosts: usize,
    pub consolidate_by: String,
    pub status: String,
    /// `done` | `overdue` | `on_track` | `no_date`.
    pub state: String,
}

/// The rectification loop of a period: a row per department with items, the district's
/// total, and the trend over six periods.
#[derive(Debug, Clone, Serialize)]
pub struct LoopView {
    pub rows: Vec<LoopRow>,
    pub total: LoopRow,
    /// Oldest first, this period last.
    pub trend: Vec<LoopTrend>,
}

/// One department's loop in a period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoopRow {
    pub id: String,
    pub name: String,
    pub notified: usize,
    pub answered: usize,
    /// 复测通过.
    pub verified: usize,
    /// 整改未通过.
    pub failed: usize,
    pub overdue: usize,
    /// "60%", or "-" with nothing notified.
    pub response_rate: String,
    pub closure_rate: String,
    /// Response rates of the six periods, oldest first ("-" where nothing was notified).
    pub trend: Vec<String>,
}

/// The district's loop in one of the six periods.
#[derive(Debug, Clone, Serialize)]
pub struct LoopTrend {
    pub label: String,
    pub current: bool,
    pub notified: usize,
    pub answered: usize,
    pub verified: usize,
    pub response_rate: String,
    pub closure_rate: String,
    /// Bar widths, percent of 100.
    pub response_pct: f64,
    pub closure_pct: f64,
    /// Bars for text formats: 20 cells, `#` (response) or `=` (verified closure), then dots.
    pub response_bar: String,
    pub closure_bar: String,
}

#[derive(Debug, Clone, Copy, Default)]
struct LoopCounts {
    notified: usize,
    answered: usize,
    verified: usize,
    failed: usize,
    overdue: usize,
}

/// A bar of 20 cells for `pct` percent: `mark`s, then dots.
fn text_bar(mark: char, pct: f64) -> String {
    let n = ((pct / 5.0).round() as usize).min(20);
    let mut bar: String = std::iter::repeat_n(mark, n).collect();
    bar.extend(std::iter::repeat_n('.', 20 - n));
    bar
}

fn rate(part: usize, of: usize) -> String {
    if of == 0 {
        "-".to_string()
    } else {
        format!("{:.0}%", part as f64 * 100.0 / of as f64)
    }
}

/// The loop's counts by department, for findings `open` in a period ending (exclusive) at
/// `end`, judged on `as_of` with the answers given before `end`.
fn loop_counts(
    config: &Config,
    open: &[Finding],
    answers: &[Answer],
    end: DateTime<Utc>,
    as_of: NaiveDate,
) -> BTreeMap<String, LoopCounts> {
    let mut latest: HashMap<&str, &Answer> = HashMap::new();
    for a in answers.iter().filter(|a| a.at < end) {
        latest.insert(a.fingerprint.as_str(), a);
    }
    let mut out: BTreeMap<String, LoopCounts> = BTreeMap::new();
    for f in open {
        let Some(dept) = f.department.as_deref() else {
            continue;
        };
        let answer = latest.get(f.fingerprint.as_str());
        let waived = waiver_for(config, f, as_of).is_some();
        if waived && answer.is_none() {
            continue;
        }
        let resolved = f.state == State::Resolved && f.resolved_at.is_some_and(|r| r < end);
        let c = out.entry(dept.to_string()).or_default();
        c.notified += 1;
        if let Some(a) = answer {
            c.answered += 1;
            match a.state.as_str() {
                "retest_passed" => c.verified += 1,
                "retest_failed" => c.failed += 1,
                _ => {}
            }
        }
        if !resolved && !waived && f.due < as_of {
            c.overdue += 1;
        }
    }
    out
}

/// What an answer and its outcome are called in the bulletin.
fn feedback_label(a: &Answer, zh: bool) -> String {
    let kind = match (a.kind, zh) {
        (AnswerKind::Done, true) => "已整改",
        (AnswerKind::Done, false) => "rectified",
        (AnswerKind::Waiver, true) => "申请豁免",
        (AnswerKind::Waiver, false) => "waiver requested",
        (AnswerKind::Dispute, true) => "有异议",
        (AnswerKind::Dispute, false) => "disputed",
    };
    let state = match (a.state.as_str(), zh) {
        ("retest_passed", true) => "复测通过",
        ("retest_passed", false) => "re-test passed",
        ("retest_failed", true) => "整改未通过",
        ("retest_failed", false) => "re-test failed",
        ("retest_inconclusive" | "retest_error", true) => "复测无法判定",
        ("retest_inconclusive" | "retest_error", false) => "re-test inconclusive",
        ("approved", true) => "豁免已批准",
        ("approved", false) => "waiver approved",
        ("denied", true) => "未予批准",
        ("denied", false) => "denied",
        ("closed", true) => "异议未予采纳",
        ("closed", false) => "dispute closed",
        ("waived", true) => "转为豁免",
        ("waived", false) => "turned into a waiver",
        ("overridden", true) => "规则已覆盖",
        ("overridden", false) => "rule overridden",
        (_, true) => "待处理",
        (_, false) => "pending",
    };
    format!("{kind} · {state}")
}

/// Gather the model of `period` as of `now`.
pub async fn gather(
    config: &Config,
    rules: &RuleSet,
    store: &Store,
    period: &Period,
    lang: &str,
    number: u32,
    now: DateTime<Utc>,
) -> Result<Model, BulletinError> {
    let tz = config.organisation.timezone;
    let t = labels(lang);
    let zh = lang != "en";
    let (start, end) = period.bounds(tz);
    // Status is judged as of the period's end, or today for a period not over yet.
    let today = now.with_timezone(&tz).date_naive();
    let as_of = period.to.min(today);
    let answers = store.all_answers().await?;
    let end_of_period = period.bounds(tz).1;
    let mut latest: HashMap<String, Answer> = HashMap::new();
    for a in answers.iter().filter(|a| a.at < end_of_period) {
        latest.insert(a.fingerprint.clone(), a.clone());
    }
    let ctx = Ctx {
        config,
        rules,
        lang,
        t: &t,
        tz,
        period,
        as_of,
        latest: &latest,
    };

    let runs = store.runs_between(start, end).await?;
    let hosts = store.hosts_between(start, end).await?;
    let services = store.services_between(start, end).await?;
    let open = store.findings_open_between(start, end).await?;
    let events = store.finding_events_between(start, end).await?;
    let previous = period.previous();
    let (pstart, pend) = previous.bounds(tz);
    let previous_open = store.findings_open_between(pstart, pend).await?;

    // Findings resolved in the period (their latest resolution falls in it).
    let resolved_fps: BTreeSet<&str> = events
        .iter()
        .filter(|e| e.event == "resolved")
        .map(|e| e.fingerprint.as_str())
        .collect();
    let mut appendix: Vec<Item> = open.iter().map(|f| ctx.item(f)).collect();
    sort_items(&mut appendix);
    number_items(&mut appendix);

    // What is still to do: open at the end of the period, not waived.
    let pending = |i: &&Item| i.status == "open" || i.status == "overdue";

    // 一、总体情况
    let ip_network: HashMap<&str, &str> = hosts
        .iter()
        .map(|h| (h.ip.as_str(), h.network.as_str()))
        .collect();
    let networks = [
        NetworkKind::Extranet,
        NetworkKind::Metro,
        NetworkKind::Departmental,
        NetworkKind::Internet,
        NetworkKind::Other,
    ];
    let network_rows: Vec<NetworkRow> = networks
        .iter()
        .map(|n| NetworkRow {
            key: n.as_str().to_string(),
            label: network_label(&t, *n).to_string(),
            segments: config.segments.iter().filter(|s| s.network == *n).count(),
            hosts: hosts.iter().filter(|h| h.network == n.as_str()).count(),
            services: services
                .iter()
                .filter(|s| ip_network.get(s.ip.as_str()) == Some(&n.as_str()))
                .count(),
        })
        .filter(|r| r.segments + r.hosts > 0)
        .collect();
    let count_by = |list: &[Finding], s: Severity| list.iter().filter(|f| f.severity == s).count();
    let severities: Vec<SeverityRow> = Severity::ALL
        .iter()
        .map(|s| {
            let (count, previous) = (count_by(&open, *s), count_by(&previous_open, *s));
            SeverityRow {
                key: s.as_str().to_string(),
                label: severity_label(&t, *s).to_string(),
                count,
                previous,
                delta: count as i64 - previous as i64,
            }
        })
        .collect();
    let mut trend = Vec::new();
    // The loop's counts of each of the six periods, oldest first (the trend's order).
    let mut loop_windows: Vec<(String, bool, BTreeMap<String, LoopCounts>)> = Vec::new();
    let mut window = period.clone();
    for i in 0..TREND_PERIODS {
        let (a, b) = window.bounds(tz);
        let list = if i == 0 {
            open.clone()
        } else {
            store.findings_open_between(a, b).await?
        };
        let window_as_of = window.to.min(today);
        loop_windows.push((
            ctx.period_short(&window),
            i == 0,
            loop_counts(config, &list, &answers, b, window_as_of),
        ));
        trend.push((ctx.period_short(&window), list, i == 0));
        window = window.previous();
    }
    trend.reverse();
    loop_windows.reverse();
    let widest = trend
        .iter()
        .map(|(_, l, _)| l.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let trend: Vec<TrendRow> = trend
        .into_iter()
        .map(|(label, list, current)| {
            let parts: Vec<TrendPart> = Severity::ALL
                .iter()
                .map(|s| {
                    let count = count_by(&list, *s);
                    TrendPart {
                        key: s.as_str().to_string(),
                        count,
                        pct: pct(count, widest),
                    }
                })
                .filter(|p| p.count > 0)
                .collect();
            let used: f64 = parts.iter().map(|p| p.pct).sum();
            TrendRow {
                label,
                total: list.len(),
                parts,
                rest_pct: ((100.0 - used) * 10.0).round().max(0.0) / 10.0,
                current,
                bar: "#".repeat((list.len() * 40).div_ceil(widest)),
            }
        })
        .collect();
    let total = open.len();
    let delta = total as i64 - previous_open.len() as i64;
    let overview = Overview {
        segments: config.segments.len(),
        segments_by_network: networks
            .iter()
            .map(|n| Count {
                key: n.as_str().to_string(),
                label: network_label(&t, *n).to_string(),
                count: config.segments.iter().filter(|s| s.network == *n).count(),
            })
            .filter(|c| c.count > 0)
            .collect(),
        scans: runs.len(),
        scans_complete: runs.iter().filter(|r| r.state == "complete").count(),
        scans_degraded: runs.iter().filter(|r| r.state == "degraded").count(),
        addresses: runs.iter().map(|r| r.addresses).max().unwrap_or(0),
        networks: network_rows,
        hosts: hosts.len(),
        services: services.len(),
        severities,
        total,
        previous_total: previous_open.len(),
        delta,
        delta_abs: delta.abs(),
        new: open
            .iter()
            .filter(|f| f.first_seen >= start || f.reopened_at.is_some_and(|r| r >= start))
            .count(),
        resolved: resolved_fps.len(),
        overdue: appendix.iter().filter(|i| i.overdue).count(),
        waived: appendix.iter().filter(|i| i.status == "waived").count(),
        departments_with_items: appendix
            .iter()
            .filter(pending)
            .map(|i| i.department_id.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        trend,
        legend: Severity::ALL
            .iter()
            .map(|s| Count {
                key: s.as_str().to_string(),
                label: severity_label(&t, *s).to_string(),
                count: 0,
            })
            .collect(),
    };

    // 二、违规接入
    let access_rules = [
        "access.unapproved_host",
        "access.unapproved_service",
        "access.approval_expired",
    ];
    let access_items: Vec<Item> = appendix
        .iter()
        .filter(|i| access_rules.contains(&i.rule.as_str()))
        .cloned()
        .collect();
    let access_total = access_items.len();
    let access = ctx.by_department(access_items);

    // 三、高危暴露
    let mut exposure: Vec<Item> = appendix
        .iter()
        .filter(|i| i.rule.starts_with("exposure."))
        .cloned()
        .collect();
    number_items(&mut exposure);

    // 四、证书与加密
    let crypto = ctx.crypto(&services, &hosts, &appendix);

    // 五、等保与密评
    let projects = ctx.projects(&open);

    // 六、网络归并整合
    let consolidation = ctx.consolidation(&hosts);

    // 七、整改要求 and 已整改
    let rect_items: Vec<Item> = appendix.iter().filter(pending).cloned().collect();
    let rectification = ctx.by_department(rect_items);
    let mut resolved: Vec<Item> = open
        .iter()
        .filter(|f| resolved_fps.contains(f.fingerprint.as_str()) && f.state == State::Resolved)
        .map(|f| ctx.item(f))
        .collect();
    sort_items(&mut resolved);
    number_items(&mut resolved);

    // 逾期未整改 (escalated) and 八、整改反馈与复测
    let escalated_items: Vec<Item> = appendix
        .iter()
        .filter(pending)
        .filter(|i| i.escalated)
        .cloned()
        .collect();
    let escalated = ctx.by_department(escalated_items);
    let rect_loop = ctx.loop_view(&loop_windows);

    let local = |d: NaiveDate| ctx.long_date(d);
    Ok(Model {
        lang: lang.to_string(),
        zh,
        org: config.organisation.name.clone(),
        number,
        number_label: if zh {
            format!("{}年第{}期", period.from.year(), number)
        } else {
            format!("No. {number}, {}", period.from.year())
        },
        period: ctx.period_view(period),
        previous: ctx.period_view(&previous),
        issued_on: local(today),
        overview,
        access,
        access_total,
        exposure,
        crypto,
        projects,
        consolidation,
        rectification,
        resolved,
        rect_loop,
        escalated,
        escalate_after_days: config.bulletin.escalate_after_days,
        appendix,
        t,
    })
}

fn pct(count: usize, of: usize) -> f64 {
    if of == 0 {
        return 0.0;
    }
    (count as f64 * 1000.0 / of as f64).round() / 10.0
}

/// Most serious first, then by department, deadline and id.
fn sort_items(items: &mut [Item]) {
    items.sort_by(|a, b| {
        Severity::parse(&b.severity)
            .cmp(&Severity::parse(&a.severity))
            .then_with(|| a.department_id.cmp(&b.department_id))
            .then_with(|| a.due.cmp(&b.due))
            .then_with(|| a.target.cmp(&b.target))
            .then_with(|| a.rule.cmp(&b.rule))
            .then_with(|| a.id.cmp(&b.id))
    });
}

fn number_items(items: &mut [Item]) {
    for (n, item) in items.iter_mut().enumerate() {
        item.no = n + 1;
    }
}

/// 问题编号: `NP-` and the first 8 hex digits of the SHA-256 of the fingerprint.
pub fn item_id(fingerprint: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, fingerprint.as_bytes());
    let hex: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("NP-{hex}")
}

struct Ctx<'a> {
    config: &'a Config,
    rules: &'a RuleSet,
    lang: &'a str,
    t: &'a BTreeMap<&'static str, &'static str>,
    tz: chrono_tz::Tz,
    period: &'a Period,
    as_of: NaiveDate,
    /// The latest answer on each finding by the period's end, by fingerprint.
    latest: &'a HashMap<String, Answer>,
}

impl Ctx<'_> {
    fn zh(&self) -> bool {
        self.lang != "en"
    }

    fn label(&self, key: &str) -> String {
        self.t.get(key).copied().unwrap_or(key).to_string()
    }

    fn date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    fn long_date(&self, d: NaiveDate) -> String {
        if self.zh() {
            format!("{}年{}月{}日", d.year(), d.month(), d.day())
        } else {
            d.format("%-d %B %Y").to_string()
        }
    }

    fn period_view(&self, p: &Period) -> PeriodView {
        let label = if p.month {
            if self.zh() {
                format!("{}年{}月", p.from.year(), p.from.month())
            } else {
                p.from.format("%B %Y").to_string()
            }
        } else if self.zh() {
            format!("{}至{}", self.long_date(p.from), self.long_date(p.to))
        } else {
            format!("{} to {}", self.long_date(p.from), self.long_date(p.to))
        };
        PeriodView {
            key: p.key(),
            from: p.from.to_string(),
            to: p.to.to_string(),
            label,
        }
    }

    fn period_short(&self, p: &Period) -> String {
        if p.month {
            p.from.format("%Y-%m").to_string()
        } else {
            format!("{}~{}", p.from.format("%m-%d"), p.to.format("%m-%d"))
        }
    }

    fn department_name(&self, id: Option<&str>) -> String {
        match id {
            Some(id) => self
                .config
                .department(id)
                .map_or_else(|| id.to_string(), |d| d.name.clone()),
            None => self.label("unassigned"),
        }
    }

    fn item(&self, f: &Finding) -> Item {
        let rule = self.rules.get(&f.rule);
        let waived = waiver_for(self.config, f, self.as_of).is_some();
        let resolved_in = f
            .resolved_at
            .filter(|_| f.state == State::Resolved)
            .map(|t| self.date(t));
        let overdue = resolved_in.is_none() && !waived && f.due < self.as_of;
        let status = if resolved_in.is_some() {
            "resolved"
        } else if waived {
            "waived"
        } else if overdue {
            "overdue"
        } else {
            "open"
        };
        let ip = f.ip.clone().unwrap_or_default();
        let port = f.port.map(|p| p.to_string()).unwrap_or_default();
        let project_name = f.project.as_ref().map(|id| {
            self.config
                .projects
                .iter()
                .find(|p| &p.id == id)
                .map_or_else(|| id.clone(), |p| format!("{}({})", p.name, p.id))
        });
        let target = match (&f.ip, f.port) {
            (Some(ip), Some(port)) => format!("{ip}:{port}"),
            (Some(ip), None) => ip.clone(),
            (None, _) => project_name
                .clone()
                .or_else(|| f.segment.clone())
                .or_else(|| f.approval.clone())
                .unwrap_or_default(),
        };
        let first_seen = self.date(f.first_seen);
        let overdue_days = if overdue {
            (self.as_of - f.due).num_days()
        } else {
            0
        };
        let after = i64::from(self.config.bulletin.escalate_after_days);
        Item {
            no: 0,
            id: item_id(&f.fingerprint),
            rule: f.rule.clone(),
            department_id: f.department.clone().unwrap_or_default(),
            department: self.department_name(f.department.as_deref()),
            segment: f.segment.clone().unwrap_or_default(),
            ip,
            port,
            target,
            project: project_name.unwrap_or_default(),
            kind: rule.map_or_else(
                || f.title.lang(self.lang).to_string(),
                |r| r.title.lang(self.lang).to_string(),
            ),
            severity: f.severity.as_str().to_string(),
            severity_label: severity_label(self.t, f.severity).to_string(),
            description: f.evidence.lang(self.lang).to_string(),
            remediation: rule
                .map(|r| r.remediation.lang(self.lang).to_string())
                .unwrap_or_default(),
            basis: f.basis.join(if self.zh() { "；" } else { "; " }),
            first_seen: first_seen.to_string(),
            due: f.due.to_string(),
            status: status.to_string(),
            status_label: self.label(&format!("status_{status}")),
            overdue,
            carried: overdue && first_seen < self.period.from,
            resolved_on: resolved_in.map(|d| d.to_string()).unwrap_or_default(),
            overdue_days,
            escalated: overdue && after > 0 && overdue_days >= after,
            feedback: self
                .latest
                .get(&f.fingerprint)
                .map(|a| feedback_label(a, self.zh()))
                .unwrap_or_default(),
        }
    }

    /// Items grouped by department, in the register's order (unassigned last).
    fn by_department(&self, items: Vec<Item>) -> Vec<DeptItems> {
        let mut groups: Vec<DeptItems> = Vec::new();
        let mut order: Vec<String> = self
            .config
            .departments
            .iter()
            .map(|d| d.id.clone())
            .collect();
        for i in &items {
            if !order.contains(&i.department_id) {
                order.push(i.department_id.clone());
            }
        }
        // Unassigned ("") last.
        order.sort_by_key(|id| id.is_empty());
        for id in order {
            let mut mine: Vec<Item> = items
                .iter()
                .filter(|i| i.department_id == id)
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            // Overdue first, then by deadline and severity.
            mine.sort_by(|a, b| {
                b.overdue
                    .cmp(&a.overdue)
                    .then_with(|| a.due.cmp(&b.due))
                    .then_with(|| a.no.cmp(&b.no))
            });
            number_items(&mut mine);
            let department = self.config.department(&id);
            groups.push(DeptItems {
                name: self.department_name((!id.is_empty()).then_some(id.as_str())),
                emails: department.map(|d| d.emails.clone()).unwrap_or_default(),
                leader_emails: department
                    .map(|d| d.leader_emails.clone())
                    .unwrap_or_default(),
                escalated: mine.iter().filter(|i| i.escalated).count(),
                overdue: mine.iter().filter(|i| i.overdue).count(),
                carried: mine.iter().filter(|i| i.carried).count(),
                earliest_due: mine.iter().map(|i| i.due.clone()).min().unwrap_or_default(),
                items: mine,
                id,
            });
        }
        groups
    }

    /// 八、整改反馈与复测: this period's rows (the last window) and the six periods' trend.
    fn loop_view(&self, windows: &[(String, bool, BTreeMap<String, LoopCounts>)]) -> LoopView {
        let empty = BTreeMap::new();
        let current = windows.last().map_or(&empty, |(_, _, c)| c);
        let mut order: Vec<String> = self
            .config
            .departments
            .iter()
            .map(|d| d.id.clone())
            .collect();
        for id in current.keys() {
            if !order.contains(id) {
                order.push(id.clone());
            }
        }
        let row = |id: &str, name: String, c: LoopCounts, trend: Vec<String>| LoopRow {
            id: id.to_string(),
            name,
            notified: c.notified,
            answered: c.answered,
            verified: c.verified,
            failed: c.failed,
            overdue: c.overdue,
            response_rate: rate(c.answered, c.notified),
            closure_rate: rate(c.verified, c.notified),
            trend,
        };
        let mut rows = Vec::new();
        for id in &order {
            let Some(c) = current.get(id) else { continue };
            let trend = windows
                .iter()
                .map(|(_, _, w)| {
                    w.get(id)
                        .map_or_else(|| "-".to_string(), |c| rate(c.answered, c.notified))
                })
                .collect();
            rows.push(row(id, self.department_name(Some(id)), *c, trend));
        }
        let sum = |w: &BTreeMap<String, LoopCounts>| {
            w.values().fold(LoopCounts::default(), |a, c| LoopCounts {
                notified: a.notified + c.notified,
                answered: a.answered + c.answered,
                verified: a.verified + c.verified,
                failed: a.failed + c.failed,
                overdue: a.overdue + c.overdue,
            })
        };
        let total_trend = windows
            .iter()
            .map(|(_, _, w)| {
                let c = sum(w);
                rate(c.answered, c.notified)
            })
            .collect();
        let total = row("", self.label("total"), sum(current), total_trend);
        let trend = windows
            .iter()
            .map(|(label, is_current, w)| {
                let c = sum(w);
                let (response_pct, closure_pct) =
                    (pct(c.answered, c.notified), pct(c.verified, c.notified));
                LoopTrend {
                    label: label.clone(),
                    current: *is_current,
                    notified: c.notified,
                    answered: c.answered,
                    verified: c.verified,
                    response_rate: rate(c.answered, c.notified),
                    closure_rate: rate(c.verified, c.notified),
                    response_pct,
                    closure_pct,
                    response_bar: text_bar('#', response_pct),
                    closure_bar: text_bar('=', closure_pct),
                }
            })
            .collect();
        LoopView { rows, total, trend }
    }

    fn crypto(
        &self,
        services: &[PeriodService],
        hosts: &[crate::store::PeriodHost],
        appendix: &[Item],
    ) -> Crypto {
        let department: HashMap<&str, Option<&str>> = hosts
            .iter()
            .map(|h| (h.ip.as_str(), h.department.as_deref()))
            .collect();
        let tls: Vec<(&PeriodService, &serde_json::Value)> = services
            .iter()
            .filter_map(|s| {
                let t = s.data.get("tls")?;
                (!t.is_null()).then_some((s, t))
            })
            .collect();
        let versions = |t: &serde_json::Value| -> Vec<TlsVersion> {
            t.get("versions")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().and_then(TlsVersion::parse))
                        .collect()
                })
                .unwrap_or_default()
        };
        let is_sm = |t: &serde_json::Value| {
            t.get("tlcp").and_then(|v| v.as_bool()).unwrap_or(false)
                || t.get("sm_suites")
                    .and_then(|v| v.as_array())
                    .is_some_and(|a| !a.is_empty())
        };
        let endpoints = tls.len();
        let sm = tls.iter().filter(|(_, t)| is_sm(t)).count();
        let mut certs = Vec::new();
        for (s, t) in &tls {
            let cert = t
                .get("cert")
                .filter(|c| !c.is_null())
                .or_else(|| t.get("tlcp_certs").and_then(|c| c.get(0)));
            let Some(cert) = cert else { continue };
            let text = |k: &str| {
                cert.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            let Some(not_after) = DateTime::parse_from_rfc3339(&text("not_after"))
                .ok()
                .map(|d| d.with_timezone(&Utc))
            else {
                continue;
            };
            let end = self.date(not_after);
            let days_left = (end - self.as_of).num_days();
            if days_left > EXPIRING_DAYS {
                continue;
            }
            let expired = days_left < 0;
            certs.push(CertRow {
                target: format!("{}:{}", s.ip, s.port),
                department: self.department_name(department.get(s.ip.as_str()).copied().flatten()),
                subject: text("subject"),
                issuer: text("issuer"),
                not_after: end.to_string(),
                days_left,
                expired,
                state_label: self.label(if expired {
                    "cert_expired"
                } else {
                    "cert_expiring"
                }),
            });
        }
        certs.sort_by(|a, b| {
            a.days_left
                .cmp(&b.days_left)
                .then_with(|| a.target.cmp(&b.target))
        });
        let mut items: Vec<Item> = appendix
            .iter()
            .filter(|i| i.rule.starts_with("tls.") || i.rule.starts_with("crypto."))
            .cloned()
            .collect();
        number_items(&mut items);
        Crypto {
            endpoints,
            tls13: tls
                .iter()
                .filter(|(_, t)| versions(t).contains(&TlsVersion::Tls13))
                .count(),
            legacy: tls
                .iter()
                .filter(|(_, t)| versions(t).iter().any(|v| v.legacy()))
                .count(),
            sm,
            sm_pct: if endpoints == 0 {
                "-".to_string()
            } else {
                format!("{:.1}%", sm as f64 * 100.0 / endpoints as f64)
            },
            certs,
            items,
        }
    }

    fn projects(&self, open: &[Finding]) -> Vec<ProjectRow> {
        let compliance = &self.config.compliance;
        let dash = || "-".to_string();
        let date = |d: Option<NaiveDate>| d.map_or_else(dash, |d| d.to_string());
        self.config
            .projects
            .iter()
            .map(|p| {
                let accepted = matches!(p.stage, ProjectStage::Accepted | ProjectStage::InUse);
                let level = p.mlps.as_ref().map(|m| m.level);
                let mlps_on = p.mlps.as_ref().and_then(|m| m.assessed_on);
                let mlps_due = mlps_on
                    .zip(level.and_then(|l| compliance.mlps_interval(l)))
                    .map(|(on, months)| {
                        on.checked_add_months(chrono::Months::new(months))
                            .unwrap_or(NaiveDate::MAX)
                    });
                let crypto_required =
                    accepted && level.is_some_and(|l| l >= compliance.crypto_min_level);
                let crypto_on = p.crypto.as_ref().and_then(|c| c.assessed_on);
                let crypto_due = crypto_on.map(|on| {
                    on.checked_add_months(chrono::Months::new(compliance.crypto_interval_months))
                        .unwrap_or(NaiveDate::MAX)
                });
                let mut problems = Vec::new();
                let live_early = open.iter().any(|f| {
                    f.rule == "project.live_before_acceptance"
                        && f.project.as_deref() == Some(p.id.as_str())
                        && f.state == State::Open
                });
                if live_early {
                    problems.push(self.label("proj_live_early"));
                }
                if accepted && mlps_on.is_none() {
                    problems.push(self.label("proj_mlps_missing"));
                }
                if accepted && mlps_due.is_some_and(|d| d < self.as_of) {
                    problems.push(self.label("proj_mlps_overdue"));
                } else if accepted
                    && mlps_due.is_some_and(|d| (d - self.as_of).num_days() <= DUE_SOON_DAYS)
                {
                    problems.push(self.label("proj_mlps_soon"));
                }
                if crypto_required && crypto_on.is_none() {
                    problems.push(self.label("proj_crypto_missing"));
                }
                if crypto_required && crypto_due.is_some_and(|d| d < self.as_of) {
                    problems.push(self.label("proj_crypto_overdue"));
                } else if crypto_required
                    && crypto_due.is_some_and(|d| (d - self.as_of).num_days() <= DUE_SOON_DAYS)
                {
                    problems.push(self.label("proj_crypto_soon"));
                }
                let ok = problems.is_empty();
                ProjectRow {
                    id: p.id.clone(),
                    name: p.name.clone(),
                    department: self.department_name(Some(&p.department)),
                    stage: self.label(&format!("stage_{}", crate::reconcile::stage_str(p.stage))),
                    level: level.map_or_else(dash, |l| self.level_label(l)),
                    filing_no: p
                        .mlps
                        .as_ref()
                        .and_then(|m| m.filing_no.clone())
                        .unwrap_or_else(dash),
                    mlps_on: date(mlps_on),
                    mlps_conclusion: self
                        .conclusion(p.mlps.as_ref().and_then(|m| m.conclusion.as_deref())),
                    mlps_due: date(mlps_due),
                    crypto_required,
                    crypto_on: date(crypto_on),
                    crypto_conclusion: self
                        .conclusion(p.crypto.as_ref().and_then(|c| c.conclusion.as_deref())),
                    crypto_due: date(crypto_due),
                    status: if ok {
                        self.label("proj_ok")
                    } else {
                        problems.join(if self.zh() { "；" } else { "; " })
                    },
                    problems,
                    ok,
                }
            })
            .collect()
    }

    fn level_label(&self, level: u8) -> String {
        if self.zh() {
            let n = ["", "一", "二", "三", "四", "五"];
            format!("第{}级", n.get(usize::from(level)).copied().unwrap_or("?"))
        } else {
            format!("Level {level}")
        }
    }

    fn conclusion(&self, c: Option<&str>) -> String {
        match c {
            None => "-".to_string(),
            Some(c @ ("pass" | "basic_pass" | "fail")) => self.label(&format!("conclusion_{c}")),
            Some(other) => other.to_string(),
        }
    }

    fn consolidation(&self, hosts: &[crate::store::PeriodHost]) -> Vec<SegmentRow> {
        self.config
            .segments
            .iter()
            .filter(|s| s.network == NetworkKind::Departmental)
            .map(|s| {
                let live = hosts.iter().filter(|h| h.segment == s.name).count();
                let state = match s.consolidate_by {
                    _ if live == 0 => "done",
                    Some(d) if d < self.as_of => "overdue",
                    Some(_) => "on_track",
                    None => "no_date",
                };
                SegmentRow {
                    name: s.name.clone(),
                    department: self.department_name(s.department.as_deref()),
                    cidrs: s
                        .cidrs
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    live_hosts: live,
                    consolidate_by: s
                        .consolidate_by
                        .map_or_else(|| "-".to_string(), |d| d.to_string()),
                    status: self.label(&format!("merge_{state}")),
                    state: state.to_string(),
                }
            })
            .collect()
    }
}

fn severity_label(t: &BTreeMap<&'static str, &'static str>, s: Severity) -> &'static str {
    let key = match s {
        Severity::Critical => "sev_critical",
        Severity::High => "sev_high",
        Severity::Medium => "sev_medium",
        Severity::Low => "sev_low",
        Severity::Info => "sev_info",
    };
    t.get(key).copied().unwrap_or("?")
}

fn network_label(t: &BTreeMap<&'static str, &'static str>, n: NetworkKind) -> &'static str {
    let key = match n {
        NetworkKind::Extranet => "net_extranet",
        NetworkKind::Metro => "net_metro",
        NetworkKind::Departmental => "net_departmental",
        NetworkKind::Internet => "net_internet",
        NetworkKind::Other => "net_other",
    };
    t.get(key).copied().unwrap_or("?")
}

/// Every short text of the bulletin, by key, in `lang`. Each key exists in both languages.
pub fn labels(lang: &str) -> BTreeMap<&'static str, &'static str> {
    let en = lang == "en";
    LABELS
        .iter()
        .map(|(k, zh, e)| (*k, if en { *e } else { *zh }))
        .collect()
}

const LABELS: &[(&str, &str, &str)] = &[
    ("title", "网络安全通报", "Network Security Bulletin"),
    (
        "notice_title",
        "网络安全问题限期整改通知",
        "Notice of Rectification",
    ),
    ("sec1", "一、总体情况", "1. Overview"),
    ("sec2", "二、违规接入情况", "2. Unapproved network access"),
    (
        "sec3",
        "三、高危端口及服务暴露情况",
        "3. High-risk exposure",
    ),
    (
        "sec4",
        "四、证书与加密情况",
        "4. Certificates and encryption",
    ),
    (
        "sec5",
        "五、等级保护与商用密码应用安全性评估落实情况",
        "5. MLPS and commercial cryptography assessments",
    ),
    ("sec6", "六、网络归并整合进度", "6. Network consolidation"),
    ("sec7", "七、整改要求", "7. Rectification requirements"),
    (
        "sec_escalated",
        "逾期未整改问题（提请领导督办）",
        "Overdue and escalated to the leadership",
    ),
    (
        "sec8",
        "八、整改反馈与复测情况",
        "8. Answers and re-tests (the rectification loop)",
    ),
    ("loop_notified", "通报问题", "Notified"),
    ("loop_answered", "已反馈", "Answered"),
    ("loop_verified", "复测通过", "Verified closed"),
    ("loop_failed", "整改未通过", "Failed re-test"),
    ("loop_overdue", "逾期", "Overdue"),
    ("loop_response_rate", "反馈率", "Response rate"),
    ("loop_closure_rate", "复测关闭率", "Verified-closure rate"),
    (
        "loop_trend",
        "近六期反馈率与复测关闭率",
        "Response and verified-closure rates over six periods",
    ),
    (
        "loop_dept_trend",
        "近六期反馈率",
        "Response rate, six periods",
    ),
    ("period", "期别", "Period"),
    ("overdue_days", "逾期天数", "Days overdue"),
    ("feedback", "反馈情况", "Answer"),
    ("sec_resolved", "已整改问题", "Resolved in this period"),
    (
        "sec_appendix",
        "附件：问题清单",
        "Appendix: list of findings",
    ),
    (
        "chart",
        "近六期问题数量",
        "Findings over the last six periods",
    ),
    ("network", "网络类型", "Network"),
    ("segments", "网段数", "Segments"),
    ("hosts", "在网主机", "Live hosts"),
    ("services", "开放服务", "Open services"),
    ("severity", "风险等级", "Severity"),
    ("this_period", "本期", "This period"),
    ("previous_period", "上期", "Previous period"),
    ("change", "增减", "Change"),
    ("total", "合计", "Total"),
    ("no", "序号", "No."),
    ("id", "问题编号", "Finding ID"),
    ("department", "所属单位", "Department"),
    ("segment", "网段", "Segment"),
    ("ip", "IP地址", "IP address"),
    ("port", "端口", "Port"),
    ("target", "位置", "Where"),
    ("kind", "问题类型", "Finding"),
    ("description", "问题描述", "Description"),
    ("remediation", "整改建议", "Remediation"),
    ("basis", "依据", "Basis"),
    ("first_seen", "首次发现", "First seen"),
    ("due", "整改期限", "Deadline"),
    ("status", "状态", "Status"),
    ("resolved_on", "整改完成", "Resolved on"),
    ("project", "项目", "Project"),
    ("stage", "项目阶段", "Stage"),
    ("level", "等保级别", "MLPS level"),
    ("filing_no", "备案编号", "Filing no."),
    ("mlps_on", "最近等保测评", "Last MLPS assessment"),
    ("mlps_due", "下次测评期限", "Next MLPS due"),
    ("crypto_on", "最近密评", "Last crypto assessment"),
    ("crypto_due", "下次密评期限", "Next crypto due"),
    ("conclusion", "结论", "Conclusion"),
    ("cidrs", "地址范围", "Addresses"),
    ("live_hosts", "在网主机", "Live hosts"),
    ("consolidate_by", "归并期限", "Merge by"),
    ("subject", "证书主体", "Certificate subject"),
    ("issuer", "签发者", "Issuer"),
    ("not_after", "到期日", "Expires"),
    ("days_left", "剩余天数", "Days left"),
    ("endpoints", "TLS/TLCP服务", "TLS/TLCP endpoints"),
    ("tls13", "支持TLS 1.3", "Support TLS 1.3"),
    (
        "legacy",
        "仍接受SSLv3/TLS 1.0/1.1",
        "Still accept SSLv3/TLS 1.0/1.1",
    ),
    ("sm", "支持国密(TLCP/SM套件)", "Support SM (TLCP/SM suites)"),
    ("sm_pct", "国密覆盖率", "SM coverage"),
    ("none", "本期未发现此类问题。", "None found in this period."),
    ("unassigned", "未明确归属单位", "Unassigned"),
    ("items", "项", "items"),
    ("overdue_mark", "逾期", "overdue"),
    (
        "carried_mark",
        "往期通报逾期未整改",
        "overdue since an earlier bulletin",
    ),
    ("sev_critical", "严重", "Critical"),
    ("sev_high", "高危", "High"),
    ("sev_medium", "中危", "Medium"),
    ("sev_low", "低危", "Low"),
    ("sev_info", "提示", "Info"),
    ("net_extranet", "电子政务外网", "E-government extranet"),
    ("net_metro", "城域网", "Metropolitan network"),
    ("net_departmental", "部门专网", "Departmental network"),
    ("net_internet", "互联网", "Internet"),
    ("net_other", "其他", "Other"),
    ("status_open", "整改中", "Open"),
    ("status_overdue", "逾期未整改", "Overdue"),
    ("status_resolved", "已整改", "Resolved"),
    ("status_waived", "已豁免", "Waived"),
    ("cert_expired", "已过期", "Expired"),
    ("cert_expiring", "即将过期", "Expiring"),
    ("stage_planned", "规划中", "Planned"),
    ("stage_building", "建设中", "Building"),
    ("stage_trial", "试运行", "Trial"),
    ("stage_accepted", "已验收", "Accepted"),
    ("stage_in_use", "在用", "In use"),
    ("stage_retired", "已下线", "Retired"),
    ("conclusion_pass", "符合", "Pass"),
    ("conclusion_basic_pass", "基本符合", "Basically compliant"),
    ("conclusion_fail", "不符合", "Fail"),
    ("proj_ok", "正常", "OK"),
    (
        "proj_live_early",
        "未验收即上线运行",
        "Live before acceptance",
    ),
    ("proj_mlps_missing", "未开展等保测评", "No MLPS assessment"),
    (
        "proj_mlps_overdue",
        "等保测评已逾期",
        "MLPS assessment overdue",
    ),
    (
        "proj_mlps_soon",
        "等保测评即将到期",
        "MLPS assessment due soon",
    ),
    ("proj_crypto_missing", "未开展密评", "No crypto assessment"),
    (
        "proj_crypto_overdue",
        "密评已逾期",
        "Crypto assessment overdue",
    ),
    (
        "proj_crypto_soon",
        "密评即将到期",
        "Crypto assessment due soon",
    ),
    (
        "merge_done",
        "已完成（本期无在网主机）",
        "Done (no live hosts)",
    ),
    ("merge_overdue", "逾期未完成归并", "Overdue"),
    ("merge_on_track", "推进中", "In progress"),
    ("merge_no_date", "未明确归并期限", "No deadline set"),
];
