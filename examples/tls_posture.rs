//! TLS/TLCP posture of one or more endpoints, as netpatrol's probe sees them.
//!
//! `cargo run --release --example tls_posture -- IP:PORT [IP:PORT...] [CA_FILE] [--sni NAME]`
//!
//! Prints one JSON line per endpoint (the `TlsFacts`, or `null` for a port that does not speak
//! TLS, or `{"failure": ...}`), then the wall time on stderr. Every address becomes a /32 (or
//! /128) segment of a one-off scope, so only the addresses named are ever probed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netpatrol::config::{NetworkKind, Segment, TrustSettings};
use netpatrol::probe::tls::{self, TlsSpec, Trust};
use netpatrol::scope::{Limits, Scope};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut endpoints: Vec<SocketAddr> = Vec::new();
    let mut ca_files: Vec<PathBuf> = Vec::new();
    let mut sni = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--sni" {
            sni = args.next();
        } else if let Ok(addr) = a.parse() {
            endpoints.push(addr);
        } else {
            ca_files.push(PathBuf::from(a));
        }
    }
    anyhow::ensure!(
        !endpoints.is_empty(),
        "usage: tls_posture IP:PORT [IP:PORT...] [CA_FILE] [--sni NAME]"
    );
    let segment = Segment {
        name: "cli".into(),
        network: NetworkKind::Other,
        cidrs: endpoints.iter().map(|e| e.ip().into()).collect(),
        exclude: vec![],
        department: None,
        consolidate_by: None,
    };
    let scope = Scope::new(&[segment]);
    let trust = Arc::new(Trust::load(&TrustSettings { ca_files })?);
    let spec = Arc::new(TlsSpec {
        timeout: Duration::from_millis(1500),
        sni: sni.clone(),
        names: sni.into_iter().collect(),
        trust,
        now: chrono::Utc::now(),
    });
    let limits = Limits::new(2000, 256);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, addr) in endpoints.iter().copied().enumerate() {
        let target = scope.target(addr.ip()).expect("declared above");
        let (spec, limits) = (spec.clone(), limits.clone());
        set.spawn(async move {
            (
                i,
                addr,
                tls::probe(&target, addr.port(), &spec, &limits).await,
            )
        });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r?);
    }
    let took = started.elapsed();
    results.sort_by_key(|r| r.0);
    for (_, addr, r) in results {
        let json = match r {
            Ok(facts) => serde_json::to_value(facts)?,
            Err(f) => {
                serde_json::json!({"failure": {"reason": f.reason.as_str(), "detail": f.detail}})
            }
        };
        println!(
            "{}",
            serde_json::json!({"endpoint": addr.to_string(), "tls": json})
        );
    }
    eprintln!(
        "elapsed_seconds {:.3} endpoints {}",
        took.as_secs_f64(),
        endpoints.len()
    );
    Ok(())
}
