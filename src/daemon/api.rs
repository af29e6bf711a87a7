//! HTTP: `/metrics`, `/healthz` and the JSON API of docs/api.md, served by axum.
//!
//! Input: requests and the shared [`Daemon`]. Output: responses; every error is JSON
//! `{"error": "..."}` with its status (400 bad request, 401 no or wrong credentials, 403 a
//! reader posting or no token configured, 404, 405, 413 body over [`BODY_LIMIT`], 429 scan
//! queue full, 500 store failure, 503 stopping or unhealthy: `/healthz` names the store
//! failure, e.g. a corrupt row the API met).
//!
//! Authentication ([`super::access`]): every route but `/healthz` needs a credential; GET
//! the read token, the operator token or a basic-auth user, POST the operator token (a reader
//! posting gets 403); `/metrics` only when the web config has basic-auth users. The
//! exceptions are `/r/{token}` ([`super::rectify`]): its signed link is its authority, checked
//! by its handlers; its audit principal is `link:DEPARTMENT`; and `/operator...`
//! ([`super::operator`]): its handlers check their session cookie (made from the operator
//! token by the page's login form). The sensor routes
//! (`/api/v1/sensors/{id}/...`, [`super::hub`]) take that sensor's own token only
//! (`Access::check_sensor`); their principal is `sensor:ID`. Every request
//! but `/healthz` and successful scrapes is audited (store table `audit`, and an INFO log
//! line): time, principal, peer, method, route, status, what it started or why it was refused.
//!
//! Limits: at most [`MAX_CONNECTIONS`] connections open (the accept loop waits for a free
//! slot, so descriptors are never exhausted); a request's headers (and a TLS handshake) must
//! arrive within [`HEADER_TIMEOUT`], idle keep-alive connections are closed after it too; a
//! request (its body read, its handler) answers 408 after [`REQUEST_TIMEOUT`];
//! bodies over [`BODY_LIMIT`] (a sensor's batch: `hub::BATCH_BODY_LIMIT`) answer 413; more than `daemon.max_queued_scans` scans accepted
//! and not finished answer 429.
//!
//! TLS (web config `tls_server_config`): rustls with the ring provider; each connection takes
//! the TLS config in force, so a reload (SIGHUP) serves renewed certificates at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::access::{Need, Refusal};
use super::{Daemon, SubmitError};
use crate::finding::{self, Finding};
use crate::output::metrics;
use crate::rules::Severity;
use crate::store::{AuditEntry, FindingFilter};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Connections open at once, at most; the next waits in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// Time a client has to send a request's headers (from the connection's start or the end of
/// the previous response) and to complete a TLS handshake.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a request may take from its headers to its response (body read included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The client's address, put in each request's extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What a handler's action did, for the audit (a response extension).
#[derive(Debug, Clone)]
pub(super) struct AuditNote(pub(super) String);

/// Who a rectification page request came from (`link:DEPARTMENT`), set by its handler once
/// the link verified, or an operator page request (`operator`, `-` before a login), set by
/// its handler from the session (a response extension, for the audit).
#[derive(Debug, Clone)]
pub(super) struct LinkPrincipal(pub(super) String);

/// The prefix of the rectification pages, whose signed link is their own authority.
const LINK_PREFIX: &str = "/r/";

/// The operator pages, which check their own session cookie ([`super::operator`]).
const OPERATOR_PAGE: &str = "/operator";

/// The sensors' routes, which take the sensor's own token only (`access::check_sensor`).
const SENSOR_PREFIX: &str = "/api/v1/sensors/";

type Shared = Arc<Daemon>;

