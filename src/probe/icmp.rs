//! ICMP echo: one liveness signal for a target.
//!
//! Input: a [`Target`] and a timeout. Output: the round-trip time of an echo reply, or a
//! [`Failure`] (`timeout` when nothing came back, `unreachable` when an ICMP error came back
//! instead). One [`Pinger`] per process holds one IPv4 and one IPv6 socket shared by every
//! concurrent ping; each echo gets a sequence number of its own, so thousands can be in flight.
//!
//! Sockets: an unprivileged datagram ICMP socket (Linux `net.ipv4.ping_group_range`) is tried
//! first, a raw socket (root or `CAP_NET_RAW`) second. On a datagram socket the kernel replaces
//! our echo identifier with the socket's own and only hands this socket its replies, so
//! surge-ping matches replies by (address, sequence) alone; on a raw socket it matches by
//! (address, identifier, sequence) and our identifier keeps other processes' replies apart.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use surge_ping::{Client, Config, ICMP, IcmpPacket, PingIdentifier, PingSequence, SurgeError};

use crate::probe::{Failure, Reason};
use crate::scope::{Limits, Target};

/// Echo payload: short, and recognisable in a packet capture.
const PAYLOAD: &[u8; 16] = b"netpatrol-echo\0\0";

/// How many times a sequence number clash (an older echo to the same host with the same number
/// still waiting) is skipped before giving up; only reachable with ~65,536 echoes in flight.
const SEQ_CLASH_TRIES: usize = 8;

/// The kind of socket the pinger got from the operating system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// Datagram ICMP socket, allowed by `net.ipv4.ping_group_range`.
    Unprivileged,
    /// Raw socket (root or `CAP_NET_RAW`).
    Raw,
}

impl SocketKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SocketKind::Unprivileged => "unprivileged",
            SocketKind::Raw => "raw",
        }
    }
}

/// Neither kind of ICMP socket could be opened. The message says what the operator can do.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open an ICMP socket (unprivileged: {unprivileged}; raw: {raw}); allow unprivileged \
     ping with `sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"`, or run netpatrol with \
     CAP_NET_RAW (`setcap cap_net_raw+ep <binary>`, or as root), or set `scan.icmp: false`"
)]
pub struct IcmpUnavailable {
    pub unprivileged: io::Error,
    #[source]
    pub raw: io::Error,
}

/// Sends ICMP echoes over one shared socket per address family.
pub struct Pinger {
    v4: Client,
    /// `None` when the host has no IPv6 (pings to IPv6 targets then fail as unreachable).
    v6: Option<Client>,
    kind: SocketKind,
    ident: PingIdentifier,
    seq: AtomicU16,
}

impl std::fmt::Debug for Pinger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinger")
            .field("kind", &self.kind)
            .field("v6", &self.v6.is_some())
            .field("ident", &self.ident.0)
            .finish()
    }
}

