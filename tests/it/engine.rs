//! The scan engine as a whole, on 127.110.0.0/16: the configured rate, as seen on the wire;
//! coverage when the scanner runs out of descriptors; durable progress under SIGKILL; SIGTERM
//! reaching probes in flight.
//!
//! A sniffer (a raw TCP socket of the test's own, as root like CI) timestamps every SYN sent to
//! 127.110.0.0/16 while a scan runs, so the rate is measured where the network's owner would
//! measure it, not from the scanner's own counters.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use netpatrol::finding::State;
use netpatrol::probe::ProbeKind;
use netpatrol::scan::{self, ScanRequest};
use netpatrol::scope::Limits;
use netpatrol::store::Store;

use crate::support::store::for_each_backend;
use tokio_util::sync::CancellationToken;

use crate::support::sniffer::SynSniffer;
use crate::support::{CountingListener, config};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
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
    // Each test scans a /24 of its own: tests run at once.
    let clock = SynSniffer::start(move |d| d.octets()[..3] == [127, 110, subnet]);
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
    let at = clock.finish_timed().into_iter().map(|(at, _)| at).collect();
    (at, obs.run.probes)
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

/// Writes `yaml` (with a store in `dir`) as `dir/netpatrol.yaml`; returns its path.
fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let store = dir.join("np.db");
    write_config_with(
        dir,
        &format!("store: {{path: {}}}\n", store.display()),
        yaml,
    )
}

/// Writes `store` (a `store:` line) and `yaml` as `dir/netpatrol.yaml`; returns its path.
fn write_config_with(dir: &Path, store: &str, yaml: &str) -> PathBuf {
    let path = dir.join("netpatrol.yaml");
    std::fs::write(&path, format!("{store}{yaml}")).unwrap();
    path
}

/// `netpatrol scan -c CONFIG --format json --output OUT` run through bash, which first holds
/// `held` descriptors open (inherited by the scan) and sets the descriptor limit (soft and
/// hard) to `nofile`: a scanner whose descriptors are mostly taken, as by a daemon's idle
/// clients.
fn scan_command(config: &Path, out: &Path, held: u32, nofile: Option<u32>) -> Command {
    let mut script = String::new();
    for fd in 0..held {
        script.push_str(&format!("exec {}</dev/null; ", fd + 10));
    }
    if let Some(n) = nofile {
        script.push_str(&format!("ulimit -n {n}; "));
    }
    script.push_str("exec \"$@\"");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .arg("bash")
        .arg(env!("CARGO_BIN_EXE_netpatrol"))
        .args(["scan", "--format", "json", "--output"])
        .arg(out)
        .arg("-c")
        .arg(config);
    cmd
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

/// A scan whose descriptors run out is `degraded` (JSON and store), opens what it saw and
/// resolves nothing: the finding about a host that is gone stays open. The next healthy scan
/// resolves it, which shows the degraded scan alone kept it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_out_of_descriptors_is_degraded_and_resolves_nothing() {
    let gone = CountingListener::bind(ip("127.110.20.1"), 0).await;
    let mut busy = Vec::new();
    for _ in 0..150 {
        busy.push(CountingListener::bind(ip("127.110.20.2"), 0).await);
    }
    let ports: Vec<String> = std::iter::once(gone.addr.port())
        .chain(busy.iter().map(|l| l.addr.port()))
        .map(|p| p.to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "scan: {{icmp: false, ports: [{}], rate: 0, dns: {{enabled: false}}, banner_timeout_ms: 1500}}\n\
             compliance: {{resolve_after_scans: 1}}\n\
             segments:\n  - {{name: s, network: extranet, cidrs: [127.110.20.0/30]}}\n",
            ports.join(", ")
        ),
    );
    let out = dir.path().join("report.json");
    let run = |held, nofile| {
        let status = scan_command(&config, &out, held, nofile).status().unwrap();
        let report = report(&out);
        (status, report)
    };

    // 1: healthy; the host at .1 is unapproved.
    let (_, first) = run(0, None);
    assert_eq!(first["scan"]["state"], "complete", "{}", first["scan"]);
    let about_gone = |f: &netpatrol::finding::Finding| f.ip.as_deref() == Some("127.110.20.1");
    drop(gone);

    // 2: 200 of 256 descriptors held: most probes of .2's 150 ports fail locally.
    let (_, second) = run(200, Some(256));
    assert_eq!(second["scan"]["state"], "degraded", "{}", second["scan"]);
    let coverage = &second["scan"]["coverage"];
    assert!(
        coverage["failed_local"].as_u64().unwrap() > 0,
        "coverage {coverage}"
    );
    let store = Store::open(&dir.path().join("np.db")).await.unwrap();
    let runs = store.runs().await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1].state, "degraded");
    let findings = store.findings().await.unwrap();
    let kept: Vec<_> = findings.iter().filter(|f| about_gone(f)).collect();
    assert!(!kept.is_empty(), "the first scan found the host at .1");
    assert!(
        kept.iter().all(|f| f.state == State::Open),
        "a degraded scan resolved {kept:?}"
    );
    assert!(
        findings.iter().all(|f| f.resolved_at.is_none()),
        "no finding resolved"
    );
    store.close().await;

    // 3: healthy again; now the host at .1 is absent, and its findings resolve.
    drop(busy);
    let (_, third) = run(0, None);
    assert_eq!(third["scan"]["state"], "complete", "{}", third["scan"]);
    let store = Store::open(&dir.path().join("np.db")).await.unwrap();
    let findings = store.findings().await.unwrap();
    assert!(
        findings
            .iter()
            .filter(|f| about_gone(f))
            .all(|f| f.state == State::Resolved),
        "a complete scan resolves what it no longer sees"
    );
    store.close().await;
}

