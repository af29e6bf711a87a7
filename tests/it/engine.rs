//! The scan engine as a whole, on 127.110.0.0/16: the configured rate, as seen on the wire.
//!
//! A sniffer (a raw TCP socket of the test's own, as root like CI) timestamps every SYN sent to
//! 127.110.0.0/16 while a scan runs, so the rate is measured where the network's owner would
//! measure it, not from the scanner's own counters.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use netpatrol::probe::ProbeKind;
use netpatrol::scan::{self, ScanRequest};
use netpatrol::scope::Limits;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use crate::support::config;

/// Timestamps of every SYN (without ACK) to 127.110.`subnet`.0/24 until stopped (each test
/// scans a /24 of its own: tests run at once).
struct SynClock {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Instant>>,
}

impl SynClock {
    fn start(subnet: u8) -> SynClock {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let _ = socket.set_recv_buffer_size(16 << 20);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 128];
            while !flag.load(Ordering::Acquire) {
                let Ok(n) = (&socket).read(&mut buf) else {
                    continue;
                };
                let p = &buf[..n];
                let ihl = usize::from(p[0] & 0x0f) * 4;
                if n < ihl + 14 || p[16] != 127 || p[17] != 110 || p[18] != subnet {
                    continue;
                }
                if p[ihl + 13] & 0x12 == 0x02 {
                    seen.push(Instant::now());
                }
            }
            seen
        });
        SynClock { stop, thread }
    }

    fn finish(self) -> Vec<Instant> {
        std::thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap()
    }
}

/// The most SYNs any one-second window (starting at any SYN) holds.
fn busiest_second(mut at: Vec<Instant>) -> usize {
    at.sort();
    let mut best = 0;
    let mut end = 0;
    for start in 0..at.len() {
        while end < at.len() && at[end] < at[start] + Duration::from_secs(1) {
            end += 1;
        }
        best = best.max(end - start);
    }
    best
}

/// A TCP-only scan of 127.110.`subnet`.0/24 × `ports` at `rate`, SYNs timestamped on the wire.
async fn scan_at(rate: u32, subnet: u8, ports: &str) -> (Vec<Instant>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            "scan: {{icmp: false, ports: [\"{ports}\"], rate: {rate}, retries: 0}}\n\
             segments:\n  - {{name: s, network: other, cidrs: [127.110.{subnet}.0/24]}}\n"
        ),
    );
    let limits = Limits::new(config.scan.rate, config.scan.concurrency);
    let clock = SynClock::start(subnet);
    let obs = scan::run(
        &config,
        &ScanRequest {
            segments: vec![],
            probes: [ProbeKind::Tcp].into_iter().collect(),
        },
        limits,
        ProgressBar::hidden(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    (clock.finish(), obs.run.probes)
}

fn assert_rate_kept(rate: u32, syns: Vec<Instant>, probes: u64) {
    // Every planned SYN went out (loopback answers each with a RST, so none is resent).
    assert!(
        syns.len() as u64 >= probes,
        "{} SYNs for {probes} probes",
        syns.len()
    );
    let busiest = busiest_second(syns);
    let bound = f64::from(rate) * 1.1;
    assert!(
        busiest as f64 <= bound,
        "{busiest} SYNs in one second at rate {rate} (bound {bound})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_scan_at_2000_per_second_never_passes_the_rate() {
    // 254 × 20 = 5,080 SYNs: about 2.5 s at 2,000/s.
    let (syns, probes) = scan_at(2000, 1, "30001-30020").await;
    assert_eq!(probes, 254 * 20);
    assert_rate_kept(2000, syns, probes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_scan_at_20000_per_second_never_passes_the_rate() {
    // 254 × 200 = 50,800 SYNs: about 2.5 s at 20,000/s.
    let (syns, probes) = scan_at(20000, 2, "30001-30200").await;
    assert_eq!(probes, 254 * 200);
    assert_rate_kept(20000, syns, probes);
}