impl Pinger {
    /// Opens the ICMP sockets: an unprivileged datagram socket first, a raw socket second.
    ///
    /// Must be called inside a tokio runtime (each socket gets a receiving task).
    pub fn new() -> Result<Pinger, IcmpUnavailable> {
        let (v4, kind) = match open(ICMP::V4, socket2::Type::DGRAM) {
            Ok(client) => (client, SocketKind::Unprivileged),
            Err(unprivileged) => match open(ICMP::V4, socket2::Type::RAW) {
                Ok(client) => (client, SocketKind::Raw),
                Err(raw) => return Err(IcmpUnavailable { unprivileged, raw }),
            },
        };
        // Same kind for IPv6 as IPv4 when possible; the other kind, or none, otherwise.
        let (first, second) = match kind {
            SocketKind::Unprivileged => (socket2::Type::DGRAM, socket2::Type::RAW),
            SocketKind::Raw => (socket2::Type::RAW, socket2::Type::DGRAM),
        };
        let v6 = match open(ICMP::V6, first).or_else(|_| open(ICMP::V6, second)) {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::debug!(error = %error, "no ICMPv6 socket; IPv6 targets cannot be pinged");
                None
            }
        };
        Ok(Pinger {
            v4,
            v6,
            kind,
            ident: PingIdentifier(identifier()),
            seq: AtomicU16::new(0),
        })
    }

    /// The kind of IPv4 socket in use.
    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    /// Sends an echo and waits `timeout` for the reply; on a timeout, tries again up to
    /// `retries` more times. Each send first waits for the rate in `limits`.
    ///
    /// The caller holds the concurrency slot (`limits.slot()`) for the whole probe.
    pub async fn ping(
        &self,
        target: &Target,
        timeout: Duration,
        retries: u8,
        limits: &Limits,
    ) -> Result<Duration, Failure> {
        let ip = target.ip();
        let client = match ip {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => match &self.v6 {
                Some(client) => client,
                None => return Err(Failure::new(Reason::Unreachable, "no ICMPv6 socket")),
            },
        };
        let mut pinger = client.pinger(ip, self.ident).await;
        pinger.timeout(timeout);

        let mut last = Failure::timeout();
        for _ in 0..=retries {
            limits.attempt().await;
            match self.echo(&mut pinger).await {
                Ok(rtt) => return Ok(rtt),
                Err(failure) if failure.reason == Reason::Timeout => last = failure,
                Err(failure) => return Err(failure),
            }
        }
        Err(last)
    }

    /// One echo with a fresh sequence number.
    async fn echo(&self, pinger: &mut surge_ping::Pinger) -> Result<Duration, Failure> {
        for _ in 0..SEQ_CLASH_TRIES {
            let seq = PingSequence(self.seq.fetch_add(1, Ordering::Relaxed));
            match pinger.ping(seq, PAYLOAD).await {
                Ok((packet, rtt)) => return reply(&packet).map(|()| rtt),
                Err(SurgeError::IdenticalRequests { .. }) => continue,
                Err(error) => return Err(failure(error)),
            }
        }
        Err(Failure::new(
            Reason::Other,
            "too many echoes in flight to one host",
        ))
    }
}

fn open(kind: ICMP, sock_type: socket2::Type) -> io::Result<Client> {
    let config = Config::builder()
        .kind(kind)
        .sock_type_hint(sock_type)
        .build();
    let client = Client::new(&config)?;
    // surge-ping silently falls back to the other socket type; we want exactly the one asked for.
    if client.get_socket().get_type() == sock_type {
        Ok(client)
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{sock_type:?} ICMP socket not permitted"),
        ))
    }
}

/// Echo identifier for raw sockets: differs between netpatrol processes on one host, so their
/// replies do not cross.
fn identifier() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let pid = std::process::id();
    ((pid ^ (pid >> 16)) as u16) ^ NEXT.fetch_add(0x9e37, Ordering::Relaxed)
}

/// An echo reply is success; any ICMP error routed back to this echo means unreachable.
fn reply(packet: &IcmpPacket) -> Result<(), Failure> {
    // Echo reply is type 0 in ICMPv4 (RFC 792) and type 129 in ICMPv6 (RFC 4443).
    let (is_reply, kind, code) = match packet {
        IcmpPacket::V4(p) => (
            p.get_icmp_type().0 == 0,
            p.get_icmp_type().0,
            p.get_icmp_code().0,
        ),
        IcmpPacket::V6(p) => (
            p.get_icmpv6_type().0 == 129,
            p.get_icmpv6_type().0,
            p.get_icmpv6_code().0,
        ),
    };
    if is_reply {
        Ok(())
    } else {
        Err(Failure::new(
            Reason::Unreachable,
            format!("icmp type {kind} code {code}"),
        ))
    }
}

fn failure(error: SurgeError) -> Failure {
    match error {
        SurgeError::Timeout { .. } => Failure::timeout(),
        SurgeError::IOError(error) => Failure::io(&error),
        SurgeError::MalformedPacket(error) => Failure::new(Reason::Protocol, error.to_string()),
        other => Failure::new(Reason::Other, other.to_string()),
    }
}