/// A scan killed with SIGKILL half-way leaves an incomplete run holding the hosts of the
/// batches it finished (checkpoints), not an empty store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_scan_leaves_an_incomplete_run_with_what_it_saw() {
    for_each_backend(|db| async move {
        let first = CountingListener::bind(ip("127.110.30.1"), 0).await;
        let port = first.addr.port();
        let _second = CountingListener::bind(ip("127.110.30.2"), port).await;
        let dir = tempfile::tempdir().unwrap();
        // 1,022 addresses at 100 attempts per second: ten seconds; the first batch of 256
        // addresses (both listeners) is done after about 2.6 s.
        let config = write_config_with(
            dir.path(),
            &db.yaml(),
            &format!(
                "scan: {{icmp: false, ports: [{port}], rate: 100, dns: {{enabled: false}}}}\n\
             segments:\n  - {{name: s, network: other, cidrs: [127.110.28.0/22]}}\n"
            ),
        );
        let out = dir.path().join("report.json");
        let mut child = scan_command(&config, &out, 0, None)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the first checkpoint (read-only, so the running scan is left alone).
        let checkpointed = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if db
                    .peek_count("SELECT COUNT(*) FROM hosts")
                    .await
                    .is_some_and(|n| n >= 2)
                {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), checkpointed)
            .await
            .expect("the first batch is checkpointed");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(!out.exists(), "killed before it wrote a report");

        let store = db.open().await;
        let runs = store.runs().await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].state, "incomplete");
        assert!(runs[0].finished_at.is_none());
        let hosts: Vec<String> = store
            .hosts()
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.ip)
            .collect();
        assert_eq!(hosts, ["127.110.30.1", "127.110.30.2"]);
        store.close().await;
    })
    .await;
}

/// SIGTERM reaches a probe in flight: a TLS probe waiting on a silent server with a 60 s step
/// timeout ends at once, and the scan exits (recorded incomplete) within the daemon's grace
/// period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_scan_stuck_on_a_silent_server() {
    let silent = CountingListener::bind(ip("127.110.40.1"), 0).await;
    let port = silent.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "scan: {{icmp: false, ports: [{port}], rate: 0, timeout_ms: 60000, banner_timeout_ms: 200, dns: {{enabled: false}}}}\n\
             segments:\n  - {{name: s, network: other, cidrs: [127.110.40.1/32]}}\n"
        ),
    );
    let out = dir.path().join("report.json");
    let mut child = scan_command(&config, &out, 0, None)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The port scan's connect, then the TLS probe's: the scan now waits on the silent server.
    let stuck = async {
        while silent.accepted() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), stuck)
        .await
        .expect("the TLS probe connects");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let grace = Instant::now() + netpatrol::daemon::GRACE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > grace {
            child.kill().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status.expect("the scan exits within the grace period after SIGTERM");
    assert!(!status.success(), "an interrupted scan exits 1");
    assert_eq!(report(&out)["scan"]["state"], "incomplete");
}

/// The token bucket on tokio's paused clock (simulated time, so this is arithmetic, not a
/// timing assert): many takers asking for batches get, over five seconds, the configured rate
/// within 10%, and no one-second window gets more than the rate plus 10%.
#[tokio::test(start_paused = true)]
async fn the_bucket_grants_the_rate_in_batches() {
    for rate in [100u32, 2_000, 20_000, 100_000] {
        let limits = Limits::new(rate, 64);
        let start = tokio::time::Instant::now();
        let end = start + Duration::from_secs(5);
        let grants = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut set = tokio::task::JoinSet::new();
        for taker in 0..16u32 {
            let (limits, grants) = (limits.clone(), grants.clone());
            set.spawn(async move {
                loop {
                    let n = limits.attempts(1 + taker * 97).await;
                    let now = tokio::time::Instant::now();
                    if now >= end {
                        break;
                    }
                    grants.lock().unwrap().push((now - start, n));
                }
            });
        }
        while set.join_next().await.is_some() {}
        let mut grants = std::mem::take(&mut *grants.lock().unwrap());
        grants.sort();
        let total: u64 = grants.iter().map(|g| u64::from(g.1)).sum();
        let expected = u64::from(rate) * 5;
        assert!(
            total.abs_diff(expected) * 10 <= expected,
            "rate {rate}: {total} granted in 5 s, expected about {expected}"
        );
        let mut window = 0u64;
        let mut first = 0;
        for (at, n) in &grants {
            window += u64::from(*n);
            while grants[first].0 + Duration::from_secs(1) <= *at {
                window -= u64::from(grants[first].1);
                first += 1;
            }
            assert!(
                window * 10 <= u64::from(rate) * 11,
                "rate {rate}: {window} granted within one second"
            );
        }
    }
}
