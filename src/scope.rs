//! Scope: the only place that turns configuration into probe targets, and the limits every
//! probe obeys.
//!
//! Input: the validated segments. Output: [`Target`]s, which carry an address proven to lie in
//! a declared segment and outside its excludes, and [`Limits`], which bound new connection
//! attempts per second and probes in flight for the whole process.
//!
//! Invariant: a `Target` cannot be built anywhere else (its fields are private and it has no
//! public constructor), and every probe takes a `Target`, so an address no segment declares can
//! never be probed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{NetworkKind, Segment, canonical_net};

/// An address netpatrol may probe, with the segment that declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    ip: IpAddr,
    segment: Arc<str>,
    network: NetworkKind,
}

impl Target {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub fn segment(&self) -> &str {
        &self.segment
    }

    pub fn network(&self) -> NetworkKind {
        self.network
    }
}

/// The declared address space of one scan: the chosen segments minus their excludes, every
/// network in canonical form (IPv4-mapped IPv6 as IPv4).
#[derive(Debug, Clone)]
pub struct Scope {
    segments: Vec<ScopedSegment>,
}

#[derive(Debug, Clone)]
struct ScopedSegment {
    name: Arc<str>,
    network: NetworkKind,
    cidrs: Vec<IpNet>,
    exclude: Vec<IpNet>,
}

/// A segment too large to enumerate host by host (IPv6 /64 and the like).
#[derive(Debug, thiserror::Error)]
#[error(
    "segment {segment}: {cidr} has {size} addresses, more than the {limit} netpatrol enumerates"
)]
pub struct ScopeTooLarge {
    pub segment: String,
    pub cidr: IpNet,
    pub size: u128,
    pub limit: u128,
}

/// Largest network enumerated address by address (a /16 of IPv4).
pub const MAX_ENUMERATED: u128 = 1 << 16;

