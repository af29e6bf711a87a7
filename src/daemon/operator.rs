//! The bureau's operator page of the rectification loop: `GET /operator` lists the waiver
//! requests and disputes the departments sent through their links, with the finding, the
//! department, the reason and the proposed expiry; `POST /operator/requests/{id}` decides one.
//!
//! Decisions ([`DecisionKind`]): a waiver request is approved (approver, expiry: the waiver
//! machinery honours it beside the config's `exceptions`) or denied with a note; a dispute is
//! closed with a note (the finding stands), turned into a waiver (approver, expiry), or into a
//! rule override (the rule is off for that finding's locus — address, port, department — until
//! an operator removes the row; severities stay with the config's `rules.overrides`, which
//! apply everywhere). A denial and a closed dispute are mailed to the department through the
//! durable outbox (one message per decision, zh by default as `bulletin.lang`, with its link
//! when `daemon.public_url` is set). The JSON API (`/api/v1/rectification/...`,
//! [`super::rectify`]) goes through the same [`decide`].
//!
//! Authentication: a browser cannot send the operator's bearer token, so the page has a login
//! form (`POST /operator/login`) that takes the operator token (`daemon.api_token_env`) and
//! sets a session cookie: signed like the links ([`crate::rectify`]), valid
//! [`crate::rectify::SESSION_HOURS`] hours, `HttpOnly`, `SameSite=Strict`, `Path=/operator`,
//! and `Secure` when the daemon serves TLS. No server state: `POST /operator/logout` clears
//! the cookie. Every form carries a CSRF token bound to the session. The read token and the
//! basic-auth users stay read-only: they cannot log in here. Every request is audited by the
//! guard of [`super::api`] with the principal `operator` (or `-` before a login) and what was
//! decided or why it was refused.
//!
//! Pages: server-rendered (`templates/operator.html`), Chinese unless `?lang=en`, no script,
//! the same headers as the department page (no-store, no-referrer, CSP without scripts).

use std::collections::HashMap;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::Daemon;
use super::api::{AuditNote, LinkPrincipal};
use super::rectify::{MAX_TEXT, html};
use crate::finding::Finding;
use crate::store::{
    Answer, AnswerKind, Decision, DecisionKind, ExceptionKind, NewMail, StoredException,
};

type Shared = std::sync::Arc<Daemon>;

/// The session cookie's name.
const COOKIE: &str = "np_operator";

/// The one actor a session made from the operator token names.
const ACTOR: &str = "operator";

/// Decided requests shown below the pending ones, at most.
const RECENT: usize = 30;

#[derive(Debug, Default, Deserialize)]
pub(super) struct PageQuery {
    lang: Option<String>,
    done: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    lang: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct DecideForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    approver: String,
    #[serde(default)]
    expires_on: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    lang: String,
}

fn texts(zh: bool) -> std::collections::BTreeMap<&'static str, &'static str> {
    const T: &[(&str, &str, &str)] = &[
        ("title", "整改反馈处理", "Rectification requests"),
        ("other_lang", "English", "中文"),
        ("login", "操作员登录", "Operator login"),
        (
            "login_intro",
            "请输入操作员令牌（daemon.api_token_env）。只读令牌和只读账户不能在此处理申请。",
            "Enter the operator token (daemon.api_token_env). Read-only tokens and users cannot decide requests.",
        ),
        ("token", "操作员令牌", "Operator token"),
        ("sign_in", "登录", "Sign in"),
        ("logout", "退出", "Sign out"),
        ("pending", "待处理的申请", "Pending requests"),
        (
            "none",
            "目前没有待处理的豁免申请或异议。",
            "No waiver request or dispute is pending.",
        ),
        ("recent", "最近的处理记录", "Recent decisions"),
        ("department", "单位", "Department"),
        ("finding", "问题", "Finding"),
        ("reason", "理由", "Reason"),
        ("proposed_expiry", "拟定豁免期限", "Proposed expiry"),
        ("received", "提交时间", "Received"),
        ("due", "整改期限", "Due"),
        ("waiver", "豁免申请", "Waiver request"),
        ("dispute", "异议", "Dispute"),
        ("approver", "批准人", "Approver"),
        ("expires_on", "豁免期限", "Expires on"),
        ("note", "处理意见", "Note to the department"),
        ("approve", "批准豁免", "Approve the waiver"),
        ("deny", "不予批准", "Deny"),
        (
            "close",
            "维持原问题，关闭异议",
            "Close the dispute (finding stands)",
        ),
        ("to_waiver", "转为豁免", "Turn into a waiver"),
        (
            "to_override",
            "转为规则覆盖（此处不再适用该规则）",
            "Turn into a rule override (rule off here)",
        ),
        ("decided_by", "处理人", "by"),
        ("done", "已处理。", "Done."),
        ("gone", "该问题已不存在", "finding no longer recorded"),
    ];
    T.iter()
        .map(|(k, z, e)| (*k, if zh { *z } else { *e }))
        .collect()
}

