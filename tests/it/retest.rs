//! The re-test (复测) of one finding after a department answered 已整改: real listeners on
//! 127.117.3.0/29 and 127.117.4.0/29 (one subnet per test), some stopped, some still running;
//! a real scan opens the findings, then `pass::retest` of one of them, watched by a raw
//! sniffer of the test's own (root, as in CI): it probes only that address and port, resolves
//! only that finding when its service is gone, and leaves a still-running one open
//! (整改未通过). Then the same loop through the daemon's page: a 已整改 answer queues the
//! re-test, and the page says 复测通过 or 整改未通过.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Utc;
use indicatif::ProgressBar;
use netpatrol::daemon::{self, Daemon};
use netpatrol::finding::{Finding, State};
use netpatrol::pass::{self, RetestOutcome};
use netpatrol::rectify::Link;
use netpatrol::scan::ScanRequest;
use netpatrol::scope::Limits;
use netpatrol::store::Store;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::support::sniffer::SynSniffer;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Listeners on 127.117.`net`.1-.4, all on one port.
fn listeners(net: u8) -> (u16, Vec<TcpListener>) {
    for _ in 0..20 {
        let first = TcpListener::bind((ip(&format!("127.117.{net}.1")), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let rest: Result<Vec<_>, _> = (2..=4)
            .map(|h| TcpListener::bind((ip(&format!("127.117.{net}.{h}")), port)))
            .collect();
        if let Ok(mut rest) = rest {
            rest.insert(0, first);
            return (port, rest);
        }
    }
    panic!("no port free on all four addresses");
}

/// The fixture's config over 127.117.`net`.0/29.
fn yaml(store: &std::path::Path, port: u16, net: u8) -> String {
    format!(
        r#"organisation: {{name: 海陵区政府办(大数据管理局), timezone: Asia/Shanghai}}
store: {{path: {}}}
scan: {{icmp: false, ports: [{port}], timeout_ms: 500, banner_timeout_ms: 150, dns: {{enabled: false}}}}
departments:
  - {{id: fgw, name: 区发改委, emails: [it@fgw.example.gov.cn]}}
segments:
  - {{name: dept-fgw, network: departmental, cidrs: [127.117.{net}.0/29], department: fgw}}
approvals:
  - {{id: HLSP-2026-031, department: fgw, segment: dept-fgw, addresses: [127.117.{net}.0/29], ports: [22], approved_on: 2026-01-10}}
"#,
        store.display()
    )
}

fn service_finding<'a>(open: &'a [Finding], addr: &str, port: u16) -> &'a Finding {
    open.iter()
        .find(|f| f.ip.as_deref() == Some(addr) && f.port == Some(port))
        .unwrap_or_else(|| panic!("no finding on {addr}:{port} in {open:#?}"))
}

