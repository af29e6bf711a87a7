//! The departments' rectification page: `GET /r/{token}` shows the open findings of the
//! link's department; `POST /r/{token}` stores one answer (已整改 done, 申请豁免 waiver
//! request, 有异议 dispute).
//!
//! Input: the signed link in the path ([`crate::rectify`]) — the page's only authority, no
//! token or account — and, on POST, an urlencoded form (`csrf`, `item`, `answer`, `note`,
//! `expiry`, `lang`). Output: server-rendered HTML (`templates/rectify.html`, Chinese unless
//! `?lang=en`), or a refusal page: 403 for a tampered, expired or unknown-department link, a
//! wrong or missing CSRF token, or an item that is not an open finding of the link's
//! department; 400 for an answer that does not hold together. The guard of [`super::api`]
//! audits every request here with the principal `link:DEPARTMENT` (or `link:-` when the link
//! does not verify) and what was answered or why it was refused.
//!
//! The bureau's side (operator API, the usual tokens): `GET /api/v1/rectification/requests`
//! lists the undecided waiver requests and disputes (`?all=1`: every one);
//! `POST .../requests/{id}/approve` (`{"approver": "...", "expires_on": "YYYY-MM-DD"}`,
//! the expiry defaulting to the one proposed) keeps the waiver in the store, where the waiver
//! machinery reads it beside the config's `exceptions`; `POST .../requests/{id}/deny`
//! (`{"note": "..."}` optional) denies a waiver request or closes a dispute. Both go through
//! [`super::operator::decide`], the step the operator page uses (a denial is mailed to the
//! department); the department's page shows each decision with the bureau's note.
//!
//! Responses carry `Referrer-Policy: no-referrer` and `Cache-Control: no-store` (the path is a
//! credential) and a CSP that allows no script at all.

use std::collections::{BTreeMap, HashMap};

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::Daemon;
use super::api::{AuditNote, LinkPrincipal, Peer};
use crate::finding::{self, Finding};
use crate::rectify::{Link, LinkKey};
use crate::store::{Answer, AnswerKind, FindingFilter};

/// Longest note or reason kept, in characters.
pub const MAX_TEXT: usize = 2000;

type Shared = std::sync::Arc<Daemon>;

#[derive(Debug, Default, Deserialize)]
pub(super) struct PageQuery {
    lang: Option<String>,
    answered: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct AnswerForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    item: String,
    #[serde(default)]
    answer: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    expiry: String,
    #[serde(default)]
    lang: String,
}

/// The page's short texts, by key, Chinese or English.
fn texts(zh: bool) -> BTreeMap<&'static str, &'static str> {
    const T: &[(&str, &str, &str)] = &[
        ("title", "网络安全问题整改反馈", "Rectification feedback"),
        ("period", "通报期", "period"),
        ("other_lang", "English", "中文"),
        (
            "intro",
            "以下是本单位尚未关闭的网络安全问题。请逐项反馈：已整改的，巡检系统将复测；确需豁免的，请说明理由和拟定期限；对问题有异议的，请说明理由。",
            "These are your department's open network security findings. Answer each: once rectified, the bureau re-tests it; ask for a waiver with a reason and a proposed expiry; or dispute it with a reason.",
        ),
        (
            "none",
            "本单位目前没有未关闭的问题。",
            "Your department has no open findings.",
        ),
        ("due", "整改期限", "due"),
        ("overdue", "已逾期", "overdue"),
        ("last_answer", "最近反馈", "last answer"),
        ("done", "已整改", "Rectified"),
        ("waiver", "申请豁免", "Request a waiver"),
        ("dispute", "有异议", "Dispute"),
        ("note_optional", "整改说明（选填）", "Note (optional)"),
        ("reason", "理由", "Reason"),
        ("proposed_expiry", "拟定豁免期限", "Proposed expiry"),
        ("submit_done", "提交：已整改", "Submit: rectified"),
        ("submit_waiver", "提交豁免申请", "Submit the waiver request"),
        ("submit_dispute", "提交异议", "Submit the dispute"),
        ("expires", "本链接有效期至", "This link is valid until"),
        (
            "thanks",
            "反馈已收到，谢谢。",
            "Your answer was received. Thank you.",
        ),
        ("refused", "无法打开此页面", "This page cannot be opened"),
        (
            "closed",
            "已复测通过的问题",
            "Closed after a passed re-test",
        ),
        ("retest_passed", "复测通过", "re-test passed"),
        ("reply", "处理意见", "The bureau's note"),
    ];
    T.iter()
        .map(|(k, z, e)| (*k, if zh { *z } else { *e }))
        .collect()
}

