//! SYN scan against real loopback listeners on 127.41.0.0/16 (run as root, like CI).
//!
//! A sniffer (a raw TCP socket of the test's own) watches every segment to 127.41.0.0/23 during a
//! scan, which proves where SYNs went: a SYN scan completes no handshake, so a listener's
//! accept count alone could not show that an out-of-scope address was left alone.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netpatrol::config::{NetworkKind, Segment};
use netpatrol::probe::Reason;
use netpatrol::probe::syn::SynScanner;
use netpatrol::scope::{Limits, Scope, Target};
use tokio_util::sync::CancellationToken;

use crate::support::CountingListener;
use crate::support::sniffer::SynSniffer;

const TIMEOUT: Duration = Duration::from_millis(500);

fn targets(cidrs: &[&str], exclude: &[&str]) -> Vec<Target> {
    let segment = Segment {
        name: "lab".into(),
        network: NetworkKind::Other,
        cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        exclude: exclude.iter().map(|c| c.parse().unwrap()).collect(),
        department: None,
        consolidate_by: None,
    };
    Scope::new(&[segment]).targets().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `n` ports nothing listens on at `at`, not even on the wildcard address: binding them there
/// succeeds (it would fail next to a listener on the wildcard address).
fn closed_ports(at: IpAddr, n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind((at, 0)).unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

#[tokio::test]
async fn syn_scanner_opens_as_root() {
    SynScanner::new().expect("root may open raw sockets");
}

#[tokio::test]
async fn syn_scan_finds_exactly_the_open_ports_and_sends_only_to_the_scope() {
    let a = CountingListener::bind(ip("127.41.0.1"), 0).await;
    let b = CountingListener::bind(ip("127.41.0.2"), 0).await;
    let c = CountingListener::bind(ip("127.41.0.2"), 0).await;
    // Same port as `a`, at an excluded address and at one outside the segment.
    let excluded = CountingListener::bind(ip("127.41.0.3"), a.addr.port()).await;
    let outside = CountingListener::bind(ip("127.41.1.1"), a.addr.port()).await;

    // 127.41.0.1 - 127.41.0.6 minus .3.
    let targets = targets(&["127.41.0.0/29"], &["127.41.0.3/32"]);
    assert!(!targets.iter().any(|t| t.ip() == ip("127.41.0.3")));
    let mut ports = closed_ports(ip("127.41.0.1"), 20);
    ports.extend([a.addr.port(), b.addr.port(), c.addr.port()]);

    let scanner = SynScanner::new().unwrap();
    let limits = Limits::new(0, 64);
    let done = AtomicU64::new(0);
    let sniffer = SynSniffer::start(|d| matches!(d.octets(), [127, 41, 0 | 1, _]));
    let open = scanner
        .scan(
            &targets,
            &ports,
            TIMEOUT,
            1,
            &limits,
            &CancellationToken::new(),
            &|n| {
                done.fetch_add(n, Ordering::Relaxed);
            },
        )
        .await
        .unwrap();
    let syns = sniffer.finish();

    let mut found: Vec<SocketAddr> = open
        .iter()
        .map(|&(t, port)| SocketAddr::new(targets[t].ip(), port))
        .collect();
    found.sort();
    let mut expected = vec![a.addr, b.addr, c.addr];
    expected.sort();
    assert_eq!(found, expected);
    assert_eq!(
        done.load(Ordering::Relaxed),
        (targets.len() * ports.len()) as u64
    );

    // Every job got its SYN; none went anywhere else.
    let in_scope = |s: &SocketAddr| targets.iter().any(|t| t.ip() == s.ip());
    let stray: Vec<_> = syns.iter().filter(|s| !in_scope(s)).collect();
    assert!(stray.is_empty(), "SYNs outside the scope: {stray:?}");
    assert!(
        syns.len() >= targets.len() * ports.len(),
        "sniffer saw {} SYNs for {} jobs",
        syns.len(),
        targets.len() * ports.len()
    );
    // Half-open: the kernel's RST ends each handshake before a listener could accept it.
    for l in [&a, &b, &c, &excluded, &outside] {
        assert_eq!(l.accepted(), 0, "{} accepted a connection", l.addr);
    }
}

#[tokio::test]
async fn concurrent_syn_scans_keep_their_replies_apart() {
    let one = CountingListener::bind(ip("127.41.2.1"), 0).await;
    let two = CountingListener::bind(ip("127.41.3.1"), 0).await;
    let ports = vec![one.addr.port(), two.addr.port()];
    let scanner = SynScanner::new().unwrap();
    let limits = Limits::new(0, 64);
    let cancel = CancellationToken::new();
    let (t1, t2) = (
        targets(&["127.41.2.1/32"], &[]),
        targets(&["127.41.3.1/32"], &[]),
    );
    let (r1, r2) = tokio::join!(
        scanner.scan(&t1, &ports, TIMEOUT, 0, &limits, &cancel, &|_| {}),
        scanner.scan(&t2, &ports, TIMEOUT, 0, &limits, &cancel, &|_| {}),
    );
    assert_eq!(r1.unwrap(), vec![(0, one.addr.port())]);
    assert_eq!(r2.unwrap(), vec![(0, two.addr.port())]);
}

#[tokio::test]
async fn syn_scan_obeys_the_rate_limit() {
    let targets = targets(&["127.41.4.1/32"], &[]);
    let ports = closed_ports(ip("127.41.4.1"), 40);
    let scanner = SynScanner::new().unwrap();
    // 200 SYNs per second: 40 SYNs take at least ~195 ms.
    let limits = Limits::new(200, 64);
    let started = Instant::now();
    let open = scanner
        .scan(
            &targets,
            &ports,
            TIMEOUT,
            0,
            &limits,
            &CancellationToken::new(),
            &|_| {},
        )
        .await
        .unwrap();
    assert!(open.is_empty());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(190), "took {took:?}");
}

#[tokio::test]
async fn cancelling_stops_a_syn_scan_early() {
    let listener = CountingListener::bind(ip("127.41.5.1"), 0).await;
    let targets = targets(&["127.41.5.1/32"], &[]);
    // The open port first, then every port: 65,535 SYNs at 1,000 per second would take a minute.
    let mut ports = vec![listener.addr.port()];
    ports.extend(1..=u16::MAX);
    let scanner = SynScanner::new().unwrap();
    let limits = Limits::new(1000, 64);
    let cancel = CancellationToken::new();
    let stopper = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        })
    };
    let done = AtomicU64::new(0);
    let started = Instant::now();
    let open = scanner
        .scan(&targets, &ports, TIMEOUT, 0, &limits, &cancel, &|n| {
            done.fetch_add(n, Ordering::Relaxed);
        })
        .await
        .unwrap();
    stopper.await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let done = done.load(Ordering::Relaxed);
    assert!(done > 0 && done < 10_000, "{done} jobs reported");
    // What was seen before the cancel is kept.
    assert_eq!(open, vec![(0, listener.addr.port())]);
}

#[tokio::test]
async fn syn_scan_refuses_ipv6_targets() {
    let targets = targets(&["127.41.6.1/32", "::1/128"], &[]);
    let scanner = SynScanner::new().unwrap();
    let failure = scanner
        .scan(
            &targets,
            &[22],
            TIMEOUT,
            0,
            &Limits::new(0, 1),
            &CancellationToken::new(),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(failure.reason, Reason::Other);
    assert!(
        failure.detail.contains("connect probe"),
        "{}",
        failure.detail
    );
    assert!(!SynScanner::supports(&targets[1]) && SynScanner::supports(&targets[0]));
}

#[tokio::test]
async fn an_empty_job_list_sends_nothing() {
    let scanner = SynScanner::new().unwrap();
    let open = scanner
        .scan(
            &[],
            &[22],
            TIMEOUT,
            0,
            &Limits::new(0, 1),
            &CancellationToken::new(),
            &|_| panic!("no progress without jobs"),
        )
        .await
        .unwrap();
    assert!(open.is_empty());
}
