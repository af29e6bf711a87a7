//! Scans of real loopback listeners: scope safety, limits, the demo network, the store, the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::ProgressBar;
use netpatrol::lab;
use netpatrol::observation::RunState;
use netpatrol::pass::scan_and_record;
use netpatrol::probe::ProbeKind;
use netpatrol::rules::RuleSet;
use netpatrol::scan::{self, ScanRequest};
use netpatrol::scope::Limits;
use netpatrol::store::Store;

use crate::support::store::for_each_backend;
use tokio_util::sync::CancellationToken;

use crate::support::{CountingListener, config};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn probes(list: &[ProbeKind]) -> BTreeSet<ProbeKind> {
    list.iter().copied().collect()
}

/// The scope invariant: listeners at an excluded address and at an address outside every
/// segment, on the very port being scanned, receive no connection at all, while the declared
/// address next to them does.
#[tokio::test]
async fn undeclared_and_excluded_addresses_are_never_probed() {
    let inside = CountingListener::bind(ip("127.31.0.1"), 0).await;
    let port = inside.addr.port();
    let excluded = CountingListener::bind(ip("127.31.0.2"), port).await;
    let outside = CountingListener::bind(ip("127.31.0.9"), port).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            "scan: {{icmp: false, ports: [{port}], rate: 0, dns: {{enabled: false}}}}\n\
             segments:\n  - {{name: s, network: other, cidrs: [127.31.0.0/30], exclude: [127.31.0.2]}}\n"
        ),
    );
    let limits = Limits::new(0, 64);
    let obs = scan::run(
        &config,
        &ScanRequest::all(),
        limits,
        ProgressBar::hidden(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    // Host addresses of 127.31.0.0/30 are .1 and .2; .2 is excluded.
    assert_eq!(obs.run.addresses, 1);
    assert!(inside.accepted() >= 1);
    assert_eq!(excluded.accepted(), 0, "an excluded address was probed");
    assert_eq!(
        outside.accepted(),
        0,
        "an address outside every segment was probed"
    );
    let found: Vec<(IpAddr, u16)> = obs
        .hosts
        .iter()
        .flat_map(|h| h.services.iter().map(move |s| (h.ip, s.port)))
        .collect();
    assert_eq!(found, vec![(ip("127.31.0.1"), port)]);
    // Asking for the undeclared address directly yields no target.
    let scope = netpatrol::scope::Scope::new(&config.segments);
    assert!(scope.target(ip("127.31.0.9")).is_none());
    assert!(scope.target(ip("127.31.0.2")).is_none());
    assert!(scope.target(ip("127.31.0.1")).is_some());
}

/// The concurrency limit bounds connections held open at once, across the whole scan.
#[tokio::test]
async fn concurrency_limit_bounds_connections_in_flight() {
    let mut listeners = Vec::new();
    let (open, peak) = (Arc::default(), Arc::<AtomicUsize>::default());
    for last in 1..=4 {
        // Several silent services on several hosts, all held open for the banner wait.
        for _ in 0..3 {
            let l = CountingListener::bind_shared(
                ip(&format!("127.32.0.{last}")),
                0,
                Arc::clone(&open),
                Arc::clone(&peak),
            )
            .await;
            listeners.push(l);
        }
    }
    let ports: BTreeSet<u16> = listeners.iter().map(|l| l.addr.port()).collect();
    let ports: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            "scan: {{icmp: false, ports: [{}], rate: 0, concurrency: 3, banner_timeout_ms: 150}}\n\
             segments:\n  - {{name: s, network: other, cidrs: [127.32.0.0/29]}}\n",
            ports.join(", ")
        ),
    );
    let limits = Limits::new(config.scan.rate, config.scan.concurrency);
    let obs = scan::run(
        &config,
        &ScanRequest {
            segments: vec![],
            probes: probes(&[ProbeKind::Tcp, ProbeKind::Banner]),
        },
        limits,
        ProgressBar::hidden(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let open: usize = obs.hosts.iter().map(|h| h.services.len()).sum();
    assert_eq!(open, listeners.len());
    // Connections held open at once, over every listener: never more than the limit, and the
    // limit was used (12 services held 150 ms each cannot finish in series within the scan).
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "{peak} connections in flight with concurrency 3");
    assert!(peak >= 2, "probes ran one at a time");
}