/// The routes, over `daemon`.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/api/v1/findings", get(findings))
        .route("/api/v1/scans", axum::routing::post(submit_scan))
        .route("/api/v1/scans/{id}", get(scan_state))
        .route(
            "/api/v1/rectification/requests",
            get(super::rectify::requests),
        )
        .route(
            "/api/v1/rectification/requests/{id}/approve",
            axum::routing::post(super::rectify::approve),
        )
        .route(
            "/api/v1/rectification/requests/{id}/deny",
            axum::routing::post(super::rectify::deny),
        )
        .route(
            "/api/v1/sensors/{id}/assignment",
            get(super::hub::assignment),
        )
        .route(
            "/api/v1/sensors/{id}/batches",
            axum::routing::post(super::hub::batches)
                .layer(DefaultBodyLimit::max(super::hub::BATCH_BODY_LIMIT)),
        )
        .route(
            "/r/{token}",
            get(super::rectify::show).post(super::rectify::answer),
        )
        .route("/operator", get(super::operator::page))
        .route(
            "/operator/login",
            axum::routing::post(super::operator::login),
        )
        .route(
            "/operator/logout",
            axum::routing::post(super::operator::logout),
        )
        .route(
            "/operator/requests/{id}",
            axum::routing::post(super::operator::decide_form),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(daemon.clone(), guard))
        .with_state(daemon)
}

/// Authenticate, authorise and audit every request (`/healthz` passes untouched).
async fn guard(State(daemon): State<Shared>, mut request: Request, next: Next) -> Response {
    let route = request.uri().path().to_string();
    if route == "/healthz" {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let need = if route == "/metrics" && method == Method::GET {
        Need::Metrics
    } else if method == Method::GET || method == Method::HEAD {
        Need::Read
    } else {
        Need::Operate
    };
    let peer = request
        .extensions()
        .get::<Peer>()
        .map_or_else(|| "-".to_string(), |p| p.0.to_string());
    let loaded = daemon.current();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    // The rectification pages check their signed link themselves, and the operator pages
    // their session cookie; nothing else passes without a credential: only these prefixes,
    // and in them only the routes of `router`.
    let by_link = route.starts_with(LINK_PREFIX)
        || route == OPERATOR_PAGE
        || route.starts_with(&format!("{OPERATOR_PAGE}/"));
    let sensor = route
        .strip_prefix(SENSOR_PREFIX)
        .and_then(|rest| rest.split('/').next())
        .filter(|id| !id.is_empty());
    let checked = if by_link {
        Ok(None)
    } else if let Some(id) = sensor {
        loaded
            .access
            .check_sensor(id, authorization.as_deref())
            .map(Some)
    } else {
        loaded
            .access
            .check(need, authorization.as_deref())
            .await
            .map(Some)
    };
    let (principal, response, reason) = match checked {
        Ok(None) => {
            let response = next.run(request).await;
            let who = response
                .extensions()
                .get::<LinkPrincipal>()
                .map_or_else(|| "link:-".to_string(), |p| p.0.clone());
            (who, response, None)
        }
        Ok(Some(principal)) => {
            let label = principal.label();
            request.extensions_mut().insert(principal);
            (label, next.run(request).await, None)
        }
        Err(Refusal::Unauthenticated { presented }) => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong credentials (Authorization: Bearer TOKEN)",
            );
            let challenge = if loaded.access.web.as_ref().is_some_and(|w| w.has_users()) {
                "Bearer, Basic realm=\"netpatrol\""
            } else {
                "Bearer"
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            let who = presented.unwrap_or_else(|| "-".to_string());
            (who, response, Some("unauthenticated"))
        }
        Err(Refusal::Forbidden { who, reason }) => {
            (who, error(StatusCode::FORBIDDEN, reason), Some(reason))
        }
    };
    let status = response.status();
    // Scrapes come every few seconds: only refused ones are worth a record.
    if need == Need::Metrics && status.is_success() {
        return response;
    }
    let detail = response
        .extensions()
        .get::<AuditNote>()
        .map(|n| n.0.clone())
        .or(reason.map(str::to_string));
    tracing::info!(
        principal = %principal,
        peer = %peer,
        method = %method,
        route = %route,
        status = status.as_u16(),
        detail = detail.as_deref().unwrap_or(""),
        "api request"
    );
    let entry = AuditEntry {
        at: Utc::now(),
        principal,
        peer,
        method: method.to_string(),
        route,
        status: status.as_u16(),
        detail,
    };
    if let Err(e) = daemon.store.audit(&entry).await {
        tracing::error!(error = %e, "cannot record the audit entry");
    }
    response
}

