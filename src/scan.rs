//! One scan pass: scope → discovery (ICMP) → port scan (raw SYN as root, else TCP connect;
//! open ports connected for their greetings) → reverse DNS →
//! service naming → TLS/TLCP posture of the ports that did not greet in plaintext → safe
//! identification and unauthenticated-access checks → web pages. Produces [`ScanObservations`]; recording them is the caller's job.
//!
//! Every probe goes through the process-wide [`Limits`]. Workers pull (address, port) jobs from
//! a shared counter, so memory stays flat however large the scope: only open ports are kept.
//! Cancelling the token stops new probes at once; what was seen so far comes back with the run
//! marked [`RunState::Incomplete`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use indicatif::ProgressBar;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::observation::{
    HostObservation, Liveness, ProbeErrors, RunState, ScanObservations, ScanRun, ServiceObservation,
};
use crate::probe::banner;
use crate::probe::dns::ReverseDns;
use crate::probe::http::{self, HttpFacts, HttpSpec};
use crate::probe::icmp::Pinger;
use crate::probe::service::{self as service_probe, ServiceFacts};
use crate::probe::syn::SynScanner;
use crate::probe::tcp::{self, OpenPort, TcpSpec};
use crate::probe::tls::{self, TlsSpec, Trust};
use crate::probe::{ProbeKind, Reason};
use crate::reconcile;
use crate::scope::{Limits, Scope, ScopeTooLarge, Target};

/// What to scan.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    /// Segment names; empty = every segment.
    pub segments: Vec<String>,
    pub probes: BTreeSet<ProbeKind>,
}

