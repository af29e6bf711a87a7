//! TCP SYN ("half-open") scan: which ports of many IPv4 targets are open, at the speed of a raw
//! socket rather than of the kernel's connect path.
//!
//! Input: [`Target`]s (the scope's proof that an address is declared), a port list, a timeout
//! and a retry count, the process-wide [`Limits`]. Output: the open (target index, port) pairs,
//! or a [`Failure`] when the scan cannot run (an IPv6 target, no packet could be sent).
//!
//! How: one SYN per (target, port) job, built by hand (IPv4 and TCP headers with their
//! checksums) and sent on a send-only `IPPROTO_RAW` socket; replies are read by one receiving
//! thread from a raw `IPPROTO_TCP` socket whose kernel filter (classic BPF) passes only SYN-ACK
//! and RST-ACK segments addressed to this scan's source port, many replies per system call
//! (`recvmmsg`, through nix's safe wrapper). A SYN-ACK means open, a RST means
//! closed, silence after `retries` resends and `timeout` means filtered (reported as not open).
//!
//! Invariants:
//! - Packets go only to the addresses of the `Target`s passed in: jobs are indices into that
//!   slice, and nothing else names a destination.
//! - A reply counts only when its acknowledgement number is our SYN's sequence number plus one.
//!   The sequence number is a keyed hash (a cookie) of (target, port) with a key drawn per scan,
//!   so replies to other traffic, to another scan, or forged by a third party are ignored.
//! - One source port per scan, drawn from 40000-59999 and held for the whole scan by a bound
//!   (not listening) TCP socket: no listener uses it and the kernel hands it to no other
//!   connection meanwhile.
//! - The kernel answers each SYN-ACK with a RST of its own, since it knows no such connection;
//!   that RST tears the half-open connection down on the server, so a SYN scan leaves no
//!   connection behind and the service sees no accepted connection (only its SYN backlog sees
//!   a moment's traffic).
//! - Outstanding work is one bit per job (answered or not) in a bitset, not a timer per probe:
//!   256 targets × 65,535 ports take 2 MiB. Scopes whose bitset would pass 8 MiB are scanned in
//!   groups of targets, one after the other.
//!
//! Needs root or `CAP_NET_RAW`: [`SynScanner::new`] says so when the sockets cannot be opened,
//! and the caller falls back to the connect scan of `probe::tcp`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, recvmmsg};
use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Cx, Failure, ProbeKind, Reason};
use crate::scope::{Limits, Target};

/// Source ports are drawn from `SOURCE_PORT_BASE .. SOURCE_PORT_BASE + SOURCE_PORT_SPAN`.
const SOURCE_PORT_BASE: u16 = 40_000;
const SOURCE_PORT_SPAN: u16 = 20_000;
/// Random source ports tried before giving up (each one may be in use).
const SOURCE_PORT_TRIES: usize = 64;

/// Receive buffer asked for; the kernel caps it at `net.core.rmem_max`. Replies are read as
/// they come, but a burst must not overflow while the reader is descheduled.
const RECV_BUFFER: usize = 32 << 20;
/// Send buffer asked for on the raw socket.
const SEND_BUFFER: usize = 4 << 20;
/// The reader wakes at least this often to see whether the scan is over.
const RECV_POLL: Duration = Duration::from_millis(100);
/// Bytes of a reply kept: IPv4 header (at most 60) and the first 20 of TCP are all we read.
const SNAP_LEN: usize = 128;
/// Replies read per `recvmmsg` call at most.
const RECV_BATCH: usize = 64;

/// Jobs handed to one blocking send call when the rate is unlimited.
const SEND_BATCH: usize = 8192;
/// How often (in packets) a blocking send batch looks at the cancellation token.
const CANCEL_CHECK: usize = 256;
/// A full send buffer is retried after this pause, at most `SEND_FULL_TRIES` times.
const SEND_FULL_PAUSE: Duration = Duration::from_micros(100);
const SEND_FULL_TRIES: usize = 2000;

/// Largest answered-bitset of one group of targets, in bits (8 MiB).
const GROUP_BITS: usize = 1 << 26;

/// Linux's ENOBUFS: a device or socket queue was full; worth retrying.
const ENOBUFS: i32 = 105;

/// TCP flags.
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// Bytes of one SYN: IPv4 header (20) and TCP header with an MSS option (24).
const SYN_LEN: usize = 44;
/// MSS we announce; some stacks drop SYNs without options.
const MSS: u16 = 1460;
/// Receive window announced in the SYN.
const WINDOW: u16 = 1024;