/// Serve [`router`] on `listener` until `stop` is cancelled (then finish the requests in
/// flight, for a few seconds at most): HTTP/1.1, over TLS when the web config in force says
/// so, within the limits of the module doc.
pub async fn serve(
    listener: tokio::net::TcpListener,
    daemon: Arc<Daemon>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = router(daemon.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let tls = daemon
            .current()
            .access
            .web
            .as_ref()
            .and_then(|w| w.tls.clone());
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(Peer(peer));
                    let call = router.clone().oneshot(request.map(Body::new));
                    async move {
                        // A body trickled in, or a handler stuck on a locked store: the
                        // connection slot is not held for ever.
                        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                            Ok(response) => response,
                            Err(_) => {
                                tracing::warn!(%peer, "request timed out; answered 408");
                                Ok(error(
                                    StatusCode::REQUEST_TIMEOUT,
                                    "the request took too long",
                                ))
                            }
                        }
                    }
                },
            );
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let result = match tls {
                None => {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    watcher.watch(builder.serve_connection(io, service)).await
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let io = hyper_util::rt::TokioIo::new(tls);
                            watcher.watch(builder.serve_connection(io, service)).await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("connections still open at shutdown; dropped");
    }
    Ok(())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn metrics_text(State(daemon): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| String::from_utf8_lossy(v.as_bytes()).contains("application/openmetrics-text"));
    let loaded = daemon.current();
    let rendered =
        metrics::render(&daemon.store, &loaded.config, &daemon.metrics, Utc::now()).await;
    match rendered {
        Ok(text) if openmetrics => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::TEXT_CONTENT_TYPE),
            )],
            metrics::to_text_format(&text),
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
    let store = match daemon.store.ping().await {
        Ok(()) => daemon.store_problem().map_or(Ok(()), Err),
        Err(e) => Err(e.to_string()),
    };
    let status = if scheduler && store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "unavailable" },
        "scheduler": if scheduler { "running" } else { "stopped" },
        "store": match &store { Ok(()) => "ok".to_string(), Err(e) => e.clone() },
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
    let list: Vec<Finding> =
        match daemon.note_store("findings", daemon.store.open_findings(&filter).await) {
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

async fn submit_scan(
    State(daemon): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
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
    // On a hub, segments a sensor owns go to it.
    if let Some(response) = super::hub::submit(&daemon, &request.segments).await {
        return response;
    }
    match daemon.submit(request.segments.clone()).await {
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
                .extensions_mut()
                .insert(AuditNote(format!("scan {id}")));
            response
        }
        Err(e @ SubmitError::QueueFull(_)) => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, e.to_string());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            response
                .extensions_mut()
                .insert(AuditNote("refused: scan queue full".to_string()));
            response
        }
        Err(e @ SubmitError::UnknownSegment(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ SubmitError::Stopping) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(SubmitError::Store(e)) => {
            tracing::error!(error = %e, "cannot queue the scan");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

async fn scan_state(State(daemon): State<Shared>, Path(id): Path<String>) -> Response {
    let store_error = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "scan state query failed");
        error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    let job = match daemon.note_store("scan job", daemon.job(&id).await) {
        Ok(job) => job,
        Err(e) => return store_error(e),
    };
    if let Some(job) = job {
        let report = match (&job.scan_id, job.state.is_done()) {
            (Some(run), true) => {
                match daemon.note_store("report", daemon.store.report(run).await) {
                    Ok(r) => r,
                    Err(e) => return store_error(e),
                }
            }
            _ => None,
        };
        return axum::Json(json!({
            "id": job.id,
            "state": job.state,
            "segments": job.segments,
            "origin": job.origin,
            "sensor": job.sensor,
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
