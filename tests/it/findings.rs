//! Reconciliation, rules and the findings lifecycle over real scans of loopback listeners.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::NaiveDate;
use indicatif::ProgressBar;
use netpatrol::finding::{self, State};
use netpatrol::lab;
use netpatrol::output::metrics::{self, DaemonMetrics};
use netpatrol::pass::scan_and_record;
use netpatrol::reconcile::History;
use netpatrol::rules::RuleSet;
use netpatrol::scan::{self, ScanRequest};
use netpatrol::scope::Limits;
use netpatrol::store::Store;

use crate::support::store::for_each_backend;
use tokio_util::sync::CancellationToken;

use crate::support::{CountingListener, config};

/// Where each rule fired: rule id → subjects ("ip", "ip:port", or the project/segment/approval).
fn fired(current: &[finding::Finding]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in current {
        let at = match (&f.ip, f.port) {
            (Some(ip), Some(port)) => format!("{ip}:{port}"),
            (Some(ip), None) => ip.clone(),
            (None, _) => f
                .approval
                .clone()
                .or_else(|| f.project.clone())
                .or_else(|| f.segment.clone())
                .unwrap_or_default(),
        };
        out.entry(f.rule.clone()).or_default().insert(at);
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Every access, network, project, TLS, crypto, exposure and HTTP rule fires on the demo
/// network exactly where the demo's registers and endpoints say it should, on a fixed date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_network_compliance_findings() {
    let shift = crate::support::lab();
    let dir = tempfile::tempdir().unwrap();
    let config = lab::demo_config(dir.path(), shift).unwrap();
    let rules = RuleSet::load(&config).unwrap();
    let obs = scan::run(
        &config,
        &ScanRequest::all(),
        Limits::new(0, 256),
        ProgressBar::hidden(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let today = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    // 127.20.1.15 (HLSP-2025-010) answered last in May 2025; nothing else has history.
    let history = History {
        last_seen: [(
            "127.20.1.15".parse::<IpAddr>().unwrap(),
            NaiveDate::from_ymd_opt(2025, 5, 1).unwrap(),
        )]
        .into(),
    };
    let assessment = finding::assess(&config, &rules, &obs, &history, &[], today);
    let fired = fired(&assessment.current);
    let port = |p: u16| p + shift;
    let at = |ip: &str, p: u16| format!("{ip}:{}", p + shift);
    let expect: &[(&str, BTreeSet<String>)] = &[
        (
            "access.unapproved_host",
            set(&["127.20.1.20", "127.20.2.7"]),
        ),
        ("access.approval_expired", set(&["127.20.1.12"])),
        (
            "access.unapproved_service",
            set(&[&format!("127.20.1.11:{}", port(3306))]),
        ),
        ("access.approval_unused", set(&["HLSP-2025-010"])),
        ("network.legacy_segment_active", set(&["legacy-wsj"])),
        ("project.live_before_acceptance", set(&["XM-2025-011"])),
        ("project.mlps_missing", set(&["XM-2022-004"])),
        ("project.mlps_overdue", set(&["XM-2023-007"])),
        ("project.crypto_missing", set(&["XM-2022-004"])),
        ("project.crypto_overdue", set(&["XM-2023-007"])),
        (
            "tls.cert_expired",
            set(&[&format!("127.20.1.14:{}", port(443))]),
        ),
        (
            "tls.cert_self_signed",
            set(&[
                &format!("127.20.1.10:{}", port(443)),
                &format!("127.20.1.14:{}", port(443)),
                &format!("127.20.2.4:{}", port(443)),
                &format!("127.20.2.8:{}", port(443)),
            ]),
        ),
        // Only 127.20.1.10 goes by a name (its project lists xmsb.hailing.example) that its
        // certificate (portal.hailing.example) does not cover.
        (
            "tls.cert_hostname_mismatch",
            set(&[&format!("127.20.1.10:{}", port(443))]),
        ),
        (
            "tls.protocol_legacy",
            set(&[&format!("127.20.2.8:{}", port(443))]),
        ),
        (
            "tls.weak_cipher",
            set(&[&format!("127.20.2.8:{}", port(443))]),
        ),
        ("tls.weak_key", set(&[&format!("127.20.2.8:{}", port(443))])),
        (
            "tls.weak_signature",
            set(&[&format!("127.20.2.8:{}", port(443))]),
        ),
        // XM-2024-003 serves TLS without any SM suite; XM-2024-009 speaks TLCP.
        ("crypto.no_sm_suite", set(&["XM-2024-003"])),
        (
            "exposure.telnet",
            set(&[&at("127.20.1.12", 23), &at("127.20.3.3", 23)]),
        ),
        ("exposure.ftp", set(&[&at("127.20.1.12", 21)])),
        (
            "exposure.database",
            set(&[
                &at("127.20.1.11", 3306),
                &at("127.20.2.6", 1433),
                &at("127.20.2.6", 5432),
                &at("127.20.3.4", 1521),
            ]),
        ),
        ("exposure.rdp", set(&[&at("127.20.2.7", 3389)])),
        ("exposure.smb", set(&[&at("127.20.3.2", 445)])),
        ("exposure.vnc", set(&[&at("127.20.2.9", 5900)])),
        ("exposure.docker_api", set(&[&at("127.20.2.6", 2375)])),
        (
            "exposure.redis_unauthenticated",
            set(&[&at("127.20.1.20", 6379)]),
        ),
        (
            "exposure.elasticsearch_unauthenticated",
            set(&[&at("127.20.1.20", 9200)]),
        ),
        (
            "exposure.memcached_unauthenticated",
            set(&[&at("127.20.3.3", 11211)]),
        ),
        ("exposure.plaintext_login", set(&[&at("127.20.1.13", 8080)])),
        ("exposure.directory_listing", set(&[&at("127.20.3.2", 80)])),
        ("exposure.admin_console", set(&[&at("127.20.2.8", 80)])),
        // Every plain-HTTP site but 127.20.1.10:80, which redirects to HTTPS.
        (
            "http.no_https_redirect",
            set(&[
                &at("127.20.1.13", 8080),
                &at("127.20.1.14", 80),
                &at("127.20.2.8", 80),
                &at("127.20.3.2", 80),
            ]),
        ),
        // 127.20.1.14:443 sends HSTS; 127.20.1.10:443 does not.
        ("http.missing_hsts", set(&[&at("127.20.1.10", 443)])),
    ];
    for (rule, subjects) in expect {
        assert_eq!(
            fired.get(*rule).cloned().unwrap_or_default(),
            *subjects,
            "{rule} fired at the wrong places"
        );
    }
    // Every access/network/project finding is accounted for above.
    for rule in fired.keys() {
        if [
            "access.",
            "network.",
            "project.",
            "tls.",
            "crypto.",
            "exposure.",
            "http.",
        ]
        .iter()
        .any(|p| rule.starts_with(p))
        {
            assert!(expect.iter().any(|(r, _)| r == rule), "unexpected {rule}");
        }
    }
    // Findings carry their owner, legal basis and deadline.
    let expired = assessment
        .current
        .iter()
        .find(|f| f.rule == "access.approval_expired")
        .unwrap();
    assert_eq!(expired.department.as_deref(), Some("jyj"));
    assert!(expired.basis.iter().any(|b| b.contains("第二十一条")));
    let deadline = rules.get("access.approval_expired").unwrap().deadline_days;
    assert_eq!(expired.due, today + chrono::Days::new(deadline.into()));
}

/// Two scans do not duplicate a finding; it resolves only after the configured number of
/// covering scans without it; it reopens when it returns. A waiver hides it while valid and
/// stops hiding it once expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_lifecycle_and_waivers() {
    for_each_backend(|db| async move {
    let listener = CountingListener::bind("127.36.0.5".parse().unwrap(), 0).await;
    let port = listener.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "scan: {{icmp: false, ports: [{port}], dns: {{enabled: false}}}}\n\
         compliance: {{resolve_after_scans: 2}}\n\
         segments:\n  - {{name: lab, network: extranet, cidrs: [127.36.0.0/29]}}\n"
    );
    let cfg = config(dir.path(), &base);
    let rules = RuleSet::load(&cfg).unwrap();
    let store = db.open().await;
    let scan_once = |cfg: netpatrol::config::Config| {
        let (rules, store) = (rules.clone(), store.clone());
        async move {
            scan_and_record(
                &cfg,
                &rules,
                &store,
                &ScanRequest::all(),
                Limits::new(0, 64),
                ProgressBar::hidden(),
                CancellationToken::new(),
            )
            .await
            .unwrap()
            .1
        }
    };
    let unapproved = |store: Store| async move {
        store
            .findings()
            .await
            .unwrap()
            .into_iter()
            .filter(|f| f.rule == "access.unapproved_host")
            .collect::<Vec<_>>()
    };

    let r1 = scan_once(cfg.clone()).await;
    assert!(
        r1.findings
            .iter()
            .any(|f| f.rule == "access.unapproved_host" && f.state == "open")
    );
    let first = unapproved(store.clone()).await;
    assert_eq!(first.len(), 1);
    let _ = scan_once(cfg.clone()).await;
    let second = unapproved(store.clone()).await;
    assert_eq!(second.len(), 1, "two scans, one finding");
    assert_eq!(second[0].first_seen, first[0].first_seen);
    assert!(second[0].last_seen > first[0].last_seen);

    // Fixed: absent once is not enough, absent twice resolves.
    drop(listener);
    let r3 = scan_once(cfg.clone()).await;
    assert!(
        r3.findings
            .iter()
            .all(|f| f.rule != "access.unapproved_host")
    );
    let after_one = unapproved(store.clone()).await;
    assert_eq!(
        (after_one[0].state, after_one[0].absent_scans),
        (State::Open, 1)
    );
    let _ = scan_once(cfg.clone()).await;
    let after_two = unapproved(store.clone()).await;
    assert_eq!(after_two[0].state, State::Resolved);
    assert!(after_two[0].resolved_at.is_some());

    // It comes back: reopened, same finding.
    let _listener = CountingListener::bind("127.36.0.5".parse().unwrap(), port).await;
    let _ = scan_once(cfg.clone()).await;
    let back = unapproved(store.clone()).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].state, State::Open);
    assert!(back[0].reopened_at.is_some());
    let events: Vec<String> = store
        .finding_events(&back[0].fingerprint)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(events, ["opened", "resolved", "reopened"]);

    // A waiver hides it (shown as waived) until it expires.
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive();
    let waived = |expires: NaiveDate| {
        config(
            dir.path(),
            &format!(
                "{base}exceptions:\n  - {{rule: \"access.*\", ip: 127.36.0.5, reason: 改造中, approver: 张伟, expires_on: {expires}}}\n"
            ),
        )
    };
    let r = scan_once(waived(today + chrono::Days::new(30))).await;
    let f = r
        .findings
        .iter()
        .find(|f| f.rule == "access.unapproved_host")
        .unwrap();
    assert_eq!(f.state, "waived");
    assert_eq!(f.waiver.as_ref().unwrap().approver, "张伟");
    let r = scan_once(waived(today - chrono::Days::new(1))).await;
    let f = r
        .findings
        .iter()
        .find(|f| f.rule == "access.unapproved_host")
        .unwrap();
    assert_eq!(f.state, "open", "an expired waiver hides nothing");
    assert!(f.waiver.is_none());
    store.close().await;
    })
    .await;
}

