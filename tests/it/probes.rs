//! Probes against real loopback peers: ICMP echo to 127/8 and ::1, reverse DNS against the
//! test DNS server of `support::dns`.
//!
//! No ICMP "dead host" test: on Linux every 127/8 address answers echo, so loopback has no
//! silent host to ping.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use netpatrol::config::{DnsSettings, NetworkKind, Segment};
use netpatrol::probe::Reason;
use netpatrol::probe::dns::ReverseDns;
use netpatrol::probe::icmp::Pinger;
use netpatrol::scope::{Limits, Scope, Target};

use crate::support::dns::DnsServer;

fn target(ip: &str) -> Target {
    let segment = Segment {
        name: "lab".into(),
        network: NetworkKind::Other,
        cidrs: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        exclude: vec![],
        department: None,
        consolidate_by: None,
    };
    let ip: IpAddr = ip.parse().unwrap();
    Scope::new(&[segment])
        .target(ip)
        .expect("loopback is in scope")
}

fn dns_settings(servers: &[&DnsServer]) -> DnsSettings {
    DnsSettings {
        enabled: true,
        nameservers: servers.iter().map(|s| s.addr()).collect(),
    }
}

#[tokio::test]
async fn icmp_socket_opens_as_root() {
    let pinger = Pinger::new().expect("root may open an ICMP socket");
    // Either kind is fine; the point is that one of them opened.
    let _ = pinger.kind();
}

#[tokio::test]
async fn icmp_echo_to_loopback_is_answered() {
    let pinger = Pinger::new().unwrap();
    let limits = Limits::new(0, 16);
    let rtt = pinger
        .ping(&target("127.0.0.1"), Duration::from_secs(2), 1, &limits)
        .await
        .expect("127.0.0.1 answers echo");
    assert!(rtt < Duration::from_secs(2), "rtt {rtt:?}");
}

#[tokio::test]
async fn icmp_echo_to_ipv6_loopback_is_answered() {
    let pinger = Pinger::new().unwrap();
    let limits = Limits::new(0, 16);
    pinger
        .ping(&target("::1"), Duration::from_secs(2), 1, &limits)
        .await
        .expect("::1 answers echo");
}

/// Hundreds of echoes over one socket, three to each address: every reply must find its own
/// echo. Paced at 10,000/s: a raw socket also receives every echo *request* sent on loopback,
/// and an unpaced burst of a few hundred overflows its receive buffer (and those of every
/// other test's raw socket), which would show as timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_echoes_are_matched() {
    let pinger = std::sync::Arc::new(Pinger::new().unwrap());
    let limits = Limits::new(10_000, 1024);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        let pinger = pinger.clone();
        let limits = limits.clone();
        let ip = format!("127.0.1.{}", 1 + i % 100);
        tasks.spawn(async move {
            let t = target(&ip);
            pinger.ping(&t, Duration::from_secs(2), 1, &limits).await
        });
    }
    let mut ok = 0;
    while let Some(result) = tasks.join_next().await {
        result.unwrap().expect("loopback echo answered");
        ok += 1;
    }
    assert_eq!(ok, 300);
}

#[tokio::test]
async fn icmp_obeys_the_rate_limit() {
    let pinger = Pinger::new().unwrap();
    // 20 echoes per second: 5 echoes need at least 4 intervals of 50 ms.
    let limits = Limits::new(20, 16);
    let start = Instant::now();
    for _ in 0..5 {
        pinger
            .ping(&target("127.0.0.1"), Duration::from_secs(2), 1, &limits)
            .await
            .unwrap();
    }
    assert!(
        start.elapsed() >= Duration::from_millis(190),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn reverse_dns_names_a_known_address() {
    let server = DnsServer::start(&[("1.0.0.127.in-addr.arpa", "gateway.lab.test")]).await;
    let dns = ReverseDns::new(&dns_settings(&[&server]), Duration::from_secs(2)).unwrap();
    let name = dns.ptr(&target("127.0.0.1")).await.expect("server answers");
    assert_eq!(name.as_deref(), Some("gateway.lab.test"));
}

#[tokio::test]
async fn reverse_dns_of_an_unknown_address_is_none() {
    let server = DnsServer::start(&[("1.0.0.127.in-addr.arpa", "gateway.lab.test")]).await;
    let dns = ReverseDns::new(&dns_settings(&[&server]), Duration::from_secs(2)).unwrap();
    assert_eq!(dns.ptr(&target("127.0.0.9")).await, Ok(None));
}

#[tokio::test]
async fn reverse_dns_of_ipv6_loopback() {
    let reverse = format!("1.{}ip6.arpa", "0.".repeat(31));
    let server = DnsServer::start(&[(reverse.as_str(), "v6.lab.test")]).await;
    let dns = ReverseDns::new(&dns_settings(&[&server]), Duration::from_secs(2)).unwrap();
    assert_eq!(
        dns.ptr(&target("::1")).await,
        Ok(Some("v6.lab.test".into()))
    );
}

#[tokio::test]
async fn reverse_dns_times_out_on_a_silent_server() {
    let server = DnsServer::silent().await;
    let timeout = Duration::from_millis(300);
    let dns = ReverseDns::new(&dns_settings(&[&server]), timeout).unwrap();
    let start = Instant::now();
    let failure = dns.ptr(&target("127.0.0.1")).await.unwrap_err();
    assert_eq!(failure.reason, Reason::Timeout, "{failure}");
    // One attempt, bounded: not the resolver's default retries.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}