/// What a decision is called, for the operator and for the department.
pub(super) fn decision_label(kind: DecisionKind, zh: bool) -> &'static str {
    match (kind, zh) {
        (DecisionKind::Approved, true) => "豁免已批准",
        (DecisionKind::Approved, false) => "waiver approved",
        (DecisionKind::Denied, true) => "豁免未予批准",
        (DecisionKind::Denied, false) => "waiver denied",
        (DecisionKind::Closed, true) => "异议未予采纳，问题维持",
        (DecisionKind::Closed, false) => "dispute closed: the finding stands",
        (DecisionKind::Waived, true) => "异议转为豁免",
        (DecisionKind::Waived, false) => "dispute turned into a waiver",
        (DecisionKind::Overridden, true) => "异议成立，规则已覆盖",
        (DecisionKind::Overridden, false) => "dispute upheld: rule overridden here",
    }
}

#[derive(Debug, Serialize)]
struct RequestView {
    id: String,
    waiver: bool,
    kind_label: &'static str,
    department: String,
    title: String,
    target: String,
    rule: String,
    severity: &'static str,
    severity_label: &'static str,
    due: String,
    reason: String,
    proposed_expiry: String,
    at: String,
    /// Decided: the decision, who, when, the note.
    decision: Option<String>,
}

#[derive(Debug, Serialize)]
struct PageView<'a> {
    zh: bool,
    lang: &'static str,
    t: std::collections::BTreeMap<&'static str, &'static str>,
    org: &'a str,
    login: bool,
    csrf: String,
    pending: Vec<RequestView>,
    recent: Vec<RequestView>,
    flash: Option<&'static str>,
    error: Option<String>,
    today: String,
    max_text: usize,
}

/// Who the request's session cookie names, if it is valid now.
async fn session(daemon: &Daemon, headers: &HeaderMap) -> Option<(String, String)> {
    let token = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())?;
    let key = daemon.link_key().await.ok()?;
    let actor = key.verify_session(&token, Utc::now()).ok()?;
    Some((actor, token))
}

fn with_principal(mut response: Response, who: &str, note: Option<String>) -> Response {
    let ext = response.extensions_mut();
    ext.insert(LinkPrincipal(who.to_string()));
    if let Some(n) = note {
        ext.insert(AuditNote(n));
    }
    response
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

fn lang_query(zh: bool, first: bool) -> &'static str {
    match (zh, first) {
        (true, _) => "",
        (false, true) => "?lang=en",
        (false, false) => "&lang=en",
    }
}

