//! TCP connect probe: is the port open, and what does the service say first?
//!
//! One connection per attempt, `SO_LINGER 0` so that closing sends a reset and a large scan
//! leaves no pile of `TIME_WAIT` sockets behind. A port that stays silent (no SYN-ACK, no reset)
//! is retried `retries` times; a reset is final. When the kernel connects a socket to itself
//! (possible when scanning the local machine in the ephemeral port range), the connection is
//! dropped and reported as closed. With a banner wait set, the first bytes the service sends
//! within that wait are kept as its greeting.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use super::{Failure, Reason};
use crate::scope::{Limits, Target};

/// Largest greeting kept, in bytes.
pub const MAX_GREETING: usize = 2048;

/// How one TCP probe behaves.
#[derive(Debug, Clone, Copy)]
pub struct TcpSpec {
    /// Deadline of each connection attempt.
    pub timeout: Duration,
    /// Extra attempts for a silent port.
    pub retries: u8,
    /// How long to wait for a greeting after connecting; `None` = close at once.
    pub banner_wait: Option<Duration>,
}

/// An open port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPort {
    pub port: u16,
    /// Time to complete the handshake.
    pub connect_time: Duration,
    /// What the service sent on its own within the banner wait (empty when it stayed quiet or no
    /// banner wait was asked for).
    pub greeting: Vec<u8>,
}

/// Connect to `port` on `target`. The caller (the scan's fan-out) holds the concurrency slot.
/// `Err` carries why the port is not open: `Refused` (closed),
/// `Timeout` (filtered or silent), or another bounded reason.
pub async fn probe(
    target: &Target,
    port: u16,
    spec: &TcpSpec,
    limits: &Limits,
) -> Result<OpenPort, Failure> {
    let addr = SocketAddr::new(target.ip(), port);
    let mut attempts_left = spec.retries;
    loop {
        limits.attempt().await;
        let started = Instant::now();
        match connect(addr, spec.timeout).await {
            Ok(mut stream) => {
                let connect_time = started.elapsed();
                let greeting = match spec.banner_wait {
                    Some(wait) => read_greeting(&mut stream, wait).await,
                    None => Vec::new(),
                };
                return Ok(OpenPort {
                    port,
                    connect_time,
                    greeting,
                });
            }
            Err(failure) if failure.reason == Reason::Timeout && attempts_left > 0 => {
                attempts_left -= 1;
            }
            Err(failure) => return Err(failure),
        }
    }
}

/// One connection attempt under a deadline.
///
/// The socket is made non-blocking by hand rather than through `TcpSocket::connect`: on a
/// closed port of a near host the kernel often refuses the connection inside `connect(2)`
/// itself, and then no reactor registration is needed at all, which roughly halves the system
/// calls of a closed-port probe.
pub async fn connect(addr: SocketAddr, deadline: Duration) -> Result<TcpStream, Failure> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )
    .map_err(|e| Failure::io(&e))?;
    socket
        .set_linger(Some(Duration::ZERO))
        .map_err(|e| Failure::io(&e))?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {}
        Err(e) => return Err(Failure::io(&e)),
    }
    let stream =
        TcpStream::from_std(std::net::TcpStream::from(socket)).map_err(|e| Failure::io(&e))?;
    match timeout(deadline, stream.writable()).await {
        Err(_) => return Err(Failure::timeout()),
        Ok(Err(e)) => return Err(Failure::io(&e)),
        Ok(Ok(())) => {}
    }
    if let Some(e) = stream.take_error().map_err(|e| Failure::io(&e))? {
        return Err(Failure::io(&e));
    }
    // Self-connect: source port == destination port on the same address. Not a service.
    if stream.local_addr().ok() == Some(addr) {
        return Err(Failure::new(Reason::Refused, "self-connect dropped"));
    }
    Ok(stream)
}

/// Linux's EINPROGRESS, for kernels and libcs where the kind is not mapped.
const EINPROGRESS: i32 = 115;

/// The first bytes a service sends within `wait`, at most [`MAX_GREETING`]. A greeting that
/// arrives in several segments is gathered until the wait ends, the buffer fills, a line ends
/// or the peer closes.
async fn read_greeting(stream: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; MAX_GREETING];
    let mut len = 0;
    while len < MAX_GREETING {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf[len..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                len += n;
                // Text greetings end with a newline; binary ones (MySQL) come in one segment.
                if buf[..len].ends_with(b"\n") || !buf[..len].is_ascii() {
                    break;
                }
            }
        }
    }
    buf.truncate(len);
    buf
}