/// `--fail-on` exits 3 when an open finding reaches the severity, and not for waived ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_fail_on() {
    let listener = CountingListener::bind("127.37.0.9".parse().unwrap(), 0).await;
    let port = listener.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let write = |extra: &str| {
        let path = dir.path().join("netpatrol.yaml");
        std::fs::write(
            &path,
            format!(
                "scan: {{icmp: false, ports: [{port}], dns: {{enabled: false}}}}\n\
                 segments:\n  - {{name: lab, network: extranet, cidrs: [127.37.0.8/30]}}\n{extra}"
            ),
        )
        .unwrap();
        path
    };
    let run = |path: std::path::PathBuf, severity: &'static str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_netpatrol"))
            .args(["scan", "--format", "json", "--fail-on", severity, "-c"])
            .arg(path)
            .output()
            .unwrap()
            .status
            .code()
    };
    let plain = write("");
    let (high, critical) =
        tokio::task::spawn_blocking(move || (run(plain.clone(), "high"), run(plain, "critical")))
            .await
            .unwrap();
    assert_eq!(high, Some(3), "an unapproved host is high");
    assert_eq!(critical, Some(0));
    let waived = write(
        "exceptions:\n  - {rule: \"access.*\", ip: 127.37.0.9, reason: 测试, approver: 李娜, expires_on: 2099-12-31}\n",
    );
    let code = tokio::task::spawn_blocking(move || run(waived, "high"))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "waived findings do not fail the scan");
}