async fn render(
    daemon: &Daemon,
    zh: bool,
    session: Option<&str>,
    flash: Option<&'static str>,
    error: Option<(StatusCode, String)>,
) -> Response {
    let loaded = daemon.current();
    let config = &loaded.config;
    let tz = config.organisation.timezone;
    let t = texts(zh);
    let (status, error) = match error {
        Some((s, e)) => (s, Some(e)),
        None => (StatusCode::OK, None),
    };
    let mut view = PageView {
        zh,
        lang: if zh { "zh" } else { "en" },
        t,
        org: &config.organisation.name,
        login: session.is_none(),
        csrf: String::new(),
        pending: Vec::new(),
        recent: Vec::new(),
        flash,
        error,
        today: Utc::now().with_timezone(&tz).date_naive().to_string(),
        max_text: MAX_TEXT,
    };
    if let Some(token) = session {
        let key = match daemon.link_key().await {
            Ok(k) => k,
            Err(e) => return failure(zh, e.to_string()),
        };
        view.csrf = key.csrf(token);
        let (requests, decisions, findings) = match (
            daemon.store.requests(true).await,
            daemon.store.decisions().await,
            daemon.store.findings().await,
        ) {
            (Ok(r), Ok(d), Ok(f)) => (r, d, f),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return failure(zh, e.to_string());
            }
        };
        let by_fp: HashMap<&str, &Finding> = findings
            .iter()
            .map(|f| (f.fingerprint.as_str(), f))
            .collect();
        let lang = if zh { "zh" } else { "en" };
        let labels = crate::bulletin::labels(lang);
        let time = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
        let view_of = |id: &str, a: &Answer| {
            let f = by_fp.get(a.fingerprint.as_str());
            let decision = decisions.get(id).map(|d| {
                let mut s = format!(
                    "{} · {} {} · {}",
                    decision_label(d.kind, zh),
                    texts(zh)["decided_by"],
                    d.actor,
                    time(d.at)
                );
                if let Some(e) = d.expires_on {
                    s.push_str(&format!(" · {} {e}", texts(zh)["expires_on"]));
                }
                if let Some(n) = &d.note {
                    s.push_str(&format!(" · {n}"));
                }
                s
            });
            RequestView {
                id: id.to_string(),
                waiver: a.kind == AnswerKind::Waiver,
                kind_label: if a.kind == AnswerKind::Waiver {
                    texts(zh)["waiver"]
                } else {
                    texts(zh)["dispute"]
                },
                department: config
                    .department(&a.department)
                    .map_or_else(|| a.department.clone(), |d| d.name.clone()),
                title: f.map_or_else(
                    || texts(zh)["gone"].to_string(),
                    |f| f.title.lang(lang).to_string(),
                ),
                target: f.map(|f| super::rectify::target_of(f)).unwrap_or_default(),
                rule: f.map(|f| f.rule.clone()).unwrap_or_default(),
                severity: f.map_or("info", |f| f.severity.as_str()),
                severity_label: labels
                    .get(format!("sev_{}", f.map_or("info", |f| f.severity.as_str())).as_str())
                    .copied()
                    .unwrap_or("?"),
                due: f.map(|f| f.due.to_string()).unwrap_or_default(),
                reason: a.note.clone().unwrap_or_default(),
                proposed_expiry: a.proposed_expiry.map(|d| d.to_string()).unwrap_or_default(),
                at: time(a.at),
                decision,
            }
        };
        for (id, a) in &requests {
            if a.state == "received" {
                view.pending.push(view_of(id, a));
            }
        }
        let mut decided: Vec<(&String, &Answer)> = requests
            .iter()
            .filter(|(id, _)| decisions.contains_key(id))
            .map(|(id, a)| (id, a))
            .collect();
        decided.sort_by_key(|(id, _)| std::cmp::Reverse(decisions[*id].at));
        view.recent = decided
            .into_iter()
            .take(RECENT)
            .map(|(id, a)| view_of(id, a))
            .collect();
    }
    match loaded.templates.render_page("operator.html", &view) {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the operator page");
            failure(zh, e.to_string())
        }
    }
}

fn failure(zh: bool, reason: String) -> Response {
    let body = if zh {
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>错误</title></head><body><p>系统暂时无法处理，请稍后再试。</p></body></html>"
    } else {
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Error</title></head><body><p>The request could not be handled; try again later.</p></body></html>"
    };
    let mut r = html(StatusCode::INTERNAL_SERVER_ERROR, body.to_string());
    r.extensions_mut().insert(AuditNote(reason));
    r
}