fn kind_label(kind: AnswerKind, zh: bool) -> &'static str {
    match (kind, zh) {
        (AnswerKind::Done, true) => "已整改",
        (AnswerKind::Waiver, true) => "申请豁免",
        (AnswerKind::Dispute, true) => "有异议",
        (AnswerKind::Done, false) => "rectified",
        (AnswerKind::Waiver, false) => "waiver requested",
        (AnswerKind::Dispute, false) => "disputed",
    }
}

/// What became of an answer, for the department: the re-test's verdict or the bureau's.
fn state_label(state: &str, zh: bool) -> Option<&'static str> {
    Some(match (state, zh) {
        ("retest_passed", true) => "复测通过",
        ("retest_passed", false) => "re-test passed",
        ("retest_failed", true) => "整改未通过",
        ("retest_failed", false) => "re-test failed: still present",
        ("received", true) => "已收到，待处理",
        ("received", false) => "received, pending",
        ("approved", true) => "豁免已批准",
        ("approved", false) => "waiver approved",
        ("denied", true) => "豁免未予批准",
        ("denied", false) => "waiver not granted",
        ("closed", true) => "异议未予采纳，问题维持",
        ("closed", false) => "dispute not upheld: the finding stands",
        ("waived", true) => "异议转为豁免",
        ("waived", false) => "dispute turned into a waiver",
        ("overridden", true) => "异议成立，规则已覆盖",
        ("overridden", false) => "dispute upheld: rule overridden",
        _ => return None,
    })
}

#[derive(Debug, Serialize)]
struct AnswerView {
    label: &'static str,
    at: String,
    note: Option<String>,
    /// 复测通过, 整改未通过, pending.
    state: Option<&'static str>,
    failed: bool,
    /// The bureau's note on its decision (denied, closed, approved...), when it wrote one.
    reply: Option<String>,
}

/// A finding of the department closed by its re-test (复测通过).
#[derive(Debug, Serialize)]
struct ClosedView {
    title: String,
    target: String,
    at: String,
}

#[derive(Debug, Serialize)]
struct ItemView {
    fingerprint: String,
    rule: String,
    severity: &'static str,
    severity_label: &'static str,
    title: String,
    evidence: String,
    target: String,
    due: String,
    overdue: bool,
    answer: Option<AnswerView>,
}

#[derive(Debug, Serialize)]
struct PageView<'a> {
    lang: &'static str,
    zh: bool,
    t: BTreeMap<&'static str, &'static str>,
    org: &'a str,
    dept_name: &'a str,
    period: &'a str,
    expires: String,
    self_url: &'a str,
    csrf: String,
    items: Vec<ItemView>,
    closed: Vec<ClosedView>,
    flash: Option<&'static str>,
    error: Option<String>,
    max_text: usize,
}

/// A page the browser must not cache, frame, or leak the path of.
pub(super) fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}

/// A refusal: a short page (no detail beyond the reason's class) and the audit note.
fn refuse(status: StatusCode, zh: bool, who: Option<&str>, reason: String) -> Response {
    let t = texts(zh);
    let body = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title></head><body><h1>{}</h1><p>{}</p></body></html>",
        t["refused"],
        t["refused"],
        if status == StatusCode::FORBIDDEN {
            if zh {
                "链接无效、已过期或无权访问。请使用最新通知中的链接。"
            } else {
                "The link is invalid, expired or not allowed here. Use the link in your latest notice."
            }
        } else if zh {
            "系统暂时无法处理，请稍后再试。"
        } else {
            "The request could not be handled; try again later."
        }
    );
    let mut response = html(status, body);
    let ext = response.extensions_mut();
    ext.insert(AuditNote(reason));
    if let Some(who) = who {
        ext.insert(LinkPrincipal(format!("link:{who}")));
    }
    response
}

