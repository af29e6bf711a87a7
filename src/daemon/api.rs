//! HTTP: `/metrics`, `/healthz` and the JSON API of docs/api.md, served by axum.
//!
//! Input: requests and the shared [`Daemon`]. Output: responses; every error is JSON
//! `{"error": "..."}` with its status (400 bad request, 401 no or wrong token, 403 no token
//! configured, 404, 405, 413 body over [`BODY_LIMIT`], 500 store failure, 503 stopping or
//! unhealthy).
//!
//! Authentication: `POST /api/v1/scans` needs `Authorization: Bearer TOKEN`, the token being
//! the one the daemon loaded (see `daemon::load`); it is compared in constant time (SHA-256 of
//! both, then a constant-time comparison, so neither content nor length leaks through timing).
//! The read routes are open, like `/metrics`: bind `daemon.listen` to an address only the
//! monitoring network reaches.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::{Daemon, SubmitError};
use crate::finding::{self, Finding};
use crate::output::metrics;
use crate::rules::Severity;
use crate::store::FindingFilter;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 16 * 1024;

type Shared = Arc<Daemon>;

/// The routes, over `daemon`.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/api/v1/findings", get(findings))
        .route("/api/v1/scans", axum::routing::post(submit_scan))
        .route("/api/v1/scans/{id}", get(scan_state))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(daemon)
}

/// Serve [`router`] on `listener` until `stop` is cancelled (then finish the requests in
/// flight).
pub async fn serve(
    listener: tokio::net::TcpListener,
    daemon: Arc<Daemon>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(daemon))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn metrics_text(State(daemon): State<Shared>) -> Response {
    let loaded = daemon.current();
    match metrics::render(&daemon.store, &loaded.config, &daemon.metrics, Utc::now()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics scrape failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

async fn healthz(State(daemon): State<Shared>) -> Response {
    let scheduler = daemon.scheduler_running();
    let store = daemon.store.ping().await;
    let status = if scheduler && store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "unavailable" },
        "scheduler": if scheduler { "running" } else { "stopped" },
        "store": match &store { Ok(()) => "ok".to_string(), Err(e) => e.to_string() },
        "config_reload_success": daemon.metrics.reload_ok(),
    });
    (status, axum::Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct FindingsQuery {
    department: Option<String>,
    severity: Option<String>,
    rule: Option<String>,
}

/// A finding as the API lists it: the report's fields (docs/report.md) plus its lifecycle and
/// whether an active waiver covers it.
#[derive(Debug, Serialize)]
struct FindingView<'a> {
    rule: &'a str,
    severity: Severity,
    ip: Option<&'a str>,
    port: Option<u16>,
    department: Option<&'a str>,
    project: Option<&'a str>,
    title: &'a str,
    evidence: &'a str,
    basis: &'a [String],
    first_seen: String,
    due: String,
    title_en: &'a str,
    evidence_en: &'a str,
    segment: Option<&'a str>,
    approval: Option<&'a str>,
    last_seen: String,
    /// `open`, or `waived` while an unexpired exception covers it.
    state: &'static str,
    waiver: Option<Value>,
    overdue: bool,
    fingerprint: &'a str,
}

async fn findings(
    State(daemon): State<Shared>,
    query: Result<Query<FindingsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let severity = match q.severity.as_deref().map(|s| (s, Severity::parse(s))) {
        None => None,
        Some((_, Some(s))) => Some(s.as_str().to_string()),
        Some((s, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown severity {s:?} (one of {})", Severity::NAMES),
            );
        }
    };
    let filter = FindingFilter {
        department: q.department,
        severity,
        rule: q.rule,
    };
    let list: Vec<Finding> = match daemon.store.open_findings(&filter).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "findings query failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    let loaded = daemon.current();
    let config = &loaded.config;
    let tz = config.organisation.timezone;
    let today = Utc::now().with_timezone(&tz).date_naive();
    let time = |t: chrono::DateTime<Utc>| {
        t.with_timezone(&tz)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
    };
    let views: Vec<FindingView<'_>> = list
        .iter()
        .map(|f| {
            let waiver = finding::waiver_for(config, f, today);
            FindingView {
                rule: &f.rule,
                severity: f.severity,
                ip: f.ip.as_deref(),
                port: f.port,
                department: f.department.as_deref(),
                project: f.project.as_deref(),
                title: &f.title.zh,
                evidence: &f.evidence.zh,
                basis: &f.basis,
                first_seen: time(f.first_seen),
                due: f.due.to_string(),
                title_en: &f.title.en,
                evidence_en: &f.evidence.en,
                segment: f.segment.as_deref(),
                approval: f.approval.as_deref(),
                last_seen: time(f.last_seen),
                state: if waiver.is_some() { "waived" } else { "open" },
                waiver: waiver.map(|w| {
                    json!({
                        "reason": w.reason,
                        "approver": w.approver,
                        "expires_on": w.expires_on.to_string(),
                    })
                }),
                overdue: f.due < today,
                fingerprint: &f.fingerprint,
            }
        })
        .collect();
    axum::Json(json!({ "count": views.len(), "findings": views })).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanBody {
    #[serde(default)]
    segments: Vec<String>,
}

/// Whether the request carries the bearer token `expected`.
fn authorised(headers: &HeaderMap, expected: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.trim().as_bytes());
    let (a, b) = (digest(given), digest(expected));
    a.as_ref().ct_eq(b.as_ref()).into()
}

async fn submit_scan(
    State(daemon): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let loaded = daemon.current();
    let Some(token) = loaded.token.as_deref() else {
        return error(StatusCode::FORBIDDEN, "no API token configured");
    };
    if !authorised(&headers, token) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {BODY_LIMIT} bytes"),
            );
        }
        Err(e) => return error(e.status(), e.body_text()),
    };
    let request: ScanBody = if body.iter().all(u8::is_ascii_whitespace) {
        ScanBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
        }
    };
    match daemon.submit(request.segments.clone()) {
        Ok(id) => {
            let location = format!("/api/v1/scans/{id}");
            let mut response = (
                StatusCode::ACCEPTED,
                axum::Json(json!({
                    "id": id,
                    "state": "queued",
                    "segments": request.segments,
                })),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
        }
        Err(e @ SubmitError::UnknownSegment(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ SubmitError::Stopping) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn scan_state(State(daemon): State<Shared>, Path(id): Path<String>) -> Response {
    let store_error = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "scan state query failed");
        error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    if let Some(job) = daemon.job(&id) {
        let report = match (&job.scan_id, job.state.is_done()) {
            (Some(run), true) => match daemon.store.report(run).await {
                Ok(r) => r,
                Err(e) => return store_error(e),
            },
            _ => None,
        };
        return axum::Json(json!({
            "id": job.id,
            "state": job.state,
            "segments": job.segments,
            "origin": job.origin,
            "submitted_at": job.submitted_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "scan_id": job.scan_id,
            "error": job.error,
            "report": report,
        }))
        .into_response();
    }
    // Not asked for through this daemon (or forgotten): a run the store recorded.
    match daemon.store.run(&id).await {
        Ok(Some(run)) => {
            let report = if run.state == "running" {
                None
            } else {
                match daemon.store.report(&run.id).await {
                    Ok(r) => r,
                    Err(e) => return store_error(e),
                }
            };
            axum::Json(json!({
                "id": run.id,
                "state": run.state,
                "scan_id": run.id,
                "report": report,
            }))
            .into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no scan {id:?}")),
        Err(e) => store_error(e),
    }
}