/// Raw sockets could not be opened. The message says what the operator can do.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open a raw IPv4 socket for SYN scanning ({source}); run netpatrol as root or with \
     CAP_NET_RAW (`setcap cap_net_raw+ep <binary>`); the TCP connect scan is used instead"
)]
pub struct SynUnavailable {
    #[source]
    pub source: io::Error,
}

/// Sends SYNs on one shared raw socket. Each [`scan`](SynScanner::scan) opens a receiving
/// socket of its own, so several scans may run at once.
pub struct SynScanner {
    /// `IPPROTO_RAW`: send only (the kernel delivers nothing to it), header included.
    send: Arc<Socket>,
}

impl std::fmt::Debug for SynScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynScanner").finish_non_exhaustive()
    }
}

impl SynScanner {
    /// Opens the raw IPv4 socket that sends SYNs and checks that a receiving raw TCP socket may
    /// be opened too. Err (saying that root or `CAP_NET_RAW` is needed) when the OS refuses:
    /// the caller then uses the connect scan.
    pub fn new() -> Result<SynScanner, SynUnavailable> {
        let open = || -> io::Result<Socket> {
            let send = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))?;
            // Implied by IPPROTO_RAW; said explicitly because our packets carry their header.
            send.set_header_included_v4(true)?;
            send.set_nonblocking(true)?;
            if let Err(error) = send.set_send_buffer_size(SEND_BUFFER) {
                tracing::debug!(%error, "raw socket send buffer left at its default");
            }
            drop(open_receiver(None)?);
            Ok(send)
        };
        let send = open().map_err(|source| SynUnavailable { source })?;
        Ok(SynScanner {
            send: Arc::new(send),
        })
    }

    /// Whether this scanner can scan `target` (IPv4 only; IPv6 targets need the connect scan).
    pub fn supports(target: &Target) -> bool {
        target.ip().is_ipv4()
    }

    /// SYN-scans `ports` on every target and returns the open (index into `targets`, port)
    /// pairs, sorted: a SYN-ACK came back. A RST means closed; no answer after the first SYN,
    /// `retries` resends and `timeout` after the last send means filtered. Neither is reported.
    ///
    /// Jobs go out port by port across all targets (consecutive SYNs go to different hosts).
    /// SYNs take attempts from `limits` in batches (see [`Limits::attempts`]) unless the rate is
    /// unlimited, and each batch is sent at once. The concurrency
    /// limit does not apply: nothing is held open while waiting for replies.
    ///
    /// `progress` is called with batches of jobs, once per (target, port) when its first SYN has
    /// gone out; the counts add up to `targets.len() * ports.len()` on a complete scan.
    /// Cancelling stops sending at once; the open ports seen so far are returned.
    ///
    /// Err, before anything is sent, when a target is IPv6 (scan those with the connect
    /// probe). Err with [`Reason::PermissionDenied`], before any progress is reported, when the
    /// OS refuses the first SYN (a firewall rule, a capability dropped since [`new`]): the
    /// caller can still fall back to the connect scan. Err after the scan when no SYN at all
    /// could be sent.
    ///
    /// [`new`]: SynScanner::new
    #[allow(clippy::too_many_arguments)]
    pub async fn scan(
        &self,
        targets: &[Target],
        ports: &[u16],
        timeout: Duration,
        retries: u8,
        limits: &Limits,
        cancel: &CancellationToken,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<(usize, u16)>, Failure> {
        self.scan_counted(targets, ports, timeout, retries, limits, cancel, progress)
            .await
            .map(|(open, _)| open)
    }

    /// [`scan`](SynScanner::scan) under a scan's [`Cx`], whose caller planned the jobs (in the
    /// tally and the progress length): each sent job counts as answered (loopback and real networks alike answer a
    /// SYN with a SYN-ACK, a RST or nothing: all three are an answer about the port), and each
    /// SYN that could not be sent counts as failed with its (usually local) reason.
    pub async fn scan_cx(
        &self,
        targets: &[Target],
        ports: &[u16],
        timeout: Duration,
        retries: u8,
        cx: &Cx,
    ) -> Result<Vec<(usize, u16)>, Failure> {
        let jobs = (targets.len() * ports.len()) as u64;
        let report = |n: u64| cx.progress.inc(n);
        let (open, stats) = self
            .scan_counted(
                targets, ports, timeout, retries, &cx.limits, &cx.cancel, &report,
            )
            .await?;
        let failed = stats.failed_jobs.min(jobs);
        let reason = stats
            .last_error
            .as_ref()
            .map_or(Reason::Other, Reason::from_io);
        for _ in 0..failed {
            cx.tally.failed(ProbeKind::Tcp, reason);
        }
        cx.tally.answered(stats.first_pass.saturating_sub(failed));
        Ok(open)
    }

    #[allow(clippy::too_many_arguments)]
    async fn scan_counted(
        &self,
        targets: &[Target],
        ports: &[u16],
        timeout: Duration,
        retries: u8,
        limits: &Limits,
        cancel: &CancellationToken,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(Vec<(usize, u16)>, SendStats), Failure> {
        let mut dst = Vec::with_capacity(targets.len());
        for target in targets {
            match target.ip() {
                IpAddr::V4(ip) => dst.push(ip),
                IpAddr::V6(ip) => {
                    return Err(Failure::new(
                        Reason::Other,
                        format!("SYN scan is IPv4 only; scan {ip} with the connect probe"),
                    ));
                }
            }
        }
        let mut unique = Vec::with_capacity(ports.len());
        let mut seen = vec![false; 1 << 16];
        for &port in ports {
            if !std::mem::replace(&mut seen[usize::from(port)], true) {
                unique.push(port);
            }
        }
        if dst.is_empty() || unique.is_empty() || cancel.is_cancelled() {
            return Ok((Vec::new(), SendStats::default()));
        }

        let (sport, reservation) = reserve_source_port().map_err(|e| Failure::io(&e))?;
        // Route lookups are system calls, one per target: off the async workers.
        let plan = tokio::task::spawn_blocking(move || Plan::new(dst, unique, sport))
            .await
            .map_err(|e| Failure::new(Reason::Other, format!("planning the scan: {e}")))?;
        let plan = Arc::new(plan);
        let no_route = plan.src.iter().filter(|s| s.is_none()).count();
        if no_route > 0 {
            tracing::debug!(
                targets = no_route,
                "no route to some targets; their ports count as not open"
            );
        }

        // One SYN before any progress: if the OS refuses it, the caller may still fall back.
        // The first pass sends it again (its reply may come before the reader listens).
        if let Some(t) = plan.src.iter().position(Option::is_some) {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok((Vec::new(), SendStats::default())),
                _ = limits.attempt() => {}
            }
            let group = Group::new(&plan, t, 1);
            if let Some(Err(e)) = send_syn_async(&self.send, &plan, &group, 0).await
                && e.kind() == io::ErrorKind::PermissionDenied
            {
                return Err(Failure::io(&e));
            }
        }

        let targets_per_group = (GROUP_BITS / plan.ports.len()).max(1);
        let mut open = Vec::new();
        let mut stats = SendStats::default();
        let mut first = 0;
        while first < plan.dst.len() && !cancel.is_cancelled() {
            let len = targets_per_group.min(plan.dst.len() - first);
            let group = Arc::new(Group::new(&plan, first, len));
            let found = self
                .scan_group(
                    &plan, &group, timeout, retries, limits, cancel, progress, &mut stats,
                )
                .await
                .map_err(|e| Failure::io(&e))?;
            open.extend(found);
            first += len;
        }
        drop(reservation);

        if stats.failed > 0 {
            let error = stats.last_error.as_ref().map(ToString::to_string);
            if stats.sent == 0 {
                return Err(match stats.last_error {
                    Some(e) => Failure::io(&e),
                    None => Failure::new(Reason::Other, "no SYN could be sent"),
                });
            }
            tracing::debug!(
                sent = stats.sent,
                failed = stats.failed,
                error = error.unwrap_or_default(),
                "some SYNs could not be sent; their ports count as not open"
            );
        }
        open.sort_unstable();
        Ok((open, stats))
    }

    /// One group of targets: first pass, then waits and resends until every job is answered,
    /// the retries are spent or the scan is cancelled.
    #[allow(clippy::too_many_arguments)]
    async fn scan_group(
        &self,
        plan: &Arc<Plan>,
        group: &Arc<Group>,
        timeout: Duration,
        retries: u8,
        limits: &Limits,
        cancel: &CancellationToken,
        progress: &(dyn Fn(u64) + Sync),
        stats: &mut SendStats,
    ) -> io::Result<Vec<(usize, u16)>> {
        let socket = Arc::new(open_receiver(Some(plan.sport))?);
        let receiver = {
            let (socket, plan, group) = (socket.clone(), plan.clone(), group.clone());
            tokio::task::spawn_blocking(move || receive(&socket, &plan, &group))
        };
        let stop = ReaderStop {
            group: group.clone(),
            socket: socket.clone(),
        };

        for round in 0..=retries {
            let pass = if round == 0 {
                Pass::First(progress)
            } else {
                Pass::Resend
            };
            self.send_pass(plan, group, pass, limits, cancel, stats)
                .await;
            settle(group, Instant::now() + timeout, cancel).await;
            if group.all_answered() || cancel.is_cancelled() {
                break;
            }
        }

        drop(stop);
        if let Err(error) = receiver.await {
            tracing::debug!(%error, "SYN reply reader ended abnormally");
        }
        let open = std::mem::take(&mut *group.open.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(open)
    }

    /// Sends one pass over the group's jobs: all of them, or the unanswered ones.
    async fn send_pass(
        &self,
        plan: &Arc<Plan>,
        group: &Arc<Group>,
        pass: Pass<'_>,
        limits: &Limits,
        cancel: &CancellationToken,
        stats: &mut SendStats,
    ) {
        let resend = matches!(pass, Pass::Resend);
        let failed_before = stats.failed;
        let gone = AtomicU64::new(0);
        let report = |n: u64| {
            gone.fetch_add(n, Ordering::Relaxed);
            if let Pass::First(progress) = pass
                && n > 0
            {
                progress(n);
            }
        };
        if limits.is_unlimited() {
            // Batches on a blocking thread: a system call per SYN, nothing to await between.
            let mut next = 0;
            while next < group.jobs && !cancel.is_cancelled() {
                let end = (next + SEND_BATCH).min(group.jobs);
                let (socket, plan, group, cancel) = (
                    self.send.clone(),
                    plan.clone(),
                    group.clone(),
                    cancel.clone(),
                );
                let batch = tokio::task::spawn_blocking(move || {
                    let mut stats = SendStats::default();
                    let mut done = next;
                    for job in next..end {
                        if (job - next) % CANCEL_CHECK == 0 && cancel.is_cancelled() {
                            break;
                        }
                        done = job + 1;
                        if resend && group.is_answered(job) {
                            continue;
                        }
                        stats.add(send_syn_blocking(&socket, &plan, &group, job));
                    }
                    (stats, done)
                })
                .await;
                let Ok((batch, done)) = batch else { break };
                stats.merge(batch);
                report((done - next) as u64);
                next = done;
            }
        } else {
            // Attempts come from the bucket in batches; each granted batch goes out in a tight
            // loop of non-blocking sends (no timer per SYN, which would cap the rate near the
            // timer's resolution).
            let mut unreported = 0u64;
            let mut granted = 0u32;
            for job in 0..group.jobs {
                if resend && group.is_answered(job) {
                    continue;
                }
                if group.is_unroutable(plan, job) {
                    unreported += 1;
                    continue;
                }
                if granted == 0 {
                    if cancel.is_cancelled() {
                        break;
                    }
                    let want = u32::try_from(group.jobs - job).unwrap_or(u32::MAX);
                    granted = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break,
                        n = limits.attempts(want) => n,
                    };
                }
                granted -= 1;
                stats.add(send_syn_async(&self.send, plan, group, job).await);
                unreported += 1;
                if unreported >= 64 {
                    report(unreported);
                    unreported = 0;
                }
            }
            report(unreported);
        }
        if !resend {
            stats.first_pass += gone.load(Ordering::Relaxed);
            stats.failed_jobs += stats.failed - failed_before;
        }
    }
}