/// `GET /operator`: the login form, or the requests.
pub(super) async fn page(
    State(daemon): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let zh = q.lang.as_deref() != Some("en");
    match session(&daemon, &headers).await {
        Some((actor, token)) => {
            let flash = q.done.is_some().then(|| texts(zh)["done"]);
            let r = render(&daemon, zh, Some(&token), flash, None).await;
            with_principal(r, &actor, Some("operator page".to_string()))
        }
        None => {
            let r = render(&daemon, zh, None, None, None).await;
            with_principal(r, "-", Some("operator login form".to_string()))
        }
    }
}

/// Whether this daemon answers over TLS (the cookie is then `Secure`).
fn serves_tls(daemon: &Daemon) -> bool {
    daemon
        .current()
        .access
        .web
        .as_ref()
        .is_some_and(|w| w.tls.is_some())
}

/// `POST /operator/login`: the operator token in, a session cookie out.
pub(super) async fn login(
    State(daemon): State<Shared>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        let r = render(
            &daemon,
            true,
            None,
            None,
            Some((StatusCode::BAD_REQUEST, "bad form".to_string())),
        )
        .await;
        return with_principal(r, "-", Some("login refused: bad form".to_string()));
    };
    let zh = form.lang != "en";
    let loaded = daemon.current();
    let ok = loaded
        .access
        .check(
            super::access::Need::Operate,
            Some(&format!("Bearer {}", form.token.trim())),
        )
        .await
        .is_ok();
    if !ok {
        let message = if zh {
            "令牌不正确，或未配置操作员令牌。"
        } else {
            "Wrong token, or no operator token is configured."
        };
        let r = render(
            &daemon,
            zh,
            None,
            None,
            Some((StatusCode::FORBIDDEN, message.to_string())),
        )
        .await;
        return with_principal(r, "-", Some("login refused: wrong token".to_string()));
    }
    let key = match daemon.link_key().await {
        Ok(k) => k,
        Err(e) => return failure(zh, e.to_string()),
    };
    let expires = Utc::now() + chrono::Duration::hours(crate::rectify::SESSION_HOURS);
    let token = match key.sign_session(ACTOR, expires) {
        Ok(t) => t,
        Err(e) => return failure(zh, e.to_string()),
    };
    let mut response = redirect(&format!("/operator{}", lang_query(zh, true)));
    let cookie = format!(
        "{COOKIE}={token}; Path=/operator; HttpOnly; SameSite=Strict; Max-Age={}{}",
        crate::rectify::SESSION_HOURS * 3600,
        if serves_tls(&daemon) { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    with_principal(response, ACTOR, Some("operator login".to_string()))
}

/// `POST /operator/logout`: the cookie cleared.
pub(super) async fn logout(State(daemon): State<Shared>, headers: HeaderMap) -> Response {
    let who = session(&daemon, &headers)
        .await
        .map_or_else(|| "-".to_string(), |(a, _)| a);
    let mut response = redirect("/operator");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "np_operator=; Path=/operator; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    with_principal(response, &who, Some("operator logout".to_string()))
}

/// Why a decision was refused: the status and the message.
pub(super) type Refused = (StatusCode, String);

/// What a decision asks for, checked.
pub(super) struct Asked {
    pub kind: DecisionKind,
    pub actor: String,
    /// Approved, waived, overridden: who approves (a name).
    pub approver: Option<String>,
    pub expires_on: Option<NaiveDate>,
    pub note: Option<String>,
}

/// Decide request `id` as `asked`: the store (decision, waiver or override), the waivers in
/// force, and the department's mail for a denial or a closed dispute. The one path of the
/// operator page and the JSON API.
pub(super) async fn decide(
    daemon: &Daemon,
    id: &str,
    asked: Asked,
    zh: bool,
) -> Result<(Answer, Decision, Option<StoredException>), Refused> {
    let bad = |m: &str, e: &str| {
        (
            StatusCode::BAD_REQUEST,
            (if zh { m } else { e }).to_string(),
        )
    };
    let internal = |e: crate::store::StoreError| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let request = daemon.store.answer(id).await.map_err(internal)?;
    let Some(request) = request.filter(|a| a.kind == asked.kind.decides() && a.state == "received")
    else {
        return Err((
            StatusCode::NOT_FOUND,
            if zh {
                "没有此编号、可作此处理的待处理申请"
            } else {
                "no undecided request with this id that this decision applies to"
            }
            .to_string(),
        ));
    };
    if let Some(n) = &asked.note
        && n.chars().count() > MAX_TEXT
    {
        return Err(bad("处理意见过长", "the note is too long"));
    }
    let tz = daemon.current().config.organisation.timezone;
    let today = Utc::now().with_timezone(&tz).date_naive();
    let needs_exception = matches!(
        asked.kind,
        DecisionKind::Approved | DecisionKind::Waived | DecisionKind::Overridden
    );
    let approver = asked.approver.as_deref().map(str::trim).unwrap_or("");
    if needs_exception && (approver.is_empty() || approver.chars().count() > 200) {
        return Err(bad(
            "请填写批准人（1至200字）",
            "approver: 1 to 200 characters",
        ));
    }
    let expires_on = match asked.kind {
        DecisionKind::Approved => asked.expires_on.or(request.proposed_expiry),
        DecisionKind::Waived => asked.expires_on,
        _ => None,
    };
    if matches!(asked.kind, DecisionKind::Approved | DecisionKind::Waived)
        && expires_on.is_none_or(|d| d < today)
    {
        return Err(bad(
            "请填写豁免期限（今天或以后，YYYY-MM-DD）",
            "expires_on must be today or later (YYYY-MM-DD)",
        ));
    }
    let exception = if needs_exception {
        let findings = daemon.store.findings().await.map_err(internal)?;
        let Some(f) = findings
            .iter()
            .find(|f| f.fingerprint == request.fingerprint)
        else {
            return Err((
                StatusCode::NOT_FOUND,
                (if zh {
                    "该申请对应的问题已不存在"
                } else {
                    "the finding of this request is gone"
                })
                .to_string(),
            ));
        };
        let (kind, expires) = match asked.kind {
            DecisionKind::Overridden => (ExceptionKind::Override, crate::store::override_expires()),
            _ => (ExceptionKind::Waiver, expires_on.unwrap_or(today)),
        };
        Some(StoredException {
            id: id.to_string(),
            kind,
            rule: f.rule.clone(),
            ip: f.ip.clone(),
            port: f.port,
            department: f.department.clone(),
            reason: asked
                .note
                .clone()
                .filter(|n| !n.trim().is_empty())
                .or_else(|| request.note.clone())
                .unwrap_or_default(),
            approver: approver.to_string(),
            expires_on: expires,
        })
    } else {
        None
    };
    let decision = Decision {
        answer_id: id.to_string(),
        at: Utc::now(),
        kind: asked.kind,
        actor: asked.actor,
        note: asked.note.filter(|n| !n.trim().is_empty()),
        expires_on,
    };
    match daemon.store.decide(&decision, exception.as_ref()).await {
        Ok(true) => {}
        Ok(false) => {
            return Err((
                StatusCode::CONFLICT,
                (if zh {
                    "该申请已被处理"
                } else {
                    "the request was decided meanwhile"
                })
                .to_string(),
            ));
        }
        Err(e) => return Err(internal(e)),
    }
    if exception.is_some()
        && let Err(e) = daemon.refresh_waivers().await
    {
        tracing::error!(error = %e, "cannot read the stored waivers back");
    }
    if decision.kind.notifies() {
        notify(daemon, id, &request, &decision).await;
    }
    Ok((request, decision, exception))
}

#[derive(Debug, Serialize)]
struct DecisionMail<'a> {
    zh: bool,
    org: &'a str,
    dept_name: &'a str,
    label: &'static str,
    kind_label: &'static str,
    title: String,
    target: String,
    due: String,
    reason: String,
    note: String,
    link: Option<String>,
    at: String,
}

