//! One scan pass: scope → discovery (ICMP) → port scan (raw SYN as root, else TCP connect;
//! open ports connected for their greetings) → reverse DNS →
//! service naming → TLS/TLCP posture of the ports that did not greet in plaintext → safe
//! identification and unauthenticated-access checks → web pages. Each live host is placed in the
//! registers once (`reconcile::place`, after reverse DNS): the TLS and HTTP stages take their
//! SNI / Host names from that placement, and it travels on the host's observation (to the
//! checkpoints, reconciliation, the report and the store). Produces [`ScanObservations`];
//! recording them is the caller's job.
//!
//! Every stage goes through the one fan-out of `probe::fanout` (slot, rate, deadline,
//! cancellation, progress, tally), except the raw SYN sender, which sends whole batches and
//! reports to the same tally. The scope is scanned in batches of [`BATCH`] addresses, each
//! through every stage, and each finished batch's hosts go to the caller's checkpoint channel,
//! so a killed process leaves what it saw in the store and memory stays flat however large the
//! scope: only live hosts are kept.
//!
//! Cancelling the token reaches the probes in flight at once; what was seen so far comes back
//! with the run marked [`RunState::Incomplete`]. A run that finished but failed locally past
//! `compliance.max_local_failure_ratio`, or did not attempt every planned probe, is
//! [`RunState::Degraded`]. Coverage (planned, answered, failed remotely or locally) is in the
//! run.
//!
//! [`plan`] scans whole segments; [`plan_endpoint`] one address the scope holds, on one port
//! (the re-test of a finding).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::observation::{
    HostObservation, Liveness, ProbeFailure, RunState, ScanObservations, ScanRun,
    ServiceObservation,
};
use crate::probe::banner;
use crate::probe::dns::ReverseDns;
use crate::probe::http::{self, HttpSpec};
use crate::probe::icmp::Pinger;
use crate::probe::service as service_probe;
use crate::probe::syn::SynScanner;
use crate::probe::tcp::{self, OpenPort, TcpSpec};
use crate::probe::tls::{self, TlsSpec, TlsVersion, Trust};
use crate::probe::{Cx, ProbeKind, Probed, Reason, Stage, fan_out};
use crate::reconcile::{self, Placement};
use crate::scope::{Limits, Scope, ScopeTooLarge, Target};

/// Addresses scanned together through every stage before their hosts are checkpointed.
pub const BATCH: usize = 256;

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
    #[error("{0} lies in no declared segment (or is excluded): it is never probed")]
    OutOfScope(IpAddr),
}

/// A scan about to run: its scope, its targets and the run as the store first records it.
pub struct Planned {
    pub run: ScanRun,
    targets: Vec<Target>,
    request: ScanRequest,
    /// The ports to scan instead of `scan.ports` (a re-test of one endpoint).
    ports: Option<Vec<u16>>,
}

/// Resolve the request into targets and a run header (`running`, nothing seen yet).
pub fn plan(config: &Config, request: &ScanRequest) -> Result<Planned, ScanError> {
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
    let targets = scope.targets()?;
    let started_at = Utc::now();
    let id = format!(
        "{}-{:04x}",
        started_at.format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id() & 0xffff
    );
    Ok(Planned {
        run: ScanRun {
            id,
            started_at,
            finished_at: None,
            segments: scope.segment_names(),
            addresses: targets.len() as u64,
            probes: 0,
            probe_kinds: request.probes.iter().copied().collect(),
            state: RunState::Running,
            coverage: Default::default(),
        },
        targets,
        request: request.clone(),
        ports: None,
    })
}

/// A scan of one endpoint (the re-test of a finding, 复测): the address `ip`, only if a
/// declared segment holds it (`Scope::target`), on `port` (`None`: the configured ports), with
/// the probes of `request` (its `segments` are ignored: the target's own segment is scanned).
pub fn plan_endpoint(
    config: &Config,
    ip: IpAddr,
    port: Option<u16>,
    request: &ScanRequest,
) -> Result<Planned, ScanError> {
    let scope = Scope::new(config.segments.iter());
    let target = scope.target(ip).ok_or(ScanError::OutOfScope(ip))?;
    let started_at = Utc::now();
    let request = ScanRequest {
        segments: vec![target.segment().to_string()],
        probes: request.probes.clone(),
    };
    Ok(Planned {
        run: ScanRun {
            id: format!(
                "{}-{:04x}-retest",
                started_at.format("%Y%m%dT%H%M%S%.3fZ"),
                std::process::id() & 0xffff
            ),
            started_at,
            finished_at: None,
            segments: request.segments.clone(),
            addresses: 1,
            probes: 0,
            probe_kinds: request.probes.iter().copied().collect(),
            state: RunState::Running,
            coverage: Default::default(),
        },
        targets: vec![target],
        request,
        ports: port.map(|p| vec![p]),
    })
}