/// Which pass over the jobs: the first (reports progress) or a resend of the unanswered.
#[derive(Clone, Copy)]
enum Pass<'a> {
    First(&'a (dyn Fn(u64) + Sync)),
    Resend,
}

/// Stops a group's reply reader when dropped: at the end of the group, and also when the scan's
/// future is dropped half-way without being cancelled (the blocking reader would otherwise run
/// on and hold up the runtime's shutdown).
struct ReaderStop {
    group: Arc<Group>,
    socket: Arc<Socket>,
}

impl Drop for ReaderStop {
    fn drop(&mut self) {
        self.group.stop.store(true, Ordering::Release);
        // Wakes the reader at once (its recv returns 0); the error (ENOTCONN) is expected.
        let _ = self.socket.shutdown(Shutdown::Read);
    }
}

/// Waits until every job of the group is answered, `deadline` passes, or the scan is cancelled.
async fn settle(group: &Group, deadline: Instant, cancel: &CancellationToken) {
    while !group.all_answered() {
        tokio::select! {
            // A stored permit makes this return at once when the last answer came meanwhile.
            _ = group.last_answer.notified() => {}
            _ = tokio::time::sleep_until(deadline) => return,
            _ = cancel.cancelled() => return,
        }
    }
}

/// What one scan knows about its targets and ports, shared with the sender and the reader.
struct Plan {
    /// Target addresses, in the caller's order (index = target index).
    dst: Vec<Ipv4Addr>,
    /// Our address as each target sees it; `None` when there is no route.
    src: Vec<Option<Ipv4Addr>>,
    /// Distinct ports, in the caller's order.
    ports: Vec<u16>,
    /// Port → index in `ports`, or `u32::MAX`.
    port_index: Vec<u32>,
    /// Address → target index.
    by_addr: HashMap<Ipv4Addr, usize>,
    /// Our source port.
    sport: u16,
    /// Key of the sequence-number cookie, random per scan.
    key: RandomState,
}