/// The link key in force: the configured one, else the one kept in the store.
async fn key(daemon: &Daemon) -> Result<LinkKey, Response> {
    match daemon.link_key().await {
        Ok(k) => Ok(k),
        Err(e) => {
            tracing::error!(error = %e, "no link key");
            Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                true,
                None,
                e.to_string(),
            ))
        }
    }
}

/// The link `token` names, checked: signature, expiry, a department the config knows.
async fn verified(daemon: &Daemon, token: &str, zh: bool) -> Result<(LinkKey, Link), Response> {
    let key = key(daemon).await?;
    let link = key
        .verify(token, Utc::now())
        .map_err(|e| refuse(StatusCode::FORBIDDEN, zh, None, e.to_string()))?;
    let known = daemon
        .current()
        .config
        .departments
        .iter()
        .any(|d| d.id == link.department);
    if !known {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            zh,
            Some(&link.department),
            "link of a department no longer configured".to_string(),
        ));
    }
    Ok((key, link))
}

/// The department's open findings that no active waiver covers.
async fn open_items(daemon: &Daemon, department: &str) -> Result<Vec<Finding>, Response> {
    let filter = FindingFilter {
        department: Some(department.to_string()),
        ..FindingFilter::default()
    };
    let list = daemon
        .note_store("findings", daemon.store.open_findings(&filter).await)
        .map_err(|e| {
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                true,
                Some(department),
                e.to_string(),
            )
        })?;
    let loaded = daemon.current();
    let config = &loaded.config;
    let today = Utc::now()
        .with_timezone(&config.organisation.timezone)
        .date_naive();
    Ok(list
        .into_iter()
        .filter(|f| finding::waiver_for(config, f, today).is_none())
        .collect())
}

/// Where a finding is: `ip:port`, the address, or the project.
pub(super) fn target_of(f: &Finding) -> String {
    match (&f.ip, f.port) {
        (Some(ip), Some(port)) => format!("{ip}:{port}"),
        (Some(ip), None) => ip.clone(),
        (None, _) => f.project.clone().unwrap_or_default(),
    }
}