/// Run one scan. `progress` (hidden when not on a terminal) advances one step per probe.
pub async fn run(
    config: &Config,
    request: &ScanRequest,
    limits: Arc<Limits>,
    progress: ProgressBar,
    cancel: CancellationToken,
) -> Result<ScanObservations, ScanError> {
    let planned = plan(config, request)?;
    Ok(execute(config, planned, &Cx::new(limits, cancel, progress), None).await)
}

/// Run a planned scan under `cx`. Each batch's live hosts are sent to `checkpoint` (when given)
/// as soon as the batch is done; the full observations come back at the end.
pub async fn execute(
    config: &Config,
    planned: Planned,
    cx: &Cx,
    checkpoint: Option<mpsc::UnboundedSender<Vec<HostObservation>>>,
) -> ScanObservations {
    let Planned {
        mut run,
        targets,
        request,
        ports: only_ports,
    } = planned;
    let settings = &config.scan;
    let wants = |k| request.probes.contains(&k);
    let ports: Arc<[u16]> = if wants(ProbeKind::Tcp) {
        only_ports.unwrap_or_else(|| settings.ports.clone()).into()
    } else {
        Arc::from([])
    };
    let do_icmp = wants(ProbeKind::Icmp) && settings.icmp;

    // Set up once per scan: the sockets and resolvers every batch shares.
    let pinger = if do_icmp {
        match Pinger::new() {
            Ok(pinger) => Some(Arc::new(pinger)),
            Err(error) => {
                tracing::warn!(%error, "ICMP discovery skipped; liveness from TCP only");
                cx.tally.error(ProbeKind::Icmp, Reason::PermissionDenied);
                None
            }
        }
    } else {
        None
    };
    let syn = if ports.is_empty() {
        None
    } else {
        match SynScanner::new() {
            Ok(scanner) => Some(Arc::new(scanner)),
            Err(error) => {
                tracing::info!(%error, "SYN scan unavailable; connect scan");
                None
            }
        }
    };
    let resolver = if wants(ProbeKind::Dns) && settings.dns.enabled {
        match ReverseDns::new(&settings.dns, settings.timeout) {
            Ok(r) => Some(Arc::new(r)),
            Err(error) => {
                tracing::warn!(%error, "reverse DNS skipped");
                cx.tally.error(ProbeKind::Dns, Reason::Other);
                None
            }
        }
    } else {
        None
    };
    let trust = if wants(ProbeKind::Tls) {
        match Trust::load(&config.trust) {
            Ok(trust) => Some(Arc::new(trust)),
            Err(error) => {
                tracing::error!(%error, "TLS probes skipped: the trust anchors do not load");
                cx.tally.error(ProbeKind::Tls, Reason::Other);
                None
            }
        }
    } else {
        None
    };
    let tools = Tools {
        pinger,
        syn: std::sync::Mutex::new(syn),
        resolver,
        trust,
        ports,
        spec: TcpSpec {
            timeout: settings.timeout,
            retries: settings.retries,
            banner_wait: wants(ProbeKind::Banner).then_some(settings.banner_timeout),
        },
        identify: wants(ProbeKind::Banner),
        web: wants(ProbeKind::Http),
    };

    // Every probe of the discovery and port scan is planned up front, whether or not the scan
    // gets to it: a scan cut short shows as not having attempted them. (ICMP only when its
    // socket opened: without it liveness comes from TCP alone, as the log says.)
    let total =
        targets.len() as u64 * (tools.ports.len() as u64 + u64::from(tools.pinger.is_some()));
    cx.tally.plan(total);
    cx.progress.set_length(total);

    let mut hosts: Vec<HostObservation> = Vec::new();
    for batch in targets.chunks(BATCH) {
        if cx.cancel.is_cancelled() {
            break;
        }
        let seen = scan_batch(config, &tools, batch, cx).await;
        if let Some(sink) = &checkpoint
            && !seen.is_empty()
        {
            // The receiver outlives the scan; a closed one only means nobody checkpoints.
            let _ = sink.send(seen.clone());
        }
        hosts.extend(seen);
    }
    cx.progress.finish_and_clear();
    hosts.sort_by_key(|h| h.ip);

    run.finished_at = Some(Utc::now());
    run.probes = cx.tally.probes();
    run.coverage = cx.tally.coverage();
    run.state = state_of(config, &run, cx.cancel.is_cancelled());
    if run.state == RunState::Degraded {
        tracing::warn!(
            planned = run.coverage.planned,
            answered = run.coverage.answered,
            failed_remote = run.coverage.failed_remote,
            failed_local = run.coverage.failed_local,
            "scan degraded: it opens findings from what it saw and resolves none"
        );
    }
    ScanObservations {
        run,
        hosts,
        errors: cx.tally.errors(),
    }
}