/// Queue the department's mail about `decision` (once: the outbox key is the answer's id) and
/// flush what is due, in the background. A failure is logged: the decision stands, and the
/// outbox retries what it queued.
async fn notify(daemon: &Daemon, id: &str, request: &Answer, decision: &Decision) {
    let loaded = daemon.current();
    let config = &loaded.config;
    let Some(smtp) = config.smtp.as_ref() else {
        tracing::warn!(department = %request.department, "no smtp section: the decision is not mailed");
        return;
    };
    let Some(dept) = config.department(&request.department) else {
        return;
    };
    if dept.emails.is_empty() {
        tracing::warn!(department = %dept.id, "no emails in the register: the decision is not mailed");
        return;
    }
    let zh = config.bulletin.lang != "en";
    let lang = if zh { "zh" } else { "en" };
    let tz = config.organisation.timezone;
    let finding = daemon.store.findings().await.ok().and_then(|all| {
        all.into_iter()
            .find(|f| f.fingerprint == request.fingerprint)
    });
    let link = match &config.daemon.public_url {
        None => None,
        Some(url) => match daemon.link_key().await {
            Ok(key) => key
                .sign(&crate::rectify::Link {
                    department: dept.id.clone(),
                    period: request.period.clone(),
                    expires: Utc::now() + chrono::Duration::days(crate::rectify::LINK_VALID_DAYS),
                })
                .ok()
                .map(|t| crate::rectify::page_url(url, &t)),
            Err(_) => None,
        },
    };
    let view = DecisionMail {
        zh,
        org: &config.organisation.name,
        dept_name: &dept.name,
        label: decision_label(decision.kind, zh),
        kind_label: match (request.kind, zh) {
            (AnswerKind::Waiver, true) => "豁免申请",
            (AnswerKind::Waiver, false) => "waiver request",
            (_, true) => "异议",
            (_, false) => "dispute",
        },
        title: finding
            .as_ref()
            .map(|f| f.title.lang(lang).to_string())
            .unwrap_or_default(),
        target: finding
            .as_ref()
            .map(super::rectify::target_of)
            .unwrap_or_default(),
        due: finding
            .as_ref()
            .map(|f| f.due.to_string())
            .unwrap_or_default(),
        reason: request.note.clone().unwrap_or_default(),
        note: decision.note.clone().unwrap_or_default(),
        link,
        at: decision
            .at
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M")
            .to_string(),
    };
    let (text, html) = match (
        loaded.templates.render_page("decision.txt", &view),
        loaded.templates.render_page("decision.html", &view),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot render the decision mail");
            return;
        }
    };
    let subject = if zh {
        format!("【整改反馈处理结果】{}：{}", dept.name, view.label)
    } else {
        format!(
            "[Rectification request decided] {}: {}",
            dept.name, view.label
        )
    };
    let letter = crate::output::mail::Letter {
        from: smtp.from.clone(),
        to: dept.emails.clone(),
        cc: Vec::new(),
        subject,
        text,
        html,
        attachments: Vec::new(),
    };
    let composed = match crate::output::mail::compose(&letter) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot compose the decision mail");
            return;
        }
    };
    let mail = NewMail {
        key: format!("{}|decision|{id}", request.period),
        kind: "decision".to_string(),
        period: request.period.clone(),
        sender: composed.sender,
        recipients: composed.recipients,
        subject: composed.subject,
        message: composed.message,
    };
    if let Err(e) = daemon.store.enqueue_mail(&mail, Utc::now(), false).await {
        tracing::error!(error = %e, "cannot queue the decision mail");
        return;
    }
    let (config, store) = (loaded.config.clone(), daemon.store.clone());
    tokio::spawn(async move {
        if let Err(error) = crate::bulletin::flush_due(&config, &store).await {
            let error = crate::app::error_chain(&error);
            tracing::warn!(%error, "decision mail queued, not sent yet");
        }
    });
}