impl Plan {
    fn new(dst: Vec<Ipv4Addr>, ports: Vec<u16>, sport: u16) -> Plan {
        let src = dst.iter().map(|&ip| source_address(ip)).collect();
        let mut port_index = vec![u32::MAX; 1 << 16];
        for (i, &port) in ports.iter().enumerate() {
            port_index[usize::from(port)] = i as u32;
        }
        let by_addr = dst.iter().enumerate().map(|(i, &ip)| (ip, i)).collect();
        Plan {
            dst,
            src,
            ports,
            port_index,
            by_addr,
            sport,
            key: RandomState::new(),
        }
    }

    /// Sequence number of our SYN to (`dst`, `port`).
    fn cookie(&self, dst: Ipv4Addr, port: u16) -> u32 {
        self.key.hash_one((u32::from(dst), port, self.sport)) as u32
    }
}

/// The address the kernel would send from to reach `dst` (a UDP `connect` sends nothing; it
/// only routes). `None` when there is no route.
fn source_address(dst: Ipv4Addr) -> Option<Ipv4Addr> {
    // A fresh socket per target: a connected UDP socket keeps its first source address.
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(SocketAddrV4::new(dst, 9)).ok()?;
    match socket.local_addr().ok()? {
        SocketAddr::V4(local) if !local.ip().is_unspecified() => Some(*local.ip()),
        _ => None,
    }
}