/// Render the page of `link`.
async fn page(
    daemon: &Daemon,
    key: &LinkKey,
    token: &str,
    link: &Link,
    zh: bool,
    flash: Option<&'static str>,
    error: Option<(StatusCode, String)>,
) -> Response {
    let items = match open_items(daemon, &link.department).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let answers = match daemon.store.answers(&link.department).await {
        Ok(a) => a,
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                zh,
                Some(&link.department),
                e.to_string(),
            );
        }
    };
    let mut latest: HashMap<&str, &Answer> = HashMap::new();
    for a in &answers {
        latest.insert(a.fingerprint.as_str(), a);
    }
    // A note the bureau could not be read for is only not shown: the page still works.
    let replies = daemon
        .store
        .decision_notes(&link.department)
        .await
        .unwrap_or_default();
    let decided = |state: &str| crate::store::DecisionKind::parse(state).is_some();
    let loaded = daemon.current();
    let config = &loaded.config;
    let tz = config.organisation.timezone;
    let today = Utc::now().with_timezone(&tz).date_naive();
    let lang = if zh { "zh" } else { "en" };
    let labels = crate::bulletin::labels(lang);
    let dept_name = config
        .departments
        .iter()
        .find(|d| d.id == link.department)
        .map_or(link.department.as_str(), |d| d.name.as_str());
    let views = items
        .iter()
        .map(|f| ItemView {
            fingerprint: f.fingerprint.clone(),
            rule: f.rule.clone(),
            severity: f.severity.as_str(),
            severity_label: labels
                .get(format!("sev_{}", f.severity.as_str()).as_str())
                .copied()
                .unwrap_or("?"),
            title: f.title.lang(lang).to_string(),
            evidence: f.evidence.lang(lang).to_string(),
            target: target_of(f),
            due: f.due.format("%Y-%m-%d").to_string(),
            overdue: f.due < today,
            answer: latest.get(f.fingerprint.as_str()).map(|a| AnswerView {
                label: kind_label(a.kind, zh),
                at: a.at.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string(),
                note: a.note.clone(),
                state: state_label(&a.state, zh),
                failed: a.state == "retest_failed" || a.state == "denied" || a.state == "closed",
                reply: decided(&a.state)
                    .then(|| replies.get(&a.fingerprint).cloned())
                    .flatten(),
            }),
        })
        .collect();
    let open: std::collections::HashSet<&str> =
        items.iter().map(|f| f.fingerprint.as_str()).collect();
    let passed: Vec<&Answer> = latest
        .values()
        .filter(|a| a.state == "retest_passed" && !open.contains(a.fingerprint.as_str()))
        .copied()
        .collect();
    let mut closed = Vec::new();
    if !passed.is_empty() {
        let all = daemon.store.findings().await.unwrap_or_default();
        for a in passed {
            if let Some(f) = all.iter().find(|f| f.fingerprint == a.fingerprint) {
                closed.push(ClosedView {
                    title: f.title.lang(lang).to_string(),
                    target: target_of(f),
                    at: a.at.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string(),
                });
            }
        }
        closed.sort_by(|a, b| b.at.cmp(&a.at));
    }
    let (status, error) = match error {
        Some((s, e)) => (s, Some(e)),
        None => (StatusCode::OK, None),
    };
    let view = PageView {
        lang,
        zh,
        t: texts(zh),
        org: &config.organisation.name,
        dept_name,
        period: &link.period,
        expires: link
            .expires
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M")
            .to_string(),
        self_url: token,
        csrf: key.csrf(token),
        items: views,
        closed,
        flash,
        error,
        max_text: MAX_TEXT,
    };
    let mut response = match loaded.templates.render_page("rectify.html", &view) {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the rectification page");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                zh,
                Some(&link.department),
                e.to_string(),
            )
        }
    };
    response
        .extensions_mut()
        .insert(LinkPrincipal(format!("link:{}", link.department)));
    response
}

/// `GET /r/{token}`.
pub(super) async fn show(
    State(daemon): State<Shared>,
    Path(token): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let zh = q.lang.as_deref() != Some("en");
    let (key, link) = match verified(&daemon, &token, zh).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let flash = q.answered.is_some().then(|| texts(zh)["thanks"]);
    let mut response = page(&daemon, &key, &token, &link, zh, flash, None).await;
    if response.status().is_success() {
        response.extensions_mut().insert(AuditNote(format!(
            "page of {} {}",
            link.department, link.period
        )));
    }
    response
}

/// What an answer form says, checked; or the message to show.
fn parse_answer(
    form: &AnswerForm,
    zh: bool,
    today: NaiveDate,
) -> Result<(AnswerKind, Option<String>, Option<NaiveDate>), String> {
    let kind = AnswerKind::parse(&form.answer).ok_or_else(|| {
        if zh {
            "未知的反馈类型"
        } else {
            "unknown answer"
        }
        .to_string()
    })?;
    let note = form.note.trim();
    if note.chars().count() > MAX_TEXT {
        return Err(if zh {
            format!("说明不能超过 {MAX_TEXT} 字")
        } else {
            format!("the text may have at most {MAX_TEXT} characters")
        });
    }
    let note = (!note.is_empty()).then(|| note.to_string());
    if kind != AnswerKind::Done && note.is_none() {
        return Err(if zh {
            "请填写理由"
        } else {
            "a reason is required"
        }
        .to_string());
    }
    let expiry = match kind {
        AnswerKind::Waiver => {
            let day = NaiveDate::parse_from_str(form.expiry.trim(), "%Y-%m-%d").map_err(|_| {
                if zh {
                    "请填写拟定豁免期限（YYYY-MM-DD）"
                } else {
                    "a proposed expiry (YYYY-MM-DD) is required"
                }
                .to_string()
            })?;
            if day <= today {
                return Err(if zh {
                    "豁免期限须晚于今天"
                } else {
                    "the proposed expiry must be after today"
                }
                .to_string());
            }
            Some(day)
        }
        _ => None,
    };
    Ok((kind, note, expiry))
}