/// One host in `/24` prefix `net` (at `net`.1), unapproved and listed by two projects, XM-1 then
/// XM-2, with a waiver scoped to XM-2, scanned and recorded. The temporary directory, config,
/// store and report, and the listener that keeps the host alive.
async fn scan_host_in_two_projects(
    net: &str,
) -> (
    tempfile::TempDir,
    netpatrol::config::Config,
    Store,
    netpatrol::output::report::Report,
    CountingListener,
) {
    let host = CountingListener::bind(format!("{net}.1").parse().unwrap(), 0).await;
    let port = host.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "scan: {{icmp: false, ports: [{port}], rate: 0, dns: {{enabled: false}}}}\n\
             departments:\n  - {{id: fgw, name: 区发改委}}\n\
             segments:\n  - {{name: s, network: extranet, cidrs: [{net}.0/30]}}\n\
             projects:\n\
             \x20 - {{id: XM-1, name: 一号, department: fgw, stage: building, assets: [{net}.1]}}\n\
             \x20 - {{id: XM-2, name: 二号, department: fgw, stage: building, assets: [{net}.1]}}\n\
             exceptions:\n  - {{rule: \"access.*\", project: XM-2, reason: 改造中, approver: 张伟, expires_on: 2099-12-31}}\n"
        ),
    );
    let store = Store::open(&cfg.store.path).await.unwrap();
    let rules = RuleSet::load(&cfg).unwrap();
    let (_, report) = scan_and_record(
        &cfg,
        &rules,
        &store,
        &ScanRequest::all(),
        Limits::new(0, 64),
        ProgressBar::hidden(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    (dir, cfg, store, report, host)
}

/// A waiver scoped to the second project that lists a host covers that host's findings (the
/// finding names the first project only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiver_for_a_hosts_second_project_matches() {
    let (_dir, _cfg, store, report, _host) = scan_host_in_two_projects("127.110.50").await;
    let f = report
        .findings
        .iter()
        .find(|f| f.rule == "access.unapproved_host")
        .expect("the host is unapproved");
    assert_eq!(f.project.as_deref(), Some("XM-1"));
    assert_eq!(f.state, "waived", "the XM-2 waiver covers the host");
    store.close().await;
}

/// The metrics see the same locus as the report: a waiver scoped to a host's second project
/// counts its finding as waived in `netpatrol_findings_waived`, not as open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_waiver_for_a_hosts_second_project() {
    let (_dir, cfg, store, _report, _host) = scan_host_in_two_projects("127.115.50").await;
    let text = metrics::render(&store, &cfg, &DaemonMetrics::default(), chrono::Utc::now())
        .await
        .unwrap();
    let series = |family: &str| -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .filter(|l| l.contains("rule=\"access.unapproved_host\""))
            .collect()
    };
    let waived = series("netpatrol_findings_waived");
    assert!(
        waived.len() == 1 && waived[0].ends_with(" 1"),
        "waived by the XM-2 waiver: {waived:?}"
    );
    assert!(
        series("netpatrol_findings")
            .iter()
            .all(|l| l.ends_with(" 0")),
        "not counted as open: {:?}",
        series("netpatrol_findings")
    );
    store.close().await;
}