/// Draws a random source port and holds it with a bound, not listening, TCP socket: binding
/// fails when anything (a listener included) uses the port, and while bound the kernel picks it
/// for no other connection. A SYN-ACK to it still finds no socket, so the kernel resets it.
fn reserve_source_port() -> io::Result<(u16, Socket)> {
    let state = RandomState::new();
    let mut last = None;
    for attempt in 0..SOURCE_PORT_TRIES {
        let draw = state.hash_one((std::process::id(), attempt, Instant::now()));
        let port = SOURCE_PORT_BASE + (draw % u64::from(SOURCE_PORT_SPAN)) as u16;
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        match socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into()) {
            Ok(()) => return Ok((port, socket)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free source port")))
}

/// One group of targets scanned together, and what came back for it.
struct Group {
    /// Index of the group's first target.
    first: usize,
    /// Targets in the group.
    len: usize,
    /// `len` × ports. Job `j` is port `j / len` on target `first + j % len`.
    jobs: usize,
    /// One bit per job: a SYN-ACK or RST came back (or the job cannot be sent).
    answered: Box<[AtomicU64]>,
    answered_count: AtomicUsize,
    /// Notified when the last job is answered.
    last_answer: Notify,
    /// Open (target index, port) pairs.
    open: Mutex<Vec<(usize, u16)>>,
    /// Set when the reader should stop.
    stop: AtomicBool,
}

impl Group {
    fn new(plan: &Plan, first: usize, len: usize) -> Group {
        let jobs = len * plan.ports.len();
        let group = Group {
            first,
            len,
            jobs,
            answered: (0..jobs.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            answered_count: AtomicUsize::new(0),
            last_answer: Notify::new(),
            open: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        };
        // Targets without a route get no SYN and no resend; nothing will answer for them.
        for t in 0..len {
            if plan.src[first + t].is_none() {
                for p in 0..plan.ports.len() {
                    group.answer(p * len + t);
                }
            }
        }
        group
    }

    /// (target index, port index) of a job.
    fn job_parts(&self, job: usize) -> (usize, usize) {
        (self.first + job % self.len, job / self.len)
    }

    fn is_answered(&self, job: usize) -> bool {
        self.answered[job / 64].load(Ordering::Relaxed) & (1 << (job % 64)) != 0
    }

    fn is_unroutable(&self, plan: &Plan, job: usize) -> bool {
        plan.src[self.job_parts(job).0].is_none()
    }

    /// Marks a job answered; true the first time.
    fn answer(&self, job: usize) -> bool {
        let bit = 1 << (job % 64);
        let fresh = self.answered[job / 64].fetch_or(bit, Ordering::Relaxed) & bit == 0;
        if fresh && self.answered_count.fetch_add(1, Ordering::AcqRel) + 1 == self.jobs {
            self.last_answer.notify_one();
        }
        fresh
    }

    fn all_answered(&self) -> bool {
        self.answered_count.load(Ordering::Acquire) >= self.jobs
    }
}

/// Counts of one or more sends.
#[derive(Debug, Default)]
struct SendStats {
    sent: u64,
    failed: u64,
    /// Jobs of the first pass gone through (sent, failed or unroutable).
    first_pass: u64,
    /// Jobs whose first-pass SYN could not be sent.
    failed_jobs: u64,
    last_error: Option<io::Error>,
}

impl SendStats {
    fn add(&mut self, result: Option<io::Result<()>>) {
        match result {
            None => {}
            Some(Ok(())) => self.sent += 1,
            Some(Err(e)) => {
                self.failed += 1;
                self.last_error = Some(e);
            }
        }
    }

    fn merge(&mut self, other: SendStats) {
        self.sent += other.sent;
        self.failed += other.failed;
        self.first_pass += other.first_pass;
        self.failed_jobs += other.failed_jobs;
        if other.last_error.is_some() {
            self.last_error = other.last_error;
        }
    }
}

/// The SYN of a job and where it goes; `None` when the target has no route.
fn packet(plan: &Plan, group: &Group, job: usize) -> Option<([u8; SYN_LEN], SockAddr)> {
    let (t, p) = group.job_parts(job);
    let src = plan.src[t]?;
    let (dst, port) = (plan.dst[t], plan.ports[p]);
    let syn = syn_packet(src, dst, plan.sport, port, plan.cookie(dst, port));
    Some((syn, SocketAddrV4::new(dst, 0).into()))
}

fn is_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock || error.raw_os_error() == Some(ENOBUFS)
}

/// Sends a job's SYN from a blocking thread, waiting out a full send queue.
fn send_syn_blocking(
    socket: &Socket,
    plan: &Plan,
    group: &Group,
    job: usize,
) -> Option<io::Result<()>> {
    let (syn, to) = packet(plan, group, job)?;
    let mut tries = 0;
    loop {
        match socket.send_to(&syn, &to) {
            Ok(_) => return Some(Ok(())),
            Err(e) if is_full(&e) && tries < SEND_FULL_TRIES => {
                tries += 1;
                std::thread::sleep(SEND_FULL_PAUSE);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err(e)),
        }
    }
}

/// Sends a job's SYN from an async task (rate-limited scans), waiting out a full send queue.
async fn send_syn_async(
    socket: &Socket,
    plan: &Plan,
    group: &Group,
    job: usize,
) -> Option<io::Result<()>> {
    let (syn, to) = packet(plan, group, job)?;
    let mut tries = 0;
    loop {
        // Non-blocking: returns at once, sent or not.
        match socket.send_to(&syn, &to) {
            Ok(_) => return Some(Ok(())),
            Err(e) if is_full(&e) && tries < SEND_FULL_TRIES => {
                tries += 1;
                tokio::time::sleep(SEND_FULL_PAUSE).await;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err(e)),
        }
    }
}

/// The reader: takes replies off the raw socket until the group is over, up to
/// [`RECV_BATCH`] per system call (`recvmmsg` waiting for the first only, so a lone reply is
/// not held back).
fn receive(socket: &Socket, plan: &Plan, group: &Group) {
    let mut bufs = vec![[0u8; SNAP_LEN]; RECV_BATCH];
    let mut headers = MultiHeaders::<()>::preallocate(RECV_BATCH, None);
    let mut lens: Vec<usize> = Vec::with_capacity(RECV_BATCH);
    while !group.stop.load(Ordering::Acquire) {
        lens.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                // None after a shutdown for reading: the loop condition ends it.
                Ok(messages) => lens.extend(messages.map(|m| m.bytes)),
                Err(Errno::EAGAIN | Errno::ETIMEDOUT | Errno::EINTR) => {}
                Err(error) => {
                    // An ICMP error about one of our SYNs, reported once through the socket.
                    tracing::debug!(%error, "raw socket reported an error");
                }
            }
        }
        for (buf, &n) in bufs.iter().zip(&lens) {
            if let Some(reply) = Reply::parse(&buf[..n.min(SNAP_LEN)]) {
                record(plan, group, &reply);
            }
        }
    }
}