impl ScanRequest {
    /// Every segment, every probe.
    pub fn all() -> ScanRequest {
        ScanRequest {
            segments: Vec::new(),
            probes: ProbeKind::ALL.into_iter().collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("unknown segment {0:?}")]
    UnknownSegment(String),
    #[error(transparent)]
    ScopeTooLarge(#[from] ScopeTooLarge),
}

/// Shared counters of one scan, read by the progress bar and the report.
#[derive(Default)]
struct Tally {
    probes: AtomicU64,
    errors: std::sync::Mutex<ProbeErrors>,
}

impl Tally {
    fn error(&self, kind: ProbeKind, reason: Reason) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry((kind, reason)).or_default() += 1;
    }
}

/// Run one scan. `progress` (hidden when not on a terminal) advances one step per probe.
pub async fn run(
    config: &Config,
    request: &ScanRequest,
    limits: Arc<Limits>,
    progress: ProgressBar,
    cancel: CancellationToken,
) -> Result<ScanObservations, ScanError> {
    let segments = if request.segments.is_empty() {
        config.segments.iter().collect::<Vec<_>>()
    } else {
        request
            .segments
            .iter()
            .map(|name| {
                config
                    .segment(name)
                    .ok_or_else(|| ScanError::UnknownSegment(name.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    let scope = Scope::new(segments);
    let targets: Arc<[Target]> = scope.targets()?.into();
    let started_at = Utc::now();
    let id = format!(
        "{}-{:04x}",
        started_at.format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id() & 0xffff
    );
    let tally = Arc::new(Tally::default());
    let settings = &config.scan;
    let wants = |k| request.probes.contains(&k);

    let ports: Arc<[u16]> = if wants(ProbeKind::Tcp) {
        settings.ports.clone().into()
    } else {
        Arc::from([])
    };
    let do_icmp = wants(ProbeKind::Icmp) && settings.icmp;
    let total = targets.len() as u64 * (ports.len() as u64 + u64::from(do_icmp));
    progress.set_length(total);

    // Discovery: ICMP echo.
    let mut icmp_rtt: HashMap<IpAddr, Duration> = HashMap::new();
    if do_icmp && !cancel.is_cancelled() {
        match Pinger::new() {
            Ok(pinger) => {
                icmp_rtt = icmp_sweep(
                    Arc::new(pinger),
                    targets.clone(),
                    settings.timeout,
                    settings.retries,
                    limits.clone(),
                    tally.clone(),
                    progress.clone(),
                    cancel.clone(),
                )
                .await;
            }
            Err(error) => {
                tracing::warn!(%error, "ICMP discovery skipped; liveness from TCP only");
                tally.error(ProbeKind::Icmp, Reason::PermissionDenied);
                progress.inc(targets.len() as u64);
            }
        }
    }

    // Port scan, with greetings when the banner probe is on.
    let spec = TcpSpec {
        timeout: settings.timeout,
        retries: settings.retries,
        banner_wait: wants(ProbeKind::Banner).then_some(settings.banner_timeout),
    };
    let open = port_scan_auto(
        targets.clone(),
        ports,
        spec,
        limits.clone(),
        tally.clone(),
        progress.clone(),
        cancel.clone(),
    )
    .await;

    // Live hosts, in address order.
    let mut hosts: BTreeMap<IpAddr, HostObservation> = BTreeMap::new();
    let by_ip: HashMap<IpAddr, &Target> = targets.iter().map(|t| (t.ip(), t)).collect();
    fn host<'a>(
        hosts: &'a mut BTreeMap<IpAddr, HostObservation>,
        target: &Target,
    ) -> &'a mut HostObservation {
        hosts.entry(target.ip()).or_insert_with(|| HostObservation {
            ip: target.ip(),
            segment: target.segment().to_string(),
            network: target.network(),
            icmp_rtt: None,
            alive_by: Vec::new(),
            ptr: None,
            services: Vec::new(),
        })
    }
    for (ip, rtt) in &icmp_rtt {
        let h = host(&mut hosts, by_ip[ip]);
        h.icmp_rtt = Some(*rtt);
        h.alive_by.push(Liveness::Icmp);
    }
    let mut greetings: HashMap<(IpAddr, u16), Vec<u8>> = HashMap::new();
    for (ip, ports) in open {
        let h = host(&mut hosts, by_ip[&ip]);
        h.alive_by.push(Liveness::OpenPort);
        for p in ports {
            greetings.insert((ip, p.port), p.greeting.clone());
            h.services.push(service_of(p));
        }
        h.services.sort_by_key(|s| s.port);
    }

    // Reverse DNS of live hosts.
    if wants(ProbeKind::Dns) && settings.dns.enabled && !hosts.is_empty() && !cancel.is_cancelled()
    {
        match ReverseDns::new(&settings.dns, settings.timeout) {
            Ok(resolver) => {
                let live: Vec<Target> = hosts.keys().map(|ip| by_ip[ip].clone()).collect();
                let names = reverse_dns(
                    Arc::new(resolver),
                    live,
                    limits.clone(),
                    tally.clone(),
                    cancel.clone(),
                )
                .await;
                for (ip, name) in names {
                    if let Some(h) = hosts.get_mut(&ip) {
                        h.ptr = Some(name);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "reverse DNS skipped");
                tally.error(ProbeKind::Dns, Reason::Other);
            }
        }
    }
    // TLS and TLCP posture of every open port that did not greet in plaintext.
    if wants(ProbeKind::Tls) && !cancel.is_cancelled() {
        match Trust::load(&config.trust) {
            Ok(trust) => {
                tls_stage(
                    config,
                    &mut hosts,
                    &by_ip,
                    Arc::new(trust),
                    settings.timeout,
                    limits.clone(),
                    tally.clone(),
                    cancel.clone(),
                )
                .await;
            }
            Err(error) => {
                tracing::error!(%error, "TLS probes skipped: the trust anchors do not load");
                tally.error(ProbeKind::Tls, Reason::Other);
            }
        }
    }
    // Safe identification and unauthenticated-access checks, then the web pages.
    if !cancel.is_cancelled() && (wants(ProbeKind::Banner) || wants(ProbeKind::Http)) {
        exposure_stage(
            config,
            &mut hosts,
            &by_ip,
            &greetings,
            (wants(ProbeKind::Banner), wants(ProbeKind::Http)),
            settings.timeout,
            limits.clone(),
            tally.clone(),
            cancel.clone(),
        )
        .await;
    }
    progress.finish_and_clear();

    let state = if cancel.is_cancelled() {
        RunState::Incomplete
    } else {
        RunState::Complete
    };
    let errors = std::mem::take(&mut *tally.errors.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(ScanObservations {
        run: ScanRun {
            id,
            started_at,
            finished_at: Some(Utc::now()),
            segments: scope.segment_names(),
            addresses: targets.len() as u64,
            probes: tally.probes.load(Ordering::Relaxed),
            probe_kinds: request.probes.iter().copied().collect(),
            state,
        },
        hosts: hosts.into_values().collect(),
        errors,
    })
}

fn service_of(open: OpenPort) -> ServiceObservation {
    let greeting = (!open.greeting.is_empty()).then_some(open.greeting.as_slice());
    let identity = banner::identify(open.port, greeting);
    ServiceObservation {
        port: open.port,
        protocol: "tcp",
        service: identity.service,
        product: identity.product,
        version: identity.version,
        banner: greeting.map(banner::printable),
        connect_time: open.connect_time,
        tls: None,
        http: None,
        unauthenticated: None,
        exposure_evidence: None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn tls_stage(
    config: &Config,
    hosts: &mut BTreeMap<IpAddr, HostObservation>,
    by_ip: &HashMap<IpAddr, &Target>,
    trust: Arc<Trust>,
    timeout: Duration,
    limits: Arc<Limits>,
    tally: Arc<Tally>,
    cancel: CancellationToken,
) {
    let now = Utc::now();
    let mut set = JoinSet::new();
    for host in hosts.values() {
        let names = reconcile::known_names(config, host);
        for service in &host.services {
            // TLS servers never speak first: a greeting means a plaintext protocol.
            if service.banner.is_some() {
                continue;
            }
            let spec = TlsSpec {
                timeout,
                sni: names.first().cloned(),
                names: names.clone(),
                trust: trust.clone(),
                now,
            };
            let (target, port) = (by_ip[&host.ip].clone(), service.port);
            let (limits, tally, cancel) = (limits.clone(), tally.clone(), cancel.clone());
            set.spawn(async move {
                if cancel.is_cancelled() {
                    return None;
                }
                tally.probes.fetch_add(1, Ordering::Relaxed);
                match tls::probe(&target, port, &spec, &limits).await {
                    Ok(facts) => Some((target.ip(), port, facts)),
                    Err(f) => {
                        tracing::debug!(ip = %target.ip(), port, failure = %f, "tls probe failed");
                        // A silent plaintext service times out on a ClientHello: not an error.
                        if f.reason != Reason::Timeout {
                            tally.error(ProbeKind::Tls, f.reason);
                        }
                        Some((target.ip(), port, None))
                    }
                }
            });
        }
    }
    while let Some(result) = set.join_next().await {
        let Ok(Some((ip, port, facts))) = result else {
            continue;
        };
        if let Some(s) = hosts
            .get_mut(&ip)
            .and_then(|h| h.services.iter_mut().find(|s| s.port == port))
        {
            s.tls = Some(facts);
        }
    }
}

/// Service names worth an HTTP request (besides any port that speaks modern TLS).
const WEB_SERVICES: [&str; 6] = [
    "http",
    "https",
    "elasticsearch",
    "docker",
    "kubelet",
    "unknown",
];

/// What the exposure stage learnt about one service.
struct Exposure {
    ip: IpAddr,
    port: u16,
    service: Option<ServiceFacts>,
    http: Option<HttpFacts>,
}

#[allow(clippy::too_many_arguments)]
async fn exposure_stage(
    config: &Config,
    hosts: &mut BTreeMap<IpAddr, HostObservation>,
    by_ip: &HashMap<IpAddr, &Target>,
    greetings: &HashMap<(IpAddr, u16), Vec<u8>>,
    (identify, web): (bool, bool),
    timeout: Duration,
    limits: Arc<Limits>,
    tally: Arc<Tally>,
    cancel: CancellationToken,
) {
    http::install_crypto_provider();
    let mut set = JoinSet::new();
    for host in hosts.values() {
        let name = reconcile::known_names(config, host).into_iter().next();
        for service in &host.services {
            let greeting = greetings
                .get(&(host.ip, service.port))
                .cloned()
                .unwrap_or_default();
            let known = banner::Identity {
                service: service.service.clone(),
                product: service.product.clone(),
                version: service.version.clone(),
            };
            let check = identify && service_probe::applies(&known, &greeting);
            let modern_tls = service
                .tls
                .as_ref()
                .and_then(Option::as_ref)
                .is_some_and(|t| t.versions.iter().any(|v| v == "TLSv1.2" || v == "TLSv1.3"));
            let is_tls = service.tls.as_ref().is_some_and(Option::is_some);
            let fetch = web
                && greeting.is_empty()
                && (modern_tls || (!is_tls && WEB_SERVICES.contains(&service.service.as_str())));
            if !check && !fetch {
                continue;
            }
            let (target, port) = (by_ip[&host.ip].clone(), service.port);
            let (limits, tally, cancel) = (limits.clone(), tally.clone(), cancel.clone());
            let spec = HttpSpec {
                timeout,
                host: name.clone(),
                ..HttpSpec::default()
            };
            set.spawn(async move {
                let mut out = Exposure {
                    ip: target.ip(),
                    port,
                    service: None,
                    http: None,
                };
                if cancel.is_cancelled() {
                    return out;
                }
                if check {
                    tally.probes.fetch_add(1, Ordering::Relaxed);
                    match service_probe::probe(&target, port, &known, &greeting, timeout, &limits)
                        .await
                    {
                        Ok(facts) => out.service = Some(facts),
                        Err(f) => {
                            tracing::debug!(ip = %target.ip(), port, failure = %f, "service check failed");
                            tally.error(ProbeKind::Banner, f.reason);
                        }
                    }
                }
                if fetch {
                    tally.probes.fetch_add(1, Ordering::Relaxed);
                    match http::probe(&target, port, modern_tls, &spec, &limits).await {
                        Ok(facts) => out.http = facts,
                        Err(f) => {
                            tracing::debug!(ip = %target.ip(), port, failure = %f, "http probe failed");
                            if f.reason != Reason::Timeout {
                                tally.error(ProbeKind::Http, f.reason);
                            }
                        }
                    }
                }
                out
            });
        }
    }
    while let Some(result) = set.join_next().await {
        let Ok(e) = result else { continue };
        let Some(s) = hosts
            .get_mut(&e.ip)
            .and_then(|h| h.services.iter_mut().find(|s| s.port == e.port))
        else {
            continue;
        };
        if let Some(facts) = e.service {
            if let Some(name) = facts.service {
                s.service = name;
            }
            s.product = facts.product.or(s.product.take());
            s.version = facts.version.or(s.version.take());
            s.unauthenticated = facts.unauthenticated;
            s.exposure_evidence = facts.evidence;
        }
        s.http = e.http;
    }
}

/// Number of worker tasks for `jobs` jobs under `limits`.
fn workers(limits: &Limits, jobs: usize) -> usize {
    limits.concurrency().min(jobs).max(1)
}

#[allow(clippy::too_many_arguments)]
async fn icmp_sweep(
    pinger: Arc<Pinger>,
    targets: Arc<[Target]>,
    timeout: Duration,
    retries: u8,
    limits: Arc<Limits>,
    tally: Arc<Tally>,
    progress: ProgressBar,
    cancel: CancellationToken,
) -> HashMap<IpAddr, Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..workers(&limits, targets.len()) {
        let (pinger, targets, limits, tally, progress, cancel, next) = (
            pinger.clone(),
            targets.clone(),
            limits.clone(),
            tally.clone(),
            progress.clone(),
            cancel.clone(),
            next.clone(),
        );
        set.spawn(async move {
            let mut alive = Vec::new();
            while !cancel.is_cancelled() {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(target) = targets.get(i) else { break };
                tally.probes.fetch_add(1, Ordering::Relaxed);
                let _slot = limits.slot().await;
                match pinger.ping(target, timeout, retries, &limits).await {
                    Ok(rtt) => alive.push((target.ip(), rtt)),
                    Err(f) if f.reason == Reason::Timeout => {}
                    Err(f) => {
                        tracing::debug!(ip = %target.ip(), failure = %f, "icmp echo failed");
                        tally.error(ProbeKind::Icmp, f.reason);
                    }
                }
                progress.inc(1);
            }
            alive
        });
    }
    let mut out = HashMap::new();
    while let Some(result) = set.join_next().await {
        out.extend(result.unwrap_or_default());
    }
    out
}

/// Port scan: raw SYN scan of the IPv4 targets when raw sockets are allowed (root or
/// CAP_NET_RAW), then a connect probe (handshake time, greeting) of only the ports found open;
/// connect scan for IPv6 targets, and for everything when SYN scanning is unavailable.
/// A port that answered the SYN but then refused the connection is not reported open.
async fn port_scan_auto(
    targets: Arc<[Target]>,
    ports: Arc<[u16]>,
    spec: TcpSpec,
    limits: Arc<Limits>,
    tally: Arc<Tally>,
    progress: ProgressBar,
    cancel: CancellationToken,
) -> BTreeMap<IpAddr, Vec<OpenPort>> {
    if ports.is_empty() {
        return BTreeMap::new();
    }
    let scanner = match SynScanner::new() {
        Ok(scanner) => scanner,
        Err(error) => {
            tracing::info!(%error, "SYN scan unavailable; connect scan");
            return port_scan(targets, ports, spec, limits, tally, progress, cancel).await;
        }
    };
    let (v4, v6): (Vec<Target>, Vec<Target>) =
        targets.iter().cloned().partition(SynScanner::supports);
    let report = |n: u64| {
        progress.inc(n);
        tally.probes.fetch_add(n, Ordering::Relaxed);
    };
    let found = match scanner
        .scan(
            &v4,
            &ports,
            spec.timeout,
            spec.retries,
            &limits,
            &cancel,
            &report,
        )
        .await
    {
        Ok(found) => found,
        Err(f) if f.reason == Reason::PermissionDenied => {
            tracing::warn!(failure = %f, "SYN scan refused; connect scan");
            return port_scan(targets, ports, spec, limits, tally, progress, cancel).await;
        }
        Err(f) => {
            tracing::warn!(failure = %f, "SYN scan failed");
            tally.error(ProbeKind::Tcp, f.reason);
            Vec::new()
        }
    };
    let mut set = JoinSet::new();
    for (i, port) in found {
        let (target, limits) = (v4[i].clone(), limits.clone());
        set.spawn(async move { (target.ip(), tcp::probe(&target, port, &spec, &limits).await) });
    }
    let mut out: BTreeMap<IpAddr, Vec<OpenPort>> = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((ip, Ok(open))) => out.entry(ip).or_default().push(open),
            Ok((ip, Err(f))) => {
                tracing::debug!(%ip, failure = %f, "SYN-open port refused the connect")
            }
            Err(_) => {}
        }
    }
    if !v6.is_empty() && !cancel.is_cancelled() {
        out.extend(port_scan(v6.into(), ports, spec, limits, tally, progress, cancel).await);
    }
    out
}

/// Connect scan: worker tasks pull (address, port) jobs from a shared counter.
async fn port_scan(
    targets: Arc<[Target]>,
    ports: Arc<[u16]>,
    spec: TcpSpec,
    limits: Arc<Limits>,
    tally: Arc<Tally>,
    progress: ProgressBar,
    cancel: CancellationToken,
) -> BTreeMap<IpAddr, Vec<OpenPort>> {
    let jobs = targets.len() * ports.len();
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..workers(&limits, jobs) {
        let (targets, ports, limits, tally, progress, cancel, next) = (
            targets.clone(),
            ports.clone(),
            limits.clone(),
            tally.clone(),
            progress.clone(),
            cancel.clone(),
            next.clone(),
        );
        set.spawn(async move {
            let mut open = Vec::new();
            let mut done = 0u64;
            while !cancel.is_cancelled() {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    break;
                }
                // Port-major order spreads consecutive attempts over hosts.
                let target = &targets[i % targets.len()];
                let port = ports[i / targets.len()];
                match tcp::probe(target, port, &spec, &limits).await {
                    Ok(p) => open.push((target.ip(), p)),
                    Err(f) if matches!(f.reason, Reason::Refused | Reason::Timeout) => {}
                    Err(f) => {
                        tracing::debug!(ip = %target.ip(), port, failure = %f, "tcp probe failed");
                        tally.error(ProbeKind::Tcp, f.reason);
                    }
                }
                done += 1;
                // Batched so a fast scan does not contend on the shared counters.
                if done.is_multiple_of(64) {
                    progress.inc(64);
                    tally.probes.fetch_add(64, Ordering::Relaxed);
                }
            }
            progress.inc(done % 64);
            tally.probes.fetch_add(done % 64, Ordering::Relaxed);
            open
        });
    }
    let mut out: BTreeMap<IpAddr, Vec<OpenPort>> = BTreeMap::new();
    while let Some(result) = set.join_next().await {
        for (ip, p) in result.unwrap_or_default() {
            out.entry(ip).or_default().push(p);
        }
    }
    out
}

async fn reverse_dns(
    resolver: Arc<ReverseDns>,
    hosts: Vec<Target>,
    limits: Arc<Limits>,
    tally: Arc<Tally>,
    cancel: CancellationToken,
) -> Vec<(IpAddr, String)> {
    let mut set = JoinSet::new();
    for target in hosts {
        let (resolver, limits, tally, cancel) = (
            resolver.clone(),
            limits.clone(),
            tally.clone(),
            cancel.clone(),
        );
        set.spawn(async move {
            if cancel.is_cancelled() {
                return None;
            }
            let _slot = limits.slot().await;
            limits.attempt().await;
            tally.probes.fetch_add(1, Ordering::Relaxed);
            match resolver.ptr(&target).await {
                Ok(name) => name.map(|n| (target.ip(), n)),
                Err(f) => {
                    tracing::debug!(ip = %target.ip(), failure = %f, "reverse lookup failed");
                    tally.error(ProbeKind::Dns, f.reason);
                    None
                }
            }
        });
    }
    let mut out = Vec::new();
    while let Some(result) = set.join_next().await {
        if let Ok(Some(pair)) = result {
            out.push(pair);
        }
    }
    out
}