/// The rate limit spaces connection attempts: 100 attempts at 20 per second take 99 intervals.
/// Time is paused, so this measures the limiter's schedule, not the machine.
#[tokio::test(start_paused = true)]
async fn rate_limit_spaces_attempts() {
    let limits = Limits::new(20, 8);
    let start = tokio::time::Instant::now();
    for _ in 0..100 {
        limits.attempt().await;
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(4950), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(5100), "{elapsed:?}");
    // Unlimited: no waiting at all.
    let free = Limits::new(0, 8);
    let start = tokio::time::Instant::now();
    for _ in 0..100 {
        free.attempt().await;
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// The demo network: every simulated service is found, named, and nothing else; the store
/// remembers hosts across scans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_network_scan_finds_exactly_its_services() {
    let shift = crate::support::lab();
    let dir = tempfile::tempdir().unwrap();
    let config = lab::demo_config(dir.path(), shift).unwrap();
    let store = Store::open(&config.store.path).await.unwrap();
    let limits = Limits::new(config.scan.rate, config.scan.concurrency);

    let rules = RuleSet::load(&config).unwrap();
    let (obs, report) = scan_and_record(
        &config,
        &rules,
        &store,
        &ScanRequest::all(),
        limits.clone(),
        ProgressBar::hidden(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(obs.run.state, RunState::Complete);
    let found: BTreeMap<SocketAddr, String> = obs
        .hosts
        .iter()
        .flat_map(|h| {
            h.services
                .iter()
                .map(move |s| (SocketAddr::new(h.ip, s.port), s.service.clone()))
        })
        .collect();
    let expected: BTreeMap<SocketAddr, String> = lab::endpoints(shift)
        .into_iter()
        .map(|(a, s)| (a, s.to_string()))
        .collect();
    assert_eq!(found, expected, "open services found vs the lab's");
    // Every host in the report is in a declared segment and carries its placement.
    let json = serde_json::to_value(&report).unwrap();
    let hosts = json["hosts"].as_array().unwrap();
    let h11 = hosts.iter().find(|h| h["ip"] == "127.20.1.11").unwrap();
    assert_eq!(h11["segment"], "extranet-a");
    assert_eq!(h11["network"], "extranet");
    assert_eq!(h11["department"], "rsj");
    assert_eq!(h11["approvals"], serde_json::json!(["HLSP-2025-002"]));
    assert_eq!(h11["projects"], serde_json::json!(["XM-2023-007"]));
    let ssh = &h11["services"].as_array().unwrap()[0];
    assert_eq!(ssh["service"], "ssh");
    assert!(
        ssh["banner"]
            .as_str()
            .unwrap()
            .starts_with("SSH-2.0-OpenSSH_8.9p1")
    );
    let unapproved = hosts.iter().find(|h| h["ip"] == "127.20.1.20").unwrap();
    assert_eq!(unapproved["approvals"], serde_json::json!([]));
    let legacy = hosts.iter().find(|h| h["ip"] == "127.20.3.3").unwrap();
    assert_eq!(legacy["department"], "wsj");

    // A second scan: no duplicate rows, first_seen kept, last_seen moved on.
    let before = store.hosts().await.unwrap();
    let (obs2, _) = scan_and_record(
        &config,
        &rules,
        &store,
        &ScanRequest::all(),
        limits,
        ProgressBar::hidden(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let after = store.hosts().await.unwrap();
    assert_eq!(before.len(), obs.hosts.len());
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.ip, b.ip);
        assert_eq!(a.first_seen, b.first_seen);
        assert!(
            a.last_seen > b.last_seen,
            "{} last_seen did not advance",
            a.ip
        );
    }
    assert_eq!(store.services().await.unwrap().len(), expected.len());
    let runs = store.runs().await.unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.state == "complete"));
    let stored = store.report(&obs2.run.id).await.unwrap().unwrap();
    assert_eq!(stored["scan"]["id"], obs2.run.id.as_str());
    store.close().await;
}

/// A scan cancelled half-way (Ctrl-C) is recorded as incomplete, with what it saw so far; a run
/// left `running` by a killed process is marked incomplete when the store opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_scan_leaves_a_consistent_store() {
    for_each_backend(|db| async move {
        let early = CountingListener::bind(ip("127.33.0.1"), 0).await;
        let port = early.addr.port();
        let dir = tempfile::tempdir().unwrap();
        // 1,024 addresses paced at 200 attempts per second: about five seconds of work.
        let config = config(
            dir.path(),
            &format!(
                "scan: {{icmp: false, ports: [{port}], rate: 200}}\n\
             segments:\n  - {{name: s, network: other, cidrs: [127.33.0.0/22]}}\n"
            ),
        );
        let store = db.open().await;
        let limits = Limits::new(config.scan.rate, config.scan.concurrency);
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stopper.cancel();
        });
        let rules = RuleSet::load(&config).unwrap();
        let (obs, report) = scan_and_record(
            &config,
            &rules,
            &store,
            &ScanRequest {
                segments: vec![],
                probes: probes(&[ProbeKind::Tcp]),
            },
            limits,
            ProgressBar::hidden(),
            cancel,
        )
        .await
        .unwrap();
        assert_eq!(obs.run.state, RunState::Incomplete);
        assert!(
            obs.run.probes < 1024,
            "stopped early: {} probes",
            obs.run.probes
        );
        assert_eq!(report.scan.state, RunState::Incomplete);
        let runs = store.runs().await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].state, "incomplete");
        assert!(runs[0].finished_at.is_some());
        // What it saw before the stop is kept (127.33.0.1 comes first).
        assert_eq!(store.hosts().await.unwrap().len(), 1);

        // A process killed mid-scan leaves a run `running`; the next open marks it incomplete.
        let mut cut = obs.run.clone();
        cut.id = "cut-off-run".into();
        store.begin_run(&cut).await.unwrap();
        store.close().await;
        let store = db.open().await;
        let states: Vec<String> = store
            .runs()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.state)
            .collect();
        assert_eq!(states, vec!["incomplete", "incomplete"]);
        store.close().await;
    })
    .await;
}