/// `POST /r/{token}`: one answer.
pub(super) async fn answer(
    State(daemon): State<Shared>,
    Path(token): Path<String>,
    peer: Option<axum::Extension<Peer>>,
    form: Result<Form<AnswerForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            // Still tell the audit whose link it was, when it verifies.
            let who = match key(&daemon).await {
                Ok(k) => k.verify(&token, Utc::now()).ok().map(|l| l.department),
                Err(r) => return r,
            };
            return refuse(
                StatusCode::BAD_REQUEST,
                true,
                who.as_deref(),
                format!("bad form: {}", e.body_text()),
            );
        }
    };
    let zh = form.lang != "en";
    let (key, link) = match verified(&daemon, &token, zh).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if form.csrf.is_empty() || !key.csrf_ok(&token, &form.csrf) {
        return refuse(
            StatusCode::FORBIDDEN,
            zh,
            Some(&link.department),
            "csrf token missing or wrong".to_string(),
        );
    }
    let items = match open_items(&daemon, &link.department).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    if !items.iter().any(|f| f.fingerprint == form.item) {
        return refuse(
            StatusCode::FORBIDDEN,
            zh,
            Some(&link.department),
            format!("not an open finding of {}: {}", link.department, form.item),
        );
    }
    if form.answer == AnswerKind::Done.as_str() && daemon.retest_pending(&form.item) {
        let message = if zh {
            "该问题正在复测中，请稍后再提交。"
        } else {
            "This finding is being re-tested; answer again later."
        };
        let mut r = page(
            &daemon,
            &key,
            &token,
            &link,
            zh,
            None,
            Some((StatusCode::CONFLICT, message.to_string())),
        )
        .await;
        r.extensions_mut().insert(AuditNote(format!(
            "answer refused: re-test of {} still running",
            form.item
        )));
        return r;
    }
    let tz = daemon.current().config.organisation.timezone;
    let today = Utc::now().with_timezone(&tz).date_naive();
    let (kind, note, proposed_expiry) = match parse_answer(&form, zh, today) {
        Ok(a) => a,
        Err(message) => {
            let mut r = page(
                &daemon,
                &key,
                &token,
                &link,
                zh,
                None,
                Some((StatusCode::BAD_REQUEST, message.clone())),
            )
            .await;
            r.extensions_mut()
                .insert(AuditNote(format!("answer refused: {message}")));
            return r;
        }
    };
    let record = Answer {
        at: Utc::now(),
        department: link.department.clone(),
        period: link.period.clone(),
        fingerprint: form.item.clone(),
        kind,
        note,
        proposed_expiry,
        peer: peer.map_or_else(|| "-".to_string(), |p| p.0.0.to_string()),
        state: "received".to_string(),
    };
    let id = match daemon.store.record_answer(&record).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot record the answer");
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                zh,
                Some(&link.department),
                e.to_string(),
            );
        }
    };
    if kind == AnswerKind::Done
        && let Some(f) = items.iter().find(|f| f.fingerprint == form.item)
    {
        daemon.queue_retest(f.clone(), id);
    }
    let location = format!("{token}?answered=1{}", if zh { "" } else { "&lang=en" });
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    let ext = response.extensions_mut();
    ext.insert(LinkPrincipal(format!("link:{}", link.department)));
    ext.insert(AuditNote(format!(
        "answer {} {} {}",
        kind.as_str(),
        link.department,
        form.item
    )));
    response
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RequestsQuery {
    all: Option<String>,
}