async fn state_of(store: &Store, fingerprint: &str) -> State {
    store
        .findings()
        .await
        .unwrap()
        .into_iter()
        .find(|f| f.fingerprint == fingerprint)
        .unwrap()
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retest_probes_one_endpoint_and_resolves_only_its_finding_when_the_service_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netpatrol.db");
    let (port, mut held) = listeners(3);
    let compiled = netpatrol::config::Loaded::compile_str(
        &yaml(&db, port, 3),
        &dir.path().join("netpatrol.yaml"),
    )
    .unwrap();
    let (config, rules) = (&compiled.config, &compiled.rules);
    let store = Store::open(&db).await.unwrap();
    let limits = Limits::new(config.scan.rate, config.scan.concurrency);
    pass::scan_and_record(
        config,
        rules,
        &store,
        &ScanRequest::all(),
        limits.clone(),
        ProgressBar::hidden(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let open = store.open_findings(&Default::default()).await.unwrap();
    let running = service_finding(&open, "127.117.3.1", port).clone();
    let stopped = service_finding(&open, "127.117.3.2", port).clone();
    let also_stopped = service_finding(&open, "127.117.3.3", port).clone();
    assert_eq!(running.rule, stopped.rule);

    // The services of .2 and .3 stop; .1 keeps running.
    drop(held.remove(2));
    drop(held.remove(1));

    let sniffer = SynSniffer::start(|d| d.octets()[..3] == [127, 117, 3]);
    let outcome = pass::retest(
        config,
        rules,
        &store,
        &stopped,
        limits.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let syns = sniffer.finish();
    assert_eq!(outcome, RetestOutcome::Passed);
    let only = SocketAddr::from((ip("127.117.3.2"), port));
    assert!(!syns.is_empty(), "the sniffer saw no probe at all");
    assert!(
        syns.iter().all(|s| *s == only),
        "a re-test of {only} probed elsewhere: {syns:?}"
    );
    assert_eq!(
        state_of(&store, &stopped.fingerprint).await,
        State::Resolved
    );
    // Gone too, but not re-tested: still open. And the running one untouched.
    assert_eq!(
        state_of(&store, &also_stopped.fingerprint).await,
        State::Open
    );
    assert_eq!(state_of(&store, &running.fingerprint).await, State::Open);

    let outcome = pass::retest(
        config,
        rules,
        &store,
        &running,
        limits.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(outcome, RetestOutcome::Failed);
    let after = store.findings().await.unwrap();
    let kept = after
        .iter()
        .find(|f| f.fingerprint == running.fingerprint)
        .unwrap();
    assert_eq!(kept.state, State::Open);
    assert_eq!(
        kept.due, running.due,
        "a failed re-test keeps the original due date"
    );
    assert_eq!(
        state_of(&store, &also_stopped.fingerprint).await,
        State::Open
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_answer_on_the_page_queues_the_retest_and_the_page_shows_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netpatrol.db");
    let (port, mut held) = listeners(4);
    let compiled = netpatrol::config::Loaded::compile_str(
        &yaml(&db, port, 4),
        &dir.path().join("netpatrol.yaml"),
    )
    .unwrap();
    let store = Store::open(&db).await.unwrap();
    let limits = Limits::new(compiled.config.scan.rate, compiled.config.scan.concurrency);
    pass::scan_and_record(
        &compiled.config,
        &compiled.rules,
        &store,
        &ScanRequest::all(),
        limits,
        ProgressBar::hidden(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let open = store.open_findings(&Default::default()).await.unwrap();
    let stopped = service_finding(&open, "127.117.4.4", port).clone();
    let running = service_finding(&open, "127.117.4.1", port).clone();
    drop(held.remove(3));

    let daemon = Daemon::new(daemon::Loaded::from(compiled), store);
    let router = daemon::api::router(daemon.clone());
    let key = daemon.stored_link_key().await.unwrap();
    let token = key
        .sign(&Link {
            department: "fgw".into(),
            period: "2026-12".into(),
            expires: Utc::now() + chrono::Duration::days(1),
        })
        .unwrap();
    let csrf = key.csrf(&token);
    for f in [&stopped, &running] {
        let body = format!(
            "csrf={csrf}&answer=done&item={}",
            f.fingerprint
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() || b == b'.' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                })
                .collect::<String>()
        );
        let response = router
            .clone()
            .oneshot(
                Request::post(format!("/r/{token}"))
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
    }
    // Within minutes (here: seconds) both re-tests have run.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let states = loop {
        let answers = daemon.store.answers("fgw").await.unwrap();
        let states: Vec<(String, String)> = answers
            .iter()
            .map(|a| (a.fingerprint.clone(), a.state.clone()))
            .collect();
        if states.iter().all(|(_, s)| s != "received") {
            break states;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "re-tests not done: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(states.contains(&(stopped.fingerprint.clone(), "retest_passed".into())));
    assert!(states.contains(&(running.fingerprint.clone(), "retest_failed".into())));
    let response = router
        .clone()
        .oneshot(
            Request::get(format!("/r/{token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let page = String::from_utf8(
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    // The resolved one left the open list for the 复测通过 section; the one still running
    // stays open and says 整改未通过.
    let (open_part, closed_part) = page
        .split_once("已复测通过的问题")
        .expect("a closed section");
    assert!(
        !open_part.contains(&format!("127.117.4.4:{port}")),
        "{page}"
    );
    assert!(
        closed_part.contains(&format!("127.117.4.4:{port}")),
        "{page}"
    );
    assert!(closed_part.contains("复测通过"));
    assert!(open_part.contains(&format!("127.117.4.1:{port}")));
    assert!(open_part.contains("整改未通过"), "{page}");
    drop(held);
}
