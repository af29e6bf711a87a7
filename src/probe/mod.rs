//! Probes: the stage that talks to the network.
//!
//! Input: a [`Target`](crate::scope::Target) (the only way to name an address, made by
//! `scope`) and the probe's settings. Output: facts, or a [`Failure`] with a bounded
//! [`Reason`]. A failing target is data, never an error that stops a scan. Probes never touch
//! metrics, the store or rules. Every network step runs under a timeout; every new connection
//! attempt first takes an attempt from the scope's [`Limits`](crate::scope::Limits) (a token
//! bucket that grants batches).
//!
//! The scan runs every probe through one fan-out ([`fanout`]: [`fan_out`] under a [`Cx`]),
//! which holds the concurrency slot, bounds each probe's total time, races it against
//! cancellation, advances progress and keeps the tally (coverage and reasons); a probe's
//! per-target outcome is a [`Probed`]. The raw SYN sender sends whole batches and reports to the
//! same tally. [`Reason::is_local`] separates failures of this machine (descriptors, buffers,
//! local addresses, permissions) from failures at the target.
//!
//! One file per protocol (and `fanout`, the wrapper): `icmp` (echo), `syn` (raw SYN scan, as root), `tcp` (connect scan and
//! greeting read), `dns` (reverse lookups), `banner` (service naming from greeting bytes and
//! ports), `service` (safe identification and unauthenticated-access checks), `tls` (TLS and
//! TLCP posture), `http` (web pages).

pub mod banner;
pub mod dns;
pub mod fanout;
pub mod http;
pub mod icmp;
pub mod service;
pub mod syn;
pub mod tcp;
pub mod tls;

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

pub use fanout::{Coverage, Cx, Probed, Stage, Tally, fan_out};

/// Why a probe got no answer. A bounded set: these become metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Nothing came back before the deadline.
    Timeout,
    /// The port answered with a reset: closed.
    Refused,
    /// No route, host or network unreachable.
    Unreachable,
    /// The operating system did not let us send (e.g. no ICMP socket permission).
    PermissionDenied,
    /// The peer reset or closed mid-exchange.
    Reset,
    /// Bytes came back that the protocol does not allow.
    Protocol,
    /// The scan was cancelled before this probe finished.
    Cancelled,
    /// Local: no file descriptor left (EMFILE, ENFILE).
    NoDescriptors,
    /// Local: no kernel memory or buffer space (ENOBUFS, ENOMEM).
    NoBuffers,
    /// Local: no local address or port to send from (EADDRNOTAVAIL, EADDRINUSE).
    NoLocalAddress,
    /// Anything else the OS reported.
    Other,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Refused => "refused",
            Reason::Unreachable => "unreachable",
            Reason::PermissionDenied => "permission_denied",
            Reason::Reset => "reset",
            Reason::Protocol => "protocol",
            Reason::Cancelled => "cancelled",
            Reason::NoDescriptors => "no_descriptors",
            Reason::NoBuffers => "no_buffers",
            Reason::NoLocalAddress => "no_local_address",
            Reason::Other => "other",
        }
    }

    /// Whether the failure happened on this machine (descriptors, buffers, local addresses,
    /// permissions) rather than at the target: a probe that failed locally says nothing about
    /// the target, so a scan with many of them is degraded.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            Reason::NoDescriptors
                | Reason::NoBuffers
                | Reason::NoLocalAddress
                | Reason::PermissionDenied
        )
    }

    /// Map an OS error to its bounded reason.
    pub fn from_io(error: &io::Error) -> Reason {
        use io::ErrorKind as K;
        // Local exhaustion first: std maps some of these to kinds shared with remote causes.
        match error.raw_os_error() {
            Some(EMFILE | ENFILE) => return Reason::NoDescriptors,
            Some(ENOBUFS | ENOMEM) => return Reason::NoBuffers,
            Some(EADDRNOTAVAIL | EADDRINUSE) => return Reason::NoLocalAddress,
            Some(EPERM | EACCES) => return Reason::PermissionDenied,
            _ => {}
        }
        match error.kind() {
            K::ConnectionRefused => Reason::Refused,
            K::TimedOut | K::WouldBlock => Reason::Timeout,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                Reason::Reset
            }
            K::PermissionDenied => Reason::PermissionDenied,
            K::HostUnreachable | K::NetworkUnreachable => Reason::Unreachable,
            K::AddrNotAvailable | K::AddrInUse => Reason::NoLocalAddress,
            K::OutOfMemory => Reason::NoBuffers,
            K::InvalidData => Reason::Protocol,
            _ => match error.raw_os_error() {
                // EHOSTUNREACH, ENETUNREACH on platforms where the kind is not mapped.
                Some(113) | Some(101) => Reason::Unreachable,
                _ => Reason::Other,
            },
        }
    }
}

// Linux errno values of local exhaustion (std has no stable kinds for all of them).
const EPERM: i32 = 1;
const ENOMEM: i32 = 12;
const EACCES: i32 = 13;
const ENFILE: i32 = 23;
const EMFILE: i32 = 24;
const EADDRINUSE: i32 = 98;
const EADDRNOTAVAIL: i32 = 99;
const ENOBUFS: i32 = 105;

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A probe that got no usable answer, with its bounded reason and a short detail for debug logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub detail: String,
}

impl Failure {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            detail: detail.into(),
        }
    }

    pub fn io(error: &io::Error) -> Failure {
        Failure::new(Reason::from_io(error), error.to_string())
    }

    pub fn timeout() -> Failure {
        Failure::new(Reason::Timeout, "timed out")
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// The kinds of probe a scan can run, as `--probes` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    Icmp,
    Tcp,
    Dns,
    Banner,
    Tls,
    Http,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 6] = [
        ProbeKind::Icmp,
        ProbeKind::Tcp,
        ProbeKind::Dns,
        ProbeKind::Banner,
        ProbeKind::Tls,
        ProbeKind::Http,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Icmp => "icmp",
            ProbeKind::Tcp => "tcp",
            ProbeKind::Dns => "dns",
            ProbeKind::Banner => "banner",
            ProbeKind::Tls => "tls",
            ProbeKind::Http => "http",
        }
    }

    pub fn parse(s: &str) -> Option<ProbeKind> {
        ProbeKind::ALL.into_iter().find(|k| k.as_str() == s.trim())
    }
}