/// `GET /api/v1/rectification/requests`.
pub(super) async fn requests(
    State(daemon): State<Shared>,
    query: Result<Query<RequestsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let all = query.is_ok_and(|Query(q)| q.all.is_some_and(|a| a == "1" || a == "true"));
    let list = match daemon.store.requests(all).await {
        Ok(l) => l,
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let tz = daemon.current().config.organisation.timezone;
    let items: Vec<serde_json::Value> = list
        .iter()
        .map(|(id, a)| {
            serde_json::json!({
                "id": id,
                "at": a.at.with_timezone(&tz).to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
                "department": a.department,
                "period": a.period,
                "finding": a.fingerprint,
                "kind": a.kind.as_str(),
                "reason": a.note,
                "proposed_expiry": a.proposed_expiry.map(|d| d.format("%Y-%m-%d").to_string()),
                "state": a.state,
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "requests": items })).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct Approval {
    approver: String,
    #[serde(default)]
    expires_on: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Denial {
    #[serde(default)]
    note: Option<String>,
}

/// Who called the JSON API, for the decision's record.
fn actor(principal: Option<axum::Extension<super::access::Principal>>) -> String {
    principal.map_or_else(|| "operator".to_string(), |p| p.0.label())
}

/// `POST /api/v1/rectification/requests/{id}/approve`: the waiver request becomes a waiver
/// (through [`super::operator::decide`], like the operator page).
pub(super) async fn approve(
    State(daemon): State<Shared>,
    Path(id): Path<String>,
    principal: Option<axum::Extension<super::access::Principal>>,
    body: Result<axum::Json<Approval>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let axum::Json(body) = match body {
        Ok(b) => b,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let expires_on = match body.expires_on.as_deref() {
        Some(text) => match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            Ok(d) => Some(d),
            Err(_) => {
                return json_error(StatusCode::BAD_REQUEST, "expires_on: expected YYYY-MM-DD");
            }
        },
        None => None,
    };
    let asked = super::operator::Asked {
        kind: crate::store::DecisionKind::Approved,
        actor: actor(principal),
        approver: Some(body.approver),
        expires_on,
        note: None,
    };
    match super::operator::decide(&daemon, &id, asked, false).await {
        Ok((request, decision, Some(exception))) => {
            let expires_on = decision.expires_on.unwrap_or(exception.expires_on);
            let mut response = axum::Json(serde_json::json!({
                "id": id, "state": "approved", "rule": exception.rule, "ip": exception.ip,
                "port": exception.port, "expires_on": expires_on.format("%Y-%m-%d").to_string(),
            }))
            .into_response();
            response.extensions_mut().insert(AuditNote(format!(
                "approved waiver {id} of {} ({}), until {expires_on}, by {}",
                request.department, request.fingerprint, exception.approver
            )));
            response
        }
        Ok(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "no waiver was made"),
        Err((status, message)) => json_error(status, message),
    }
}

/// `POST /api/v1/rectification/requests/{id}/deny` (`{"note": "..."}`, required): a waiver
/// request denied, or a dispute closed; the department is mailed the note.
pub(super) async fn deny(
    State(daemon): State<Shared>,
    Path(id): Path<String>,
    principal: Option<axum::Extension<super::access::Principal>>,
    body: axum::body::Bytes,
) -> Response {
    let note = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Denial>(&body) {
            Ok(d) => d.note,
            Err(e) => {
                return json_error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}"));
            }
        }
    };
    let kind = match daemon.store.answer(&id).await {
        Ok(Some(a)) if a.kind == AnswerKind::Dispute => crate::store::DecisionKind::Closed,
        Ok(_) => crate::store::DecisionKind::Denied,
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let asked = super::operator::Asked {
        kind,
        actor: actor(principal),
        approver: None,
        expires_on: None,
        note,
    };
    match super::operator::decide(&daemon, &id, asked, false).await {
        Ok((_, decision, _)) => {
            let mut response =
                axum::Json(serde_json::json!({ "id": id, "state": decision.kind.as_str() }))
                    .into_response();
            response.extensions_mut().insert(AuditNote(format!(
                "{} request {id}",
                decision.kind.as_str()
            )));
            response
        }
        Err((status, message)) => json_error(status, message),
    }
}