/// Counts a reply when it answers one of this group's SYNs.
fn record(plan: &Plan, group: &Group, reply: &Reply) {
    if reply.dport != plan.sport {
        return;
    }
    let Some(&t) = plan.by_addr.get(&reply.src) else {
        return;
    };
    if t < group.first || t >= group.first + group.len || plan.src[t] != Some(reply.dst) {
        return;
    }
    let p = plan.port_index[usize::from(reply.sport)];
    if p == u32::MAX || reply.ack.wrapping_sub(1) != plan.cookie(reply.src, reply.sport) {
        return;
    }
    let job = p as usize * group.len + (t - group.first);
    if group.answer(job) && reply.open {
        group
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((t, reply.sport));
    }
}

/// The fields of a SYN-ACK or RST-ACK we match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reply {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ack: u32,
    /// SYN-ACK (open); otherwise RST (closed).
    open: bool,
}

impl Reply {
    /// Parses an IPv4 packet as read from a raw socket. `None` unless it is an unfragmented TCP
    /// segment with SYN+ACK or RST+ACK (our own outgoing SYNs, seen on loopback, are not).
    fn parse(packet: &[u8]) -> Option<Reply> {
        let version = packet.first()? >> 4;
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        if version != 4 || ihl < 20 || packet.len() < ihl + 14 || packet[9] != 6 {
            return None;
        }
        // More-fragments flag or a fragment offset: not a whole segment.
        if u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0 {
            return None;
        }
        let tcp = &packet[ihl..];
        let flags = tcp[13] & (SYN | RST | ACK);
        let open = match flags {
            f if f == SYN | ACK => true,
            f if f == RST | ACK => false,
            _ => return None,
        };
        Some(Reply {
            src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
            dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
            sport: u16::from_be_bytes([tcp[0], tcp[1]]),
            dport: u16::from_be_bytes([tcp[2], tcp[3]]),
            ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
            open,
        })
    }
}

