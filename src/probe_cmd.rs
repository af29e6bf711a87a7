//! `netpatrol probe tls|http|service IP:PORT`: one endpoint, by hand, for an operator
//! debugging one service.
//!
//! Input: the probe kind, the endpoint, and optionally the config (for its segments, trust
//! anchors and timeouts). Output: an [`Outcome`]: the facts the scan would record for that
//! port and the exchanges that produced them (for TLS every ClientHello sent, summarised, and
//! what came back; for a service the greeting and the check's facts; for HTTP the requests'
//! results), as JSON or readable text.
//!
//! Invariant: the address goes through [`Scope`] like every scanned address. With a config,
//! it must lie in one of its declared segments; without one, only the loopback (127.0.0.0/8,
//! ::1) may be probed. An undeclared non-loopback address is refused before any packet.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::config::{Config, NetworkKind, Segment, TrustSettings};
use crate::probe::tls::{Exchange, TlsSpec, Trust};
use crate::probe::{Failure, banner, http, service, tcp, tls};
use crate::scope::{Limits, Scope, Target};

/// Per-step timeout without a config.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Greeting wait without a config.
const DEFAULT_BANNER_WAIT: Duration = Duration::from_secs(2);

/// Which probe to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tls,
    Http,
    Service,
}

/// Why the probe was not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeCmdError {
    #[error(
        "{0} lies in no segment declared in the config: netpatrol probes only declared addresses"
    )]
    Undeclared(IpAddr),
    #[error("{0} is not a loopback address: give the config (-c FILE) whose segments declare it")]
    NotLoopback(IpAddr),
    #[error(transparent)]
    Trust(#[from] tls::TlsError),
}

/// The result of one `netpatrol probe`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub kind: Kind,
    pub endpoint: SocketAddr,
    /// The probe produced facts.
    pub ok: bool,
    /// Why it did not, when it did not.
    pub failure: Option<String>,
    /// The facts, as the scan records them (`tls`, `http` or `service` object).
    pub facts: serde_json::Value,
    /// What was sent and what came back.
    pub exchanges: Vec<Exchange>,
    pub elapsed_ms: u64,
}

/// The target for `ip`: from the config's segments, or from the loopback without one.
pub fn target(ip: IpAddr, config: Option<&Config>) -> Result<Target, ProbeCmdError> {
    match config {
        Some(c) => Scope::new(&c.segments)
            .target(ip)
            .ok_or(ProbeCmdError::Undeclared(ip)),
        None => {
            if !ip.is_loopback() {
                return Err(ProbeCmdError::NotLoopback(ip));
            }
            let cidr = if ip.is_ipv4() {
                "127.0.0.0/8"
            } else {
                "::1/128"
            };
            let segment = Segment {
                name: "loopback".into(),
                network: NetworkKind::Other,
                cidrs: vec![cidr.parse().expect("a valid loopback network")],
                exclude: vec![],
                department: None,
                consolidate_by: None,
            };
            Scope::new(&[segment])
                .target(ip)
                .ok_or(ProbeCmdError::NotLoopback(ip))
        }
    }
}

