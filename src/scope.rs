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
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
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
#[derive(Debug)]
pub struct Limits {
    in_flight: Arc<Semaphore>,
    /// Interval between attempts; `None` = unlimited.
    interval: Option<Duration>,
    next_slot: Mutex<Instant>,
}

impl Limits {
    /// `rate` attempts per second (0 = unlimited), `concurrency` probes in flight (at least 1).
    pub fn new(rate: u32, concurrency: usize) -> Arc<Limits> {
        Arc::new(Limits {
            in_flight: Arc::new(Semaphore::new(concurrency.max(1))),
            interval: (rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate))),
            next_slot: Mutex::new(Instant::now()),
        })
    }

    /// Whether the rate is unlimited (rate 0): [`attempt`](Limits::attempt) then returns at
    /// once, and a sender that goes through many attempts without awaiting may skip it.
    pub fn is_unlimited(&self) -> bool {
        self.interval.is_none()
    }

    /// Probes allowed in flight at once.
    pub fn concurrency(&self) -> usize {
        self.in_flight.available_permits()
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
        let Some(interval) = self.interval else {
            return;
        };
        let when = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            // A quiet spell does not bank attempts for a later burst.
            let when = (*next).max(now);
            *next = when + interval;
            when
        };
        tokio::time::sleep_until(when).await;
    }
}