/// Linux's IPPROTO_RAW: a send-only raw socket whose packets carry their own IP header.
const IPPROTO_RAW: i32 = 255;

/// A raw TCP socket for replies. With `sport`, a kernel filter passes only SYN+ACK and RST+ACK
/// segments to that port, so the reader is not woken for the host's other TCP traffic (a raw
/// TCP socket gets a copy of every segment, our own outgoing SYNs included).
fn open_receiver(sport: Option<u16>) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
    if let Some(sport) = sport {
        socket.attach_filter(&reply_filter(sport))?;
        if let Err(error) = socket.set_recv_buffer_size(RECV_BUFFER) {
            tracing::debug!(%error, "raw socket receive buffer left at its default");
        }
        socket.set_read_timeout(Some(RECV_POLL))?;
    }
    Ok(socket)
}

/// Classic BPF: accept unfragmented TCP segments to `sport` whose SYN/RST/ACK flags are exactly
/// SYN+ACK or RST+ACK. The packet starts at the IPv4 header (raw socket).
fn reply_filter(sport: u16) -> [SockFilter; 11] {
    // Opcodes from linux/filter.h.
    const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const LDX_B_MSH: u16 = 0xb1; // BPF_LDX | BPF_B | BPF_MSH
    const LD_H_IND: u16 = 0x48; // BPF_LD | BPF_H | BPF_IND
    const LD_B_IND: u16 = 0x50; // BPF_LD | BPF_B | BPF_IND
    const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let flags = u32::from(SYN | RST | ACK);
    [
        /* 0 */ SockFilter::new(LD_H_ABS, 0, 0, 6), // flags and fragment offset
        /* 1 */ SockFilter::new(JSET_K, 8, 0, 0x3fff), // a fragment: drop
        /* 2 */ SockFilter::new(LDX_B_MSH, 0, 0, 0), // X = IPv4 header length
        /* 3 */ SockFilter::new(LD_H_IND, 0, 0, 2), // TCP destination port
        /* 4 */ SockFilter::new(JEQ_K, 0, 5, u32::from(sport)),
        /* 5 */ SockFilter::new(LD_B_IND, 0, 0, 13), // TCP flags
        /* 6 */ SockFilter::new(AND_K, 0, 0, flags),
        /* 7 */ SockFilter::new(JEQ_K, 1, 0, u32::from(SYN | ACK)),
        /* 8 */ SockFilter::new(JEQ_K, 0, 1, u32::from(RST | ACK)),
        /* 9 */ SockFilter::new(RET_K, 0, 0, SNAP_LEN as u32),
        /* 10 */ SockFilter::new(RET_K, 0, 0, 0),
    ]
}

