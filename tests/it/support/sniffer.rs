//! What went on the wire: a raw socket (as root) that records every SYN without ACK, the first
//! segment of a probe, to the destinations a test chose. The tests that count packets (the
//! scope, the rate, a targeted re-test) share it; each names its own addresses, because the
//! tests of the one binary run at once.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Records (when, destination) of every SYN to an address `wanted` accepts, until finished.
pub struct SynSniffer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, SocketAddr)>>,
}

impl SynSniffer {
    pub fn start(wanted: impl Fn(Ipv4Addr) -> bool + Send + 'static) -> SynSniffer {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        // Room for a fast scan's segments while the thread is not reading.
        let _ = socket.set_recv_buffer_size(16 << 20);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 256];
            while !flag.load(Ordering::Acquire) {
                let Ok(n) = (&socket).read(&mut buf) else {
                    continue;
                };
                let p = &buf[..n];
                if n < 20 {
                    continue;
                }
                let ihl = usize::from(p[0] & 0x0f) * 4;
                let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
                if n < ihl + 14 || !wanted(dst) {
                    continue;
                }
                let tcp = &p[ihl..];
                if tcp[13] & 0x12 == 0x02 {
                    let port = u16::from_be_bytes([tcp[2], tcp[3]]);
                    seen.push((Instant::now(), SocketAddr::from((dst, port))));
                }
            }
            seen
        });
        SynSniffer { stop, thread }
    }

    /// Every SYN seen, with when it was read.
    pub fn finish_timed(self) -> Vec<(Instant, SocketAddr)> {
        // Let the last segments of the scan reach the socket.
        std::thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap()
    }

    /// Every SYN seen: its destination address and port.
    pub fn finish(self) -> Vec<SocketAddr> {
        self.finish_timed().into_iter().map(|(_, a)| a).collect()
    }
}