fn netpatrol() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netpatrol"))
}

/// `scan --format json` prints the document of CONTRACT.md §3; `--probes tcp` is a pure port
/// scan (no banners).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_scan_prints_the_contract_json() {
    let ssh = tokio::net::TcpListener::bind("127.34.0.5:0").await.unwrap();
    let port = ssh.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        loop {
            if let Ok((mut s, _)) = ssh.accept().await {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("netpatrol.yaml");
    std::fs::write(
        &cfg,
        format!(
            "scan: {{icmp: false, ports: [{port}], dns: {{enabled: false}}}}\n\
             departments: [{{id: fgw, name: 区发改委, emails: [it@fgw.example.gov.cn]}}]\n\
             segments:\n  - {{name: lab, network: extranet, cidrs: [127.34.0.0/29]}}\n\
             approvals:\n  - {{id: A-1, department: fgw, segment: lab, addresses: [127.34.0.5], approved_on: 2025-01-01}}\n"
        ),
    )
    .unwrap();
    let run = move |extra: &[&str]| {
        let out = netpatrol()
            .args(["scan", "-c"])
            .arg(&cfg)
            .args(["--format", "json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let report = tokio::task::spawn_blocking(move || (run(&[]), run(&["--probes", "tcp"])))
        .await
        .unwrap();
    let (full, tcp_only) = report;
    for key in [
        "id",
        "started_at",
        "finished_at",
        "segments",
        "addresses",
        "probes",
    ] {
        assert!(full["scan"].get(key).is_some(), "scan.{key} missing");
    }
    assert_eq!(full["scan"]["addresses"], 6);
    assert!(
        full["scan"]["started_at"]
            .as_str()
            .unwrap()
            .ends_with("+08:00"),
        "times in Asia/Shanghai"
    );
    let host = &full["hosts"][0];
    assert_eq!(host["ip"], "127.34.0.5");
    assert_eq!(host["alive"], true);
    assert_eq!(host["department"], "fgw");
    assert_eq!(host["approvals"], serde_json::json!(["A-1"]));
    let svc = &host["services"][0];
    assert_eq!(svc["port"], port);
    assert_eq!(svc["protocol"], "tcp");
    assert_eq!(svc["service"], "ssh");
    assert_eq!(svc["banner"], "SSH-2.0-OpenSSH_9.6");
    assert!(svc["tls"].is_null() && svc["http"].is_null());
    assert_eq!(full["findings"], serde_json::json!([]));
    let svc = &tcp_only["hosts"][0]["services"][0];
    assert_eq!(svc["port"], port);
    assert!(svc["banner"].is_null(), "--probes tcp reads no banner");
}

/// A config with mistakes: every one reported with its position, exit 64.
#[test]
fn cli_check_config_reports_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        "segments:\n\
         \x20 - {name: a, network: extranet, cidrs: [192.0.2.0/24]}\n\
         \x20 - {name: a, network: metro, cidrs: [192.0.2.128/25]}\n\
         \x20 - {name: c, network: departmental, cidrs: [198.51.100.0/33]}\n\
         approvals:\n\
         \x20 - {id: X, department: nobody, segment: a, addresses: [203.0.113.5], approved_on: 2025-02-01, expires_on: 2025-01-01}\n",
    )
    .unwrap();
    let out = netpatrol()
        .args(["check-config", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 5, "{stderr}");
    let path = cfg.display().to_string();
    for line in &lines {
        assert!(line.starts_with(&format!("{path}:")), "no position: {line}");
    }
    for (line_no, needle) in [
        (3, "duplicate"),
        (4, "198.51.100.0/33"),
        (4, "department"),
        (6, "nobody"),
        (6, "203.0.113.5"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{path}:{line_no}:")) && l.contains(needle)),
            "no problem about {needle:?} on line {line_no}:\n{stderr}"
        );
    }
    // The valid example and the demo config pass.
    for good in ["config/example.yaml", "config/demo.yaml"] {
        let out = netpatrol()
            .args(["check-config", "-c", good])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{good}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