/// An IPv4 packet carrying a TCP SYN with an MSS option, checksums filled in. The IP
/// identification is left 0 for the kernel to fill.
fn syn_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> [u8; SYN_LEN] {
    let mut p = [0u8; SYN_LEN];
    // IPv4: version 4, header 5 words, total length, TTL 64, protocol TCP.
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(SYN_LEN as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(0, &p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    // TCP: ports, sequence, no ack, header 6 words, SYN, window, MSS option.
    let tcp = &mut p[20..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 6 << 4;
    tcp[13] = SYN;
    tcp[14..16].copy_from_slice(&WINDOW.to_be_bytes());
    tcp[20] = 2;
    tcp[21] = 4;
    tcp[22..24].copy_from_slice(&MSS.to_be_bytes());
    // Pseudo-header: source, destination, zero, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&((SYN_LEN - 20) as u16).to_be_bytes());
    let tcp_sum = checksum(sum_words(0, &pseudo), tcp);
    tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Adds `data` as big-endian 16-bit words (a last odd byte padded with zero) to `sum`.
fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The Internet checksum (RFC 1071) of `data`, continuing from a partial `sum`.
fn checksum(sum: u32, data: &[u8]) -> u16 {
    let mut sum = sum_words(sum, data);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    #[test]
    fn syn_checksums_verify() {
        let p = syn_packet(SRC, DST, 40_001, 443, 0xdead_beef);
        // A header with its checksum in place sums to 0xffff, i.e. checksums to zero.
        assert_eq!(checksum(0, &p[..20]), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&SRC.octets());
        pseudo[4..8].copy_from_slice(&DST.octets());
        pseudo[9] = 6;
        pseudo[11] = 24;
        assert_eq!(checksum(sum_words(0, &pseudo), &p[20..]), 0);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement 220d).
        assert_eq!(
            checksum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // An odd length is padded with a zero byte.
        assert_eq!(checksum(0, &[0x01]), !0x0100);
    }

    /// A reply as the peer would send it: addresses and ports swapped, our sequence + 1 acked.
    fn reply_to(syn: &[u8; SYN_LEN], flags: u8) -> Vec<u8> {
        let mut r = syn[..40].to_vec();
        r[2..4].copy_from_slice(&40u16.to_be_bytes());
        r[12..16].copy_from_slice(&syn[16..20]);
        r[16..20].copy_from_slice(&syn[12..16]);
        r[20..22].copy_from_slice(&syn[22..24]);
        r[22..24].copy_from_slice(&syn[20..22]);
        let seq = u32::from_be_bytes([syn[24], syn[25], syn[26], syn[27]]);
        r[28..32].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
        r[32] = 5 << 4;
        r[33] = flags;
        r
    }

    #[test]
    fn parses_syn_ack_and_rst_but_not_our_syn() {
        let syn = syn_packet(SRC, DST, 40_001, 443, 0xffff_ffff);
        assert_eq!(Reply::parse(&syn), None, "our own SYN is no reply");
        let open = Reply::parse(&reply_to(&syn, SYN | ACK)).unwrap();
        assert_eq!(
            open,
            Reply {
                src: DST,
                dst: SRC,
                sport: 443,
                dport: 40_001,
                ack: 0, // 0xffff_ffff + 1 wraps
                open: true
            }
        );
        assert!(!Reply::parse(&reply_to(&syn, RST | ACK)).unwrap().open);
        // A bare RST (the kernel's answer to a SYN-ACK) and a plain ACK are not replies.
        assert_eq!(Reply::parse(&reply_to(&syn, RST)), None);
        assert_eq!(Reply::parse(&reply_to(&syn, ACK)), None);
        // Truncated and fragmented packets are ignored.
        assert_eq!(Reply::parse(&reply_to(&syn, SYN | ACK)[..30]), None);
        let mut fragment = reply_to(&syn, SYN | ACK);
        fragment[6] = 0x20; // more fragments
        assert_eq!(Reply::parse(&fragment), None);
    }

    #[test]
    fn replies_count_only_with_the_cookie() {
        let plan = Plan {
            dst: vec![DST],
            src: vec![Some(SRC)],
            ports: vec![22, 443],
            port_index: {
                let mut v = vec![u32::MAX; 1 << 16];
                v[22] = 0;
                v[443] = 1;
                v
            },
            by_addr: [(DST, 0)].into_iter().collect(),
            sport: 40_001,
            key: RandomState::new(),
        };
        let group = Group::new(&plan, 0, 1);
        let good = Reply {
            src: DST,
            dst: SRC,
            sport: 443,
            dport: 40_001,
            ack: plan.cookie(DST, 443).wrapping_add(1),
            open: true,
        };
        for forged in [
            Reply {
                ack: good.ack ^ 1,
                ..good
            },
            Reply {
                dport: 40_002,
                ..good
            },
            Reply { dst: DST, ..good },
            Reply { sport: 80, ..good },
        ] {
            record(&plan, &group, &forged);
        }
        assert_eq!(group.answered_count.load(Ordering::Relaxed), 0);
        record(&plan, &group, &good);
        record(&plan, &group, &good);
        assert_eq!(group.answered_count.load(Ordering::Relaxed), 1);
        assert!(group.is_answered(1) && !group.is_answered(0));
        assert_eq!(*group.open.lock().unwrap(), vec![(0, 443)]);
    }
}