/// `POST /operator/requests/{id}`: one decision from the page.
pub(super) async fn decide_form(
    State(daemon): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Result<Form<DecideForm>, FormRejection>,
) -> Response {
    let Some((actor, token)) = session(&daemon, &headers).await else {
        let r = render(
            &daemon,
            true,
            None,
            None,
            Some((
                StatusCode::FORBIDDEN,
                "请先登录 / sign in first".to_string(),
            )),
        )
        .await;
        return with_principal(r, "-", Some("decision refused: no session".to_string()));
    };
    let Ok(Form(form)) = form else {
        let r = render(
            &daemon,
            true,
            Some(&token),
            None,
            Some((StatusCode::BAD_REQUEST, "bad form".to_string())),
        )
        .await;
        return with_principal(r, &actor, Some("decision refused: bad form".to_string()));
    };
    let zh = form.lang != "en";
    let key = match daemon.link_key().await {
        Ok(k) => k,
        Err(e) => return failure(zh, e.to_string()),
    };
    if form.csrf.is_empty() || !key.csrf_ok(&token, &form.csrf) {
        let r = render(
            &daemon,
            zh,
            Some(&token),
            None,
            Some((StatusCode::FORBIDDEN, "csrf".to_string())),
        )
        .await;
        return with_principal(
            r,
            &actor,
            Some("decision refused: csrf token missing or wrong".to_string()),
        );
    }
    let kind = match form.action.as_str() {
        "approve" => Some(DecisionKind::Approved),
        "deny" => Some(DecisionKind::Denied),
        "close" => Some(DecisionKind::Closed),
        "waive" => Some(DecisionKind::Waived),
        "override" => Some(DecisionKind::Overridden),
        _ => None,
    };
    let Some(kind) = kind else {
        let r = render(
            &daemon,
            zh,
            Some(&token),
            None,
            Some((
                StatusCode::BAD_REQUEST,
                format!("unknown action {:?}", form.action),
            )),
        )
        .await;
        return with_principal(
            r,
            &actor,
            Some("decision refused: unknown action".to_string()),
        );
    };
    let expires_on = match form.expires_on.trim() {
        "" => None,
        text => match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            Ok(d) => Some(d),
            Err(_) => {
                let message = if zh {
                    "豁免期限格式应为 YYYY-MM-DD"
                } else {
                    "expires_on: expected YYYY-MM-DD"
                };
                let r = render(
                    &daemon,
                    zh,
                    Some(&token),
                    None,
                    Some((StatusCode::BAD_REQUEST, message.to_string())),
                )
                .await;
                return with_principal(r, &actor, Some(format!("decision refused: {message}")));
            }
        },
    };
    let note = Some(form.note.trim().to_string()).filter(|n| !n.is_empty());
    if kind.notifies() && note.is_none() {
        let message = if zh {
            "请填写处理意见（将发送给该单位）"
        } else {
            "a note to the department is required"
        };
        let r = render(
            &daemon,
            zh,
            Some(&token),
            None,
            Some((StatusCode::BAD_REQUEST, message.to_string())),
        )
        .await;
        return with_principal(r, &actor, Some(format!("decision refused: {message}")));
    }
    let asked = Asked {
        kind,
        actor: actor.clone(),
        approver: Some(form.approver.clone()),
        expires_on,
        note,
    };
    match decide(&daemon, &id, asked, zh).await {
        Ok((request, decision, _)) => {
            let r = redirect(&format!("/operator?done=1{}", lang_query(zh, false)));
            with_principal(
                r,
                &actor,
                Some(format!(
                    "{} request {id} of {} ({}){}",
                    decision.kind.as_str(),
                    request.department,
                    request.fingerprint,
                    decision
                        .expires_on
                        .map(|d| format!(", until {d}"))
                        .unwrap_or_default()
                )),
            )
        }
        Err((status, message)) => {
            let r = render(
                &daemon,
                zh,
                Some(&token),
                None,
                Some((status, message.clone())),
            )
            .await;
            with_principal(r, &actor, Some(format!("decision refused: {message}")))
        }
    }
}