/// Run one probe. `name`: the host name to send (SNI, `Host`) and to match certificates
/// against.
pub async fn run(
    kind: Kind,
    endpoint: SocketAddr,
    config: Option<&Config>,
    name: Option<String>,
) -> Result<Outcome, ProbeCmdError> {
    let target = target(endpoint.ip(), config)?;
    let (timeout, banner_wait) = config.map_or((DEFAULT_TIMEOUT, DEFAULT_BANNER_WAIT), |c| {
        (c.scan.timeout, c.scan.banner_timeout)
    });
    let limits = Limits::new(0, 64);
    let started = tokio::time::Instant::now();
    let port = endpoint.port();
    let mut out = Outcome {
        kind,
        endpoint,
        ok: false,
        failure: None,
        facts: serde_json::Value::Null,
        exchanges: Vec::new(),
        elapsed_ms: 0,
    };
    match kind {
        Kind::Tls => {
            let trust = match config {
                Some(c) => Trust::load(&c.trust)?,
                None => Trust::load(&TrustSettings::default())?,
            };
            let spec = TlsSpec {
                timeout,
                sni: name.clone(),
                names: name.into_iter().collect(),
                trust: Arc::new(trust),
                now: Utc::now(),
            };
            match tls::probe(&target, port, &spec, &limits).await {
                Ok(Some(mut facts)) => {
                    out.exchanges = std::mem::take(&mut facts.exchanges);
                    out.facts = serde_json::to_value(&facts).unwrap_or_default();
                    out.ok = true;
                }
                Ok(None) => out.failure = Some("the port does not speak TLS or TLCP".into()),
                Err(f) => out.failure = Some(f.to_string()),
            }
        }
        Kind::Http => {
            http::install_crypto_provider();
            let spec = http::HttpSpec {
                timeout,
                host: name,
                ..http::HttpSpec::default()
            };
            // HTTPS first (it fails fast on a plaintext port), then plain HTTP.
            for tls in [true, false] {
                let scheme = if tls { "https" } else { "http" };
                let step = tokio::time::Instant::now();
                let result = http::probe(&target, port, tls, &spec, &limits).await;
                out.exchanges
                    .push(http_exchange(scheme, &result, step.elapsed()));
                if let Ok(Some(facts)) = result {
                    out.facts = serde_json::to_value(&facts).unwrap_or_default();
                    out.ok = true;
                    break;
                }
            }
            if !out.ok {
                out.failure = Some("no HTTP answer over HTTPS or plain HTTP".into());
            }
        }
        Kind::Service => {
            let spec = tcp::TcpSpec {
                timeout,
                retries: 0,
                banner_wait: Some(banner_wait),
            };
            match tcp::probe(&target, port, &spec, &limits).await {
                Err(f) => out.failure = Some(f.to_string()),
                Ok(open) => {
                    let greeting = (!open.greeting.is_empty()).then_some(open.greeting.as_slice());
                    let identity = banner::identify(port, greeting);
                    out.exchanges.push(Exchange {
                        step: "connect".into(),
                        sent: Default::default(),
                        answer: match greeting {
                            Some(g) => format!("greeting: {}", banner::printable(g)),
                            None => "no greeting".into(),
                        },
                        elapsed_ms: open.connect_time.as_millis() as u64,
                    });
                    let step = tokio::time::Instant::now();
                    let checked =
                        service::probe(&target, port, &identity, &open.greeting, timeout, &limits)
                            .await;
                    let check = match &checked {
                        Ok(_) if !service::applies(&identity, &open.greeting) => {
                            "no check applies".to_string()
                        }
                        Ok(f) => f.evidence.clone().unwrap_or_else(|| "answered".into()),
                        Err(f) => f.to_string(),
                    };
                    out.exchanges.push(Exchange {
                        step: "check".into(),
                        sent: Default::default(),
                        answer: check,
                        elapsed_ms: step.elapsed().as_millis() as u64,
                    });
                    out.facts = serde_json::json!({
                        "service": identity.service,
                        "product": identity.product,
                        "version": identity.version,
                        "banner": greeting.map(banner::printable),
                        "check": checked.as_ref().ok(),
                    });
                    out.ok = checked.is_ok();
                    if let Err(f) = checked {
                        out.failure = Some(f.to_string());
                    }
                }
            }
        }
    }
    out.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(out)
}

fn http_exchange(
    scheme: &str,
    result: &Result<Option<http::HttpFacts>, Failure>,
    took: Duration,
) -> Exchange {
    let answer = match result {
        Ok(Some(f)) => format!(
            "status {}{}",
            f.status,
            f.server
                .as_deref()
                .map(|s| format!(", server {s}"))
                .unwrap_or_default()
        ),
        Ok(None) => "answered, but not in HTTP".into(),
        Err(f) => f.to_string(),
    };
    Exchange {
        step: format!("GET / ({scheme})"),
        sent: Default::default(),
        answer,
        elapsed_ms: took.as_millis() as u64,
    }
}

/// The outcome as readable text: Chinese by default, English with `en`.
pub fn text(o: &Outcome, lang: &str) -> String {
    let en = lang == "en";
    let mut s = String::new();
    let kind = match o.kind {
        Kind::Tls => "tls",
        Kind::Http => "http",
        Kind::Service => "service",
    };
    let verdict = match (o.ok, en) {
        (true, true) => "ok".to_string(),
        (true, false) => "成功".to_string(),
        (false, true) => format!("failed: {}", o.failure.as_deref().unwrap_or("-")),
        (false, false) => format!("失败:{}", o.failure.as_deref().unwrap_or("-")),
    };
    s.push_str(&format!(
        "{kind} {} — {verdict} ({} ms)\n",
        o.endpoint, o.elapsed_ms
    ));
    s.push_str(if en {
        "\nExchanges:\n"
    } else {
        "\n交互过程:\n"
    });
    for (i, e) in o.exchanges.iter().enumerate() {
        let sent = if e.sent.client_version.is_empty() {
            String::new()
        } else {
            format!(
                " hello {}{}, {} suites{}{} →",
                e.sent.client_version,
                if e.sent.record_version.is_empty() {
                    String::new()
                } else {
                    format!(" (record {})", e.sent.record_version)
                },
                e.sent.suites,
                if e.sent.supported_versions.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", supported_versions {}",
                        e.sent.supported_versions.join(" ")
                    )
                },
                if e.sent.extensions.is_empty() {
                    if en {
                        ", no extensions".to_string()
                    } else {
                        "，无扩展".to_string()
                    }
                } else {
                    format!(", extensions {}", e.sent.extensions.join(" "))
                },
            )
        };
        s.push_str(&format!(
            "{:>3}. [{}]{sent} {} ({} ms)\n",
            i + 1,
            e.step,
            e.answer,
            e.elapsed_ms
        ));
    }
    s.push_str(if en { "\nFacts:\n" } else { "\n结果:\n" });
    s.push_str(&serde_json::to_string_pretty(&o.facts).unwrap_or_default());
    s.push('\n');
    s
}