impl Scope {
    /// Scope over the given segments.
    pub fn new<'a>(segments: impl IntoIterator<Item = &'a Segment>) -> Scope {
        Scope {
            segments: segments
                .into_iter()
                .map(|s| ScopedSegment {
                    name: Arc::from(s.name.as_str()),
                    network: s.network,
                    cidrs: s.cidrs.iter().map(|n| canonical_net(n.trunc())).collect(),
                    exclude: s.exclude.iter().map(|n| canonical_net(n.trunc())).collect(),
                })
                .collect(),
        }
    }

    /// The target for `ip`, or `None` when no segment of this scope declares it or it is excluded.
    /// An IPv4-mapped IPv6 address is judged (and probed) as the IPv4 address it maps, so an
    /// IPv4 exclude cannot be bypassed by writing it as `::ffff:a.b.c.d`.
    pub fn target(&self, ip: IpAddr) -> Option<Target> {
        let ip = ip.to_canonical();
        self.segments.iter().find_map(|s| {
            let inside = s.cidrs.iter().any(|n| n.contains(&ip));
            let excluded = s.exclude.iter().any(|n| n.contains(&ip));
            (inside && !excluded).then(|| Target {
                ip,
                segment: s.name.clone(),
                network: s.network,
            })
        })
    }

    /// Every target of the scope, segment by segment, in address order, without duplicates.
    /// Refuses networks larger than [`MAX_ENUMERATED`] addresses rather than walking them.
    pub fn targets(&self) -> Result<Vec<Target>, ScopeTooLarge> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in &self.segments {
            for cidr in &s.cidrs {
                let size = match cidr {
                    IpNet::V4(n) => 1u128 << (32 - n.prefix_len()),
                    IpNet::V6(n) => 1u128
                        .checked_shl(128 - n.prefix_len() as u32)
                        .unwrap_or(u128::MAX),
                };
                if size > MAX_ENUMERATED {
                    return Err(ScopeTooLarge {
                        segment: s.name.to_string(),
                        cidr: *cidr,
                        size,
                        limit: MAX_ENUMERATED,
                    });
                }
                for ip in cidr.hosts() {
                    if !s.exclude.iter().any(|n| n.contains(&ip)) && seen.insert(ip) {
                        out.push(Target {
                            ip,
                            segment: s.name.clone(),
                            network: s.network,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Segment names in this scope.
    pub fn segment_names(&self) -> Vec<String> {
        self.segments.iter().map(|s| s.name.to_string()).collect()
    }
}

/// Process-wide bounds on probing: a rate of new connection attempts and a number of probes in
/// flight. Shared by every scan the process runs, so two scans together stay within them.
///
/// The rate is a token bucket (GCRA, the generic cell rate algorithm) that grants attempts in
/// batches: a caller asks for up to `n` attempts and gets between 1 and `n` at once, waiting
/// (one timer, however many it gets) only when the bucket is empty. No sleep per attempt, so the
/// configured rate is reached even above the timer's millisecond resolution. The bucket holds at
/// most [`BURST_SECONDS`] of attempts (at least one), so no one-second window sees more than the
/// rate plus that burst; a quiet spell banks no more than that.
#[derive(Debug)]
pub struct Limits {
    in_flight: Arc<Semaphore>,
    concurrency: usize,
    bucket: Option<Bucket>,
}

/// Largest burst the bucket grants, in seconds of the rate (1% over any one-second window).
pub const BURST_SECONDS: f64 = 0.01;

#[derive(Debug)]
struct Bucket {
    rate: u32,
    /// Nanoseconds per attempt.
    interval: f64,
    /// Attempts the bucket holds when full.
    burst: u32,
    /// The instant at which the bucket is empty given what was granted (GCRA's theoretical
    /// arrival time); attempts accrue from it at `rate`.
    empty_at: std::sync::Mutex<Instant>,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        let burst = ((f64::from(rate) * BURST_SECONDS) as u32).max(1);
        let interval = 1e9 / f64::from(rate);
        let now = Instant::now();
        Bucket {
            rate,
            interval,
            burst,
            // Starts full.
            empty_at: std::sync::Mutex::new(
                now.checked_sub(nanos(interval * f64::from(burst)))
                    .unwrap_or(now),
            ),
        }
    }

    /// Reserves between 1 and `want` attempts; returns how many and when they may start (now,
    /// or the instant the last of them accrues).
    fn reserve(&self, want: u32) -> (u32, Option<Instant>) {
        let want = want.max(1);
        let now = Instant::now();
        let full_span = nanos(self.interval * f64::from(self.burst));
        let mut empty_at = self.empty_at.lock().unwrap_or_else(|p| p.into_inner());
        // A quiet spell banks at most a full bucket.
        if let Some(floor) = now.checked_sub(full_span)
            && *empty_at < floor
        {
            *empty_at = floor;
        }
        let accrued = now.saturating_duration_since(*empty_at).as_nanos() as f64;
        let available = (accrued / self.interval) as u32;
        if available >= 1 {
            let granted = available.min(want).min(self.burst);
            *empty_at += nanos(self.interval * f64::from(granted));
            (granted, None)
        } else {
            // Empty: reserve a batch that accrues in future, and wait for it once.
            let granted = want.min(self.burst);
            *empty_at += nanos(self.interval * f64::from(granted));
            (granted, Some(*empty_at))
        }
    }
}

fn nanos(n: f64) -> Duration {
    Duration::from_nanos(n.max(0.0) as u64)
}

impl Limits {
    /// `rate` attempts per second (0 = unlimited), `concurrency` probes in flight (at least 1).
    pub fn new(rate: u32, concurrency: usize) -> Arc<Limits> {
        let concurrency = concurrency.max(1);
        Arc::new(Limits {
            in_flight: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            bucket: (rate > 0).then(|| Bucket::new(rate)),
        })
    }

    /// Limits for this process: raises the soft `RLIMIT_NOFILE` to its hard limit, then caps
    /// `concurrency` to what the descriptors allow ([`DESCRIPTORS_PER_PROBE`] per probe in
    /// flight, [`DESCRIPTORS_RESERVED`] kept for the store, the runtime and the HTTP server),
    /// and says so in the log when it caps. Descriptors taken by other work at run time (the
    /// daemon's HTTP clients, say) can still run out: such probes fail locally and count
    /// against the scan's coverage.
    pub fn for_process(rate: u32, concurrency: usize) -> Arc<Limits> {
        let allowed = match raise_descriptor_limit() {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(%error, "cannot read the descriptor limit; concurrency left as configured");
                return Limits::new(rate, concurrency);
            }
        };
        let fit = (allowed.saturating_sub(DESCRIPTORS_RESERVED) / DESCRIPTORS_PER_PROBE).max(1);
        let fit = usize::try_from(fit).unwrap_or(usize::MAX);
        if fit < concurrency {
            tracing::warn!(
                descriptors = allowed,
                configured = concurrency,
                capped = fit,
                "scan.concurrency capped to what the descriptor limit (RLIMIT_NOFILE) allows; \
                 raise the hard limit (LimitNOFILE= in the systemd unit) to lift it"
            );
        }
        Limits::new(rate, concurrency.min(fit))
    }

    /// Whether the rate is unlimited (rate 0): [`attempt`](Limits::attempt) then returns at
    /// once, and a sender that goes through many attempts without awaiting may skip it.
    pub fn is_unlimited(&self) -> bool {
        self.bucket.is_none()
    }

    /// Attempts per second; 0 = unlimited.
    pub fn rate(&self) -> u32 {
        self.bucket.as_ref().map_or(0, |b| b.rate)
    }

    /// The most attempts one [`attempts`](Limits::attempts) call grants at once.
    pub fn burst(&self) -> u32 {
        self.bucket.as_ref().map_or(u32::MAX, |b| b.burst)
    }

    /// Probes allowed in flight at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// A slot for one probe in flight; held for the probe's whole exchange.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        self.in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the limits semaphore is never closed")
    }

    /// Wait until one more connection attempt (or ICMP echo) is allowed by the rate.
    pub async fn attempt(&self) {
        self.attempts(1).await;
    }

    /// Wait until at least one attempt is allowed, and take up to `want` of them at once
    /// (`want` when the rate is unlimited). The caller must use or forgo what it was granted:
    /// the bucket does not take attempts back.
    pub async fn attempts(&self, want: u32) -> u32 {
        let Some(bucket) = &self.bucket else {
            return want.max(1);
        };
        let (granted, when) = bucket.reserve(want);
        if let Some(when) = when {
            tokio::time::sleep_until(when).await;
        }
        granted
    }
}

/// Descriptors a probe in flight may hold at once (a connection, and a second one while an HTTP
/// client or a TLS probe replaces it).
pub const DESCRIPTORS_PER_PROBE: u64 = 2;
/// Descriptors kept aside for everything but probes: the store, the runtime, the HTTP server.
pub const DESCRIPTORS_RESERVED: u64 = 64;

/// Raises the soft descriptor limit to the hard one; returns the soft limit now in force.
pub fn raise_descriptor_limit() -> Result<u64, nix::Error> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(
                    from = soft,
                    to = hard,
                    "descriptor limit raised to its hard limit"
                );
                return Ok(hard);
            }
            Err(error) => tracing::warn!(%error, soft, hard, "cannot raise the descriptor limit"),
        }
    }
    Ok(soft)
}