/// How a run that ended ended: incomplete when cancelled; degraded when it failed locally past
/// the configured share or left planned probes unattempted; complete otherwise.
fn state_of(config: &Config, run: &ScanRun, cancelled: bool) -> RunState {
    let c = &run.coverage;
    if cancelled {
        RunState::Incomplete
    } else if c.local_failure_ratio() > config.compliance.max_local_failure_ratio
        || c.attempted() < c.planned
    {
        RunState::Degraded
    } else {
        RunState::Complete
    }
}

/// What every batch of a scan shares.
struct Tools {
    pinger: Option<Arc<Pinger>>,
    /// `None` once the SYN scan proved unavailable (then every batch uses the connect scan).
    syn: std::sync::Mutex<Option<Arc<SynScanner>>>,
    resolver: Option<Arc<ReverseDns>>,
    trust: Option<Arc<Trust>>,
    ports: Arc<[u16]>,
    spec: TcpSpec,
    identify: bool,
    web: bool,
}

/// Every stage over one batch of targets; returns its live hosts in address order.
async fn scan_batch(
    config: &Config,
    tools: &Tools,
    batch: &[Target],
    cx: &Cx,
) -> Vec<HostObservation> {
    let settings = &config.scan;
    let targets: Arc<[Target]> = batch.into();
    let by_ip: HashMap<IpAddr, &Target> = batch.iter().map(|t| (t.ip(), t)).collect();

    // Discovery: ICMP echo.
    let mut icmp_rtt: HashMap<IpAddr, Duration> = HashMap::new();
    if let Some(pinger) = &tools.pinger {
        let (pinger, t, limits) = (pinger.clone(), targets.clone(), cx.limits.clone());
        let (timeout, retries) = (settings.timeout, settings.retries);
        let stage = Stage {
            kind: ProbeKind::Icmp,
            slot: true,
            deadline: deadline(timeout, u32::from(retries) + 1),
            planned: true,
        };
        for (i, outcome) in fan_out(cx, stage, targets.len(), move |i| {
            let (pinger, t, limits) = (pinger.clone(), t.clone(), limits.clone());
            async move {
                match pinger.ping(&t[i], timeout, retries, &limits).await {
                    Ok(rtt) => Ok(Some(rtt)),
                    Err(f) if f.reason == Reason::Timeout => Ok(None),
                    Err(f) => Err(f),
                }
            }
        })
        .await
        {
            if let Probed::Found(rtt) = outcome {
                icmp_rtt.insert(targets[i].ip(), rtt);
            }
        }
    }

    // Port scan, with greetings when the banner probe is on.
    let open = port_scan(tools, targets.clone(), cx).await;

    // Live hosts, in address order.
    let mut hosts: BTreeMap<IpAddr, HostObservation> = BTreeMap::new();
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
            placement: Placement::bare(target.segment(), target.network()),
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
    if let Some(resolver) = &tools.resolver
        && !hosts.is_empty()
    {
        let live: Arc<[Target]> = hosts.keys().map(|ip| by_ip[ip].clone()).collect();
        let (resolver, t, cx2) = (resolver.clone(), live.clone(), cx.clone());
        let stage = Stage {
            kind: ProbeKind::Dns,
            slot: true,
            deadline: deadline(settings.timeout, 3),
            planned: false,
        };
        for (i, outcome) in fan_out(cx, stage, live.len(), move |i| {
            let (resolver, t, cx) = (resolver.clone(), t.clone(), cx2.clone());
            async move {
                cx.attempt().await?;
                resolver.ptr(&t[i]).await
            }
        })
        .await
        {
            if let (Probed::Found(name), Some(h)) = (outcome, hosts.get_mut(&live[i].ip())) {
                h.ptr = Some(name);
            }
        }
    }

    // Each live host placed in the registers, once, now that its name is known.
    for h in hosts.values_mut() {
        h.placement = reconcile::place(config, &h.segment, h.network, h.ip, h.ptr.as_deref());
    }

    // TLS and TLCP posture of every open port that did not greet in plaintext.
    if let Some(trust) = &tools.trust {
        tls_stage(&mut hosts, &by_ip, trust.clone(), settings.timeout, cx).await;
    }
    // Safe identification and unauthenticated-access checks, then the web pages.
    if tools.identify || tools.web {
        exposure_stage(
            &mut hosts,
            &by_ip,
            &greetings,
            (tools.identify, tools.web),
            settings.timeout,
            cx,
        )
        .await;
    }
    hosts.into_values().collect()
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
        failures: Vec::new(),
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

/// A probe's overall deadline: `steps` steps of `timeout` each, and a second of slack.
fn deadline(timeout: Duration, steps: u32) -> Duration {
    timeout.saturating_mul(steps.max(1)) + Duration::from_secs(1)
}

/// A connect probe's overall deadline: every attempt, the greeting wait, a second of slack.
fn connect_deadline(spec: &TcpSpec) -> Duration {
    deadline(spec.timeout, u32::from(spec.retries) + 1) + spec.banner_wait.unwrap_or_default()
}

/// Port scan of one batch: raw SYN scan of the IPv4 targets when raw sockets are allowed (root
/// or CAP_NET_RAW), then a connect probe (handshake time, greeting) of only the ports found
/// open; connect scan for IPv6 targets, and for everything when SYN scanning is unavailable.
/// A port that answered the SYN but then refused the connection is not reported open.
async fn port_scan(
    tools: &Tools,
    targets: Arc<[Target]>,
    cx: &Cx,
) -> BTreeMap<IpAddr, Vec<OpenPort>> {
    let ports = tools.ports.clone();
    if ports.is_empty() || targets.is_empty() {
        return BTreeMap::new();
    }
    let scanner = tools.syn.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(scanner) = scanner else {
        return connect_scan(tools, targets, cx).await;
    };
    let (v4, v6): (Vec<Target>, Vec<Target>) =
        targets.iter().cloned().partition(SynScanner::supports);
    let spec = tools.spec;
    let found = match scanner
        .scan_cx(&v4, &ports, spec.timeout, spec.retries, cx)
        .await
    {
        Ok(found) => found,
        Err(f) if f.reason == Reason::PermissionDenied => {
            tracing::warn!(failure = %f, "SYN scan refused; connect scan");
            *tools.syn.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return connect_scan(tools, targets, cx).await;
        }
        Err(f) => {
            tracing::warn!(failure = %f, "SYN scan failed");
            let jobs = v4.len() * ports.len();
            for _ in 0..jobs {
                cx.tally.failed(ProbeKind::Tcp, f.reason);
            }
            cx.progress.inc(jobs as u64);
            Vec::new()
        }
    };
    // The open ports' handshakes and greetings: probes of their own, planned here.
    let found: Arc<[(Target, u16)]> = found.into_iter().map(|(i, p)| (v4[i].clone(), p)).collect();
    let stage = Stage {
        kind: ProbeKind::Tcp,
        slot: true,
        deadline: connect_deadline(&spec),
        planned: false,
    };
    let (jobs, limits) = (found.clone(), cx.limits.clone());
    // Found(Some) connected, Found(None) refused now (not open after all); a port whose connect
    // did not run or was cut short (cancellation) stays open on the SYN-ACK's word, without a
    // greeting.
    let mut connected: Vec<Option<Option<OpenPort>>> = vec![None; found.len()];
    for (i, outcome) in fan_out(cx, stage, found.len(), move |i| {
        let (jobs, limits) = (jobs.clone(), limits.clone());
        async move {
            let (target, port) = &jobs[i];
            match tcp::probe(target, *port, &spec, &limits).await {
                Ok(open) => Ok(Some(Some(open))),
                // Closed since the SYN-ACK, or a firewall that answers SYNs for everything.
                Err(f) if matches!(f.reason, Reason::Refused | Reason::Timeout) => Ok(Some(None)),
                Err(f) => Err(f),
            }
        }
    })
    .await
    {
        match outcome {
            Probed::Found(open) => connected[i] = Some(open),
            Probed::Failed { .. } | Probed::Absent | Probed::NotRun => {}
        }
    }
    let mut out: BTreeMap<IpAddr, Vec<OpenPort>> = BTreeMap::new();
    for ((target, port), connect) in found.iter().zip(connected) {
        let open = match connect {
            Some(Some(open)) => open,
            Some(None) => continue,
            None => OpenPort {
                port: *port,
                connect_time: Duration::ZERO,
                greeting: Vec::new(),
            },
        };
        out.entry(target.ip()).or_default().push(open);
    }
    if !v6.is_empty() && !cx.cancel.is_cancelled() {
        out.extend(connect_scan(tools, v6.into(), cx).await);
    }
    out
}

/// Connect scan: one fan-out over (address, port) jobs, port-major so consecutive attempts go
/// to different hosts.
async fn connect_scan(
    tools: &Tools,
    targets: Arc<[Target]>,
    cx: &Cx,
) -> BTreeMap<IpAddr, Vec<OpenPort>> {
    let (ports, spec, limits) = (tools.ports.clone(), tools.spec, cx.limits.clone());
    let stage = Stage {
        kind: ProbeKind::Tcp,
        slot: true,
        deadline: connect_deadline(&spec),
        planned: true,
    };
    let t = targets.clone();
    let mut out: BTreeMap<IpAddr, Vec<OpenPort>> = BTreeMap::new();
    for (i, outcome) in fan_out(cx, stage, targets.len() * ports.len(), move |i| {
        let (t, ports, limits) = (t.clone(), ports.clone(), limits.clone());
        async move {
            let target = &t[i % t.len()];
            let port = ports[i / t.len()];
            match tcp::probe(target, port, &spec, &limits).await {
                Ok(open) => Ok(Some(open)),
                Err(f) if matches!(f.reason, Reason::Refused | Reason::Timeout) => Ok(None),
                Err(f) => Err(f),
            }
        }
    })
    .await
    {
        if let Probed::Found(open) = outcome {
            out.entry(targets[i % targets.len()].ip())
                .or_default()
                .push(open);
        }
    }
    for ports in out.values_mut() {
        ports.sort_by_key(|p| p.port);
    }
    out
}

/// The service on `ip:port` of `hosts`, when it is there.
fn service_mut(
    hosts: &mut BTreeMap<IpAddr, HostObservation>,
    ip: IpAddr,
    port: u16,
) -> Option<&mut ServiceObservation> {
    hosts
        .get_mut(&ip)
        .and_then(|h| h.services.iter_mut().find(|s| s.port == port))
}

async fn tls_stage(
    hosts: &mut BTreeMap<IpAddr, HostObservation>,
    by_ip: &HashMap<IpAddr, &Target>,
    trust: Arc<Trust>,
    timeout: Duration,
    cx: &Cx,
) {
    let now = Utc::now();
    let mut jobs = Vec::new();
    for host in hosts.values() {
        let names = &host.placement.names;
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
            jobs.push((by_ip[&host.ip].clone(), service.port, spec));
        }
    }
    let jobs: Arc<[(Target, u16, TlsSpec)]> = jobs.into();
    // The TLS probe opens one connection per version and suite it tries, each under its own
    // slot and attempt (its module's rule); the fan-out bounds the whole probe's time.
    let stage = Stage {
        kind: ProbeKind::Tls,
        slot: false,
        deadline: deadline(timeout, 256),
        planned: false,
    };
    let (j, limits) = (jobs.clone(), cx.limits.clone());
    let outcomes = fan_out(cx, stage, jobs.len(), move |i| {
        let (j, limits) = (j.clone(), limits.clone());
        async move {
            let (target, port, spec) = &j[i];
            match tls::probe(target, *port, spec, &limits).await {
                // A silent plaintext service times out on a ClientHello: not TLS, not a failure.
                Err(f) if f.reason == Reason::Timeout => Ok(None),
                other => other,
            }
        }
    })
    .await;
    // Every probed port starts as "not TLS"; what was found or failed is filled in below.
    for (target, port, _) in jobs.iter() {
        if let Some(s) = service_mut(hosts, target.ip(), *port) {
            s.tls = Some(None);
        }
    }
    for (i, outcome) in outcomes {
        let (target, port, _) = &jobs[i];
        let Some(s) = service_mut(hosts, target.ip(), *port) else {
            continue;
        };
        match outcome {
            Probed::Found(facts) => s.tls = Some(Some(facts)),
            Probed::Failed { reason } => failed(s, ProbeKind::Tls, reason),
            Probed::Absent | Probed::NotRun => {}
        }
    }
}

/// Keeps a failed probe on its service.
fn failed(service: &mut ServiceObservation, probe: ProbeKind, reason: Reason) {
    service.failures.push(ProbeFailure { probe, reason });
}

/// One identification check: the port, what is known of its service, its greeting.
type Check = (Target, u16, banner::Identity, Vec<u8>);

async fn exposure_stage(
    hosts: &mut BTreeMap<IpAddr, HostObservation>,
    by_ip: &HashMap<IpAddr, &Target>,
    greetings: &HashMap<(IpAddr, u16), Vec<u8>>,
    (identify, web): (bool, bool),
    timeout: Duration,
    cx: &Cx,
) {
    http::install_crypto_provider();
    let mut checks = Vec::new();
    let mut fetches = Vec::new();
    for host in hosts.values() {
        let name = host.placement.names.first().cloned();
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
            let target = by_ip[&host.ip].clone();
            if identify && service_probe::applies(&known, &greeting) {
                checks.push((target.clone(), service.port, known, greeting.clone()));
            }
            let modern_tls = service
                .tls
                .as_ref()
                .and_then(Option::as_ref)
                .is_some_and(|t| {
                    t.versions
                        .iter()
                        .any(|v| matches!(v, TlsVersion::Tls12 | TlsVersion::Tls13))
                });
            let is_tls = service.tls.as_ref().is_some_and(Option::is_some);
            if web
                && greeting.is_empty()
                && (modern_tls || (!is_tls && WEB_SERVICES.contains(&service.service.as_str())))
            {
                let spec = HttpSpec {
                    timeout,
                    host: name.clone(),
                    ..HttpSpec::default()
                };
                fetches.push((target, service.port, modern_tls, spec));
            }
        }
    }

    // Identification and unauthenticated-access checks.
    let checks: Arc<[Check]> = checks.into();
    let stage = Stage {
        kind: ProbeKind::Banner,
        slot: true,
        deadline: deadline(timeout, 8),
        planned: false,
    };
    let (j, limits) = (checks.clone(), cx.limits.clone());
    let outcomes = fan_out(cx, stage, checks.len(), move |i| {
        let (j, limits) = (j.clone(), limits.clone());
        async move {
            let (target, port, known, greeting) = &j[i];
            service_probe::probe(target, *port, known, greeting, timeout, &limits)
                .await
                .map(Some)
        }
    })
    .await;
    for (i, outcome) in outcomes {
        let (target, port, _, _) = &checks[i];
        let Some(s) = service_mut(hosts, target.ip(), *port) else {
            continue;
        };
        match outcome {
            Probed::Found(facts) => {
                if let Some(name) = facts.service {
                    s.service = name;
                }
                s.product = facts.product.or(s.product.take());
                s.version = facts.version.or(s.version.take());
                s.unauthenticated = facts.unauthenticated;
                s.exposure_evidence = facts.evidence;
            }
            Probed::Failed { reason } => failed(s, ProbeKind::Banner, reason),
            Probed::Absent | Probed::NotRun => {}
        }
    }

    // The web pages.
    let fetches: Arc<[(Target, u16, bool, HttpSpec)]> = fetches.into();
    let stage = Stage {
        kind: ProbeKind::Http,
        slot: true,
        deadline: deadline(timeout, 16),
        planned: false,
    };
    let (j, limits) = (fetches.clone(), cx.limits.clone());
    let outcomes = fan_out(cx, stage, fetches.len(), move |i| {
        let (j, limits) = (j.clone(), limits.clone());
        async move {
            let (target, port, tls, spec) = &j[i];
            http::probe(target, *port, *tls, spec, &limits).await
        }
    })
    .await;
    for (i, outcome) in outcomes {
        let (target, port, _, _) = &fetches[i];
        let Some(s) = service_mut(hosts, target.ip(), *port) else {
            continue;
        };
        match outcome {
            Probed::Found(facts) => s.http = Some(facts),
            Probed::Failed { reason } => failed(s, ProbeKind::Http, reason),
            Probed::Absent | Probed::NotRun => {}
        }
    }
}
