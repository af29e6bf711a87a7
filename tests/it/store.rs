//! The store on both backends (SQLite and the real PostgreSQL): the outbox's claims and leases,
//! the audit trail, checkpoints and the runs a kill leaves incomplete, the snapshot queries
//! behind `/metrics`; and a SQLite store made by the earlier migration runner, adopted by
//! sqlx's migrator.

use netpatrol::reconcile::Placement;
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use netpatrol::config::NetworkKind;
use netpatrol::facts::Subject;
use netpatrol::finding::{Event, Finding, State};
use netpatrol::observation::{
    HostObservation, Liveness, RunState, ScanObservations, ScanRun, ServiceObservation,
};
use netpatrol::probe::{Coverage, ProbeKind, Reason};
use netpatrol::rules::{Severity, Text};
use netpatrol::store::{AuditEntry, Enqueued, FindingFilter, NewMail, OutboxState, Store};
use sqlx::Connection;

use crate::support::store::for_each_backend;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn service(port: u16, name: &str) -> ServiceObservation {
    ServiceObservation {
        port,
        protocol: "tcp",
        service: name.into(),
        product: None,
        version: None,
        banner: Some(format!("{name} banner")),
        connect_time: Duration::from_millis(1),
        tls: None,
        http: None,
        unauthenticated: None,
        exposure_evidence: None,
        failures: Vec::new(),
    }
}

fn host(ip: &str, segment: &str, services: Vec<ServiceObservation>) -> HostObservation {
    HostObservation {
        ip: ip.parse().unwrap(),
        segment: segment.into(),
        network: NetworkKind::Extranet,
        icmp_rtt: None,
        alive_by: vec![Liveness::OpenPort],
        ptr: None,
        services,
        placement: Placement::bare(segment, NetworkKind::Extranet),
    }
}

fn run(id: &str, started: &str, segments: &[&str]) -> ScanRun {
    let started_at = at(started);
    ScanRun {
        id: id.into(),
        started_at,
        finished_at: Some(started_at + chrono::Duration::minutes(5)),
        segments: segments.iter().map(|s| s.to_string()).collect(),
        addresses: 16,
        probes: 40,
        probe_kinds: vec![ProbeKind::Tcp],
        state: RunState::Complete,
        coverage: Coverage {
            planned: 40,
            answered: 30,
            failed_remote: 6,
            failed_local: 4,
        },
    }
}

fn finding(rule: &str, ip: &str, port: u16, department: &str, due: &str) -> Finding {
    let text = Text {
        zh: format!("{rule} 中文"),
        en: format!("{rule} English"),
    };
    Finding {
        fingerprint: format!("{rule}|{ip}|{port}||"),
        rule: rule.into(),
        severity: Severity::High,
        subject: Subject::Service,
        ip: Some(ip.into()),
        port: Some(port),
        segment: Some("lab-a".into()),
        department: Some(department.into()),
        project: None,
        approval: None,
        title: text.clone(),
        evidence: text,
        basis: vec!["第二十二条".into()],
        first_seen: at("2026-11-02T01:00:00Z"),
        last_seen: at("2026-11-02T01:00:00Z"),
        due: due.parse().unwrap(),
        state: State::Open,
        absent_scans: 0,
        resolved_at: None,
        reopened_at: None,
    }
}

fn mail(key: &str) -> NewMail {
    NewMail {
        key: key.into(),
        kind: "bulletin".into(),
        period: "2026-11".into(),
        sender: "netpatrol@example.gov.cn".into(),
        recipients: vec!["leader@example.gov.cn".into(), "xxk@example.gov.cn".into()],
        subject: "网络安全通报 2026年第1期".into(),
        message: "Subject: x\r\n\r\n正文\r\n".into(),
    }
}

/// Enqueue once (forced replaces); of many claimers racing for one message exactly one wins;
/// a lease is taken over only from the holder named; an expired lease can be claimed again; a
/// sent message is claimed by no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_claims_each_message_once() {
    for_each_backend(|db| async move {
        let store = db.open().await;
        let now = at("2026-12-01T01:00:00Z");
        let m = mail("2026-11|bulletin|leader@example.gov.cn");
        assert_eq!(
            store.enqueue_mail(&m, now, false).await.unwrap(),
            Enqueued::Added
        );
        assert_eq!(
            store.enqueue_mail(&m, now, false).await.unwrap(),
            Enqueued::Exists
        );
        assert_eq!(
            store.enqueue_mail(&m, now, true).await.unwrap(),
            Enqueued::Replaced
        );
        let all = store.outbox().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].recipients, m.recipients);
        assert_eq!(all[0].message, m.message);
        assert_eq!(store.outbox_due(Some(now)).await.unwrap().len(), 1);

        let until = now + chrono::Duration::minutes(10);
        let claims = (0..8).map(|i| {
            let (store, key) = (store.clone(), m.key.clone());
            tokio::spawn(async move {
                let owner = format!("sender-{i}");
                let won = store.claim_mail(&key, &owner, now, until).await.unwrap();
                (owner, won)
            })
        });
        let mut winners = Vec::new();
        for claim in claims {
            let (owner, won) = claim.await.unwrap();
            if won {
                winners.push(owner);
            }
        }
        assert_eq!(winners.len(), 1, "one claim wins: {winners:?}");
        let holder = store.mail_lease_owner(&m.key).await.unwrap();
        assert_eq!(holder.as_deref(), Some(winners[0].as_str()));
        assert!(!store.claim_mail(&m.key, "late", now, until).await.unwrap());
        assert!(
            !store
                .take_over_mail(&m.key, "not-the-holder", "late", until)
                .await
                .unwrap()
        );
        assert!(
            store
                .take_over_mail(&m.key, &winners[0], "heir", until)
                .await
                .unwrap()
        );
        // After the lease expires anyone may claim it.
        let later = until + chrono::Duration::seconds(1);
        assert!(
            store
                .claim_mail(&m.key, "next", later, later + chrono::Duration::minutes(10))
                .await
                .unwrap()
        );
        store
            .mail_failed(&m.key, "450 try later", Some(later))
            .await
            .unwrap();
        assert_eq!(store.mail_lease_owner(&m.key).await.unwrap(), None);
        store.mail_sent(&m.key, later).await.unwrap();
        assert!(
            !store
                .claim_mail(&m.key, "after", later, until)
                .await
                .unwrap()
        );
        let sent = &store.outbox().await.unwrap()[0];
        assert_eq!((sent.state, sent.attempts), (OutboxState::Sent, 2));
        assert_eq!(sent.sent_at, Some(later));
        let counts = store.outbox_counts().await.unwrap();
        assert_eq!(
            counts,
            [
                (OutboxState::Queued, 0),
                (OutboxState::Sent, 1),
                (OutboxState::Failed, 0)
            ]
        );
        assert_eq!(
            store.outbox_by_state().await.unwrap(),
            Some(vec![("sent".to_string(), 1)])
        );
        store.close().await;
    })
    .await;
}

/// Audit entries come back whole, oldest first, from the instant asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_lists_entries_since_an_instant() {
    for_each_backend(|db| async move {
        let store = db.open().await;
        let entry = |t: &str, principal: &str, status: u16, detail: Option<&str>| AuditEntry {
            at: at(t),
            principal: principal.into(),
            peer: "127.116.0.9:50000".into(),
            method: "POST".into(),
            route: "/api/v1/scans".into(),
            status,
            detail: detail.map(Into::into),
        };
        let entries = [
            entry("2026-12-01T01:00:00Z", "operator", 202, Some("scan 1")),
            entry("2026-12-01T02:00:00Z", "-", 401, None),
            entry("2026-12-01T03:00:00Z", "user:张伟", 202, Some("扫描 2")),
        ];
        for e in entries.iter().rev() {
            store.audit(e).await.unwrap();
        }
        assert_eq!(store.audit_since(None).await.unwrap(), entries);
        assert_eq!(
            store
                .audit_since(Some(at("2026-12-01T02:00:00Z")))
                .await
                .unwrap(),
            entries[1..]
        );
        store.close().await;
    })
    .await;
}

/// Checkpointed batches survive a store closed mid-scan, and the next open marks the run
/// incomplete; a later complete scan is the one the coverage and latest-run queries see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_survive_and_a_cut_off_run_is_incomplete() {
    for_each_backend(|db| async move {
        let store = db.open().await;
        let cut = run("run-cut", "2026-11-01T01:00:00Z", &["lab-a"]);
        store.begin_run(&cut).await.unwrap();
        let batch = [
            host(
                "127.116.0.1",
                "lab-a",
                vec![service(22, "ssh"), service(80, "http")],
            ),
            host("127.116.0.2", "lab-a", vec![service(23, "telnet")]),
        ];
        store
            .checkpoint(&cut, &batch, &[Some("区人社局".into()), None])
            .await
            .unwrap();
        // The process dies here: nothing records the run.
        drop(store);

        let store = db.open().await;
        let runs = store.runs().await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(
            (runs[0].id.as_str(), runs[0].state.as_str()),
            ("run-cut", "incomplete")
        );
        assert_eq!(runs[0].finished_at, None);
        let hosts = store.hosts().await.unwrap();
        let ips: Vec<&str> = hosts.iter().map(|h| h.ip.as_str()).collect();
        assert_eq!(ips, ["127.116.0.1", "127.116.0.2"]);
        let services = store.services().await.unwrap();
        let ports: Vec<u16> = services.iter().map(|s| s.port).collect();
        assert_eq!(ports, [22, 80, 23]);
        assert!(
            store
                .latest_complete_runs(&["lab-a"])
                .await
                .unwrap()
                .is_empty()
        );

        // A complete scan afterwards.
        let done = run("run-done", "2026-11-02T01:00:00Z", &["lab-a", "lab-b"]);
        let scan = ScanObservations {
            run: done.clone(),
            hosts: vec![
                host("127.116.0.1", "lab-a", vec![service(22, "ssh")]),
                host("127.116.1.1", "lab-b", vec![]),
            ],
            errors: BTreeMap::new(),
        };
        store.begin_run(&done).await.unwrap();
        store
            .record(
                &scan,
                &|_| None,
                &[],
                &[],
                &serde_json::json!({"id": "run-done"}),
            )
            .await
            .unwrap();
        let latest = store
            .latest_complete_runs(&["lab-a", "lab-b", "lab-c"])
            .await
            .unwrap();
        assert_eq!(latest.keys().collect::<Vec<_>>(), ["lab-a", "lab-b"]);
        assert_eq!(latest["lab-a"].id, "run-done");
        assert_eq!(latest["lab-a"].finished_at, done.finished_at);
        let coverage = store.latest_coverage(&["lab-a"]).await.unwrap();
        assert_eq!(coverage["lab-a"], 0.9);
        let placed = store.placement_counts("run-done").await.unwrap();
        let mut placed: Vec<(String, i64, i64)> = placed
            .into_iter()
            .map(|p| (p.segment, p.hosts, p.services))
            .collect();
        placed.sort();
        assert_eq!(
            placed,
            [("lab-a".to_string(), 1, 1), ("lab-b".to_string(), 1, 0)]
        );
        assert_eq!(store.runs_version().await.unwrap().0, 2);
        assert_eq!(
            store.report("run-done").await.unwrap(),
            Some(serde_json::json!({"id": "run-done"}))
        );
        store.close().await;
    })
    .await;
}

/// What `/metrics` reads: open findings by rule, severity and department with the overdue
/// ones, by segment, the probe error totals summed over runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_snapshot_queries_count_what_was_recorded() {
    for_each_backend(|db| async move {
        let store = db.open().await;
        let findings = [
            finding(
                "exposure.telnet",
                "127.116.0.1",
                23,
                "区人社局",
                "2026-11-10",
            ),
            finding(
                "exposure.telnet",
                "127.116.0.2",
                23,
                "区人社局",
                "2026-12-30",
            ),
            finding(
                "access.unapproved_host",
                "127.116.0.3",
                80,
                "区卫健委",
                "2026-11-10",
            ),
        ];
        for (i, id) in ["run-1", "run-2"].into_iter().enumerate() {
            let r = run(id, &format!("2026-11-0{}T01:00:00Z", i + 2), &["lab-a"]);
            let mut errors = BTreeMap::new();
            errors.insert((ProbeKind::Tcp, Reason::Timeout), 5 + i as u64);
            errors.insert((ProbeKind::Tcp, Reason::Refused), 7);
            let scan = ScanObservations {
                run: r,
                hosts: vec![host("127.116.0.1", "lab-a", vec![service(23, "telnet")])],
                errors,
            };
            let events: Vec<(String, Event)> = if i == 0 {
                findings
                    .iter()
                    .map(|f| (f.fingerprint.clone(), Event::Opened))
                    .collect()
            } else {
                Vec::new()
            };
            store
                .record(&scan, &|_| None, &findings, &events, &serde_json::json!({}))
                .await
                .unwrap();
        }
        let today = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let mut counts: Vec<(String, Option<String>, i64, i64)> = store
            .open_finding_counts(today)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.rule, c.department, c.count, c.overdue))
            .collect();
        counts.sort();
        assert_eq!(
            counts,
            [
                (
                    "access.unapproved_host".into(),
                    Some("区卫健委".into()),
                    1,
                    1
                ),
                ("exposure.telnet".into(), Some("区人社局".into()), 2, 1),
            ]
        );
        assert_eq!(
            store
                .open_findings_by_segment("exposure.telnet")
                .await
                .unwrap(),
            [(Some("lab-a".into()), Some("区人社局".into()), 2)]
        );
        // What the metrics' waiver count reads: the open findings of one rule.
        let telnet = FindingFilter {
            department: None,
            severity: None,
            rule: Some("exposure.telnet".into()),
        };
        assert_eq!(store.open_findings(&telnet).await.unwrap().len(), 2);
        let filter = FindingFilter {
            department: Some("区卫健委".into()),
            severity: None,
            rule: None,
        };
        let open = store.open_findings(&filter).await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0], findings[2]);
        let mut totals = store.probe_error_totals().await.unwrap();
        totals.sort();
        assert_eq!(
            totals,
            [
                ("tcp".into(), "refused".into(), 14),
                ("tcp".into(), "timeout".into(), 11)
            ]
        );
        let events = store
            .finding_events(&findings[0].fingerprint)
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        store.close().await;
    })
    .await;
}

/// A SQLite store the hand-written runner made (its `schema_migrations` at 1, 2, 3, 4, 5, 7,
/// 8) opens, keeps its rows, and is handed to sqlx's migrator; one made before the audit
/// table (1 to 5) gets 7 and 8 applied.
#[tokio::test]
async fn a_store_made_by_the_old_runner_is_adopted() {
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations");
    let files = [
        (1, "0001_foundation.sql"),
        (2, "0002_findings.sql"),
        (3, "0003_outbox.sql"),
        (4, "0004_daemon.sql"),
        (5, "0005_coverage.sql"),
        (7, "0007_audit.sql"),
        (8, "0008_outbox_lease.sql"),
    ];
    // Migrations newer than any the old runner knew: sqlx's migrator applies them after the
    // adoption.
    let mut later: Vec<i64> = std::fs::read_dir(&migrations)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.split('_').next()?.parse().ok()
        })
        .filter(|v| *v > 8)
        .collect();
    later.sort();
    for upto in [8, 5] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // What the old runner did: each file in a transaction, its version recorded.
            let url = format!("sqlite://{}?mode=rwc", path.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(
                "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)",
            )
            .execute(&mut conn)
            .await
            .unwrap();
            for (version, file) in files.iter().filter(|(v, _)| *v <= upto) {
                let sql = std::fs::read_to_string(migrations.join(file)).unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                sqlx::query(
                    "INSERT INTO schema_migrations VALUES ($1, '2026-11-01T00:00:00.000Z')",
                )
                .bind(version)
                .execute(&mut conn)
                .await
                .unwrap();
            }
            sqlx::raw_sql(
                "INSERT INTO scan_runs (id, started_at, state, segments, probe_kinds)
                 VALUES ('old-run', '2026-11-01T01:00:00.000Z', 'complete', '[\"lab-a\"]', 'tcp')",
            )
            .execute(&mut conn)
            .await
            .unwrap();
            conn.close().await.unwrap();
        }
        for _ in 0..2 {
            let store = Store::open(&path)
                .await
                .unwrap_or_else(|e| panic!("upto {upto}: {e}"));
            let runs = store.runs().await.unwrap();
            assert_eq!(runs.len(), 1, "upto {upto}");
            assert_eq!(runs[0].id, "old-run");
            // The audit table (7) and the outbox lease (8) are there whatever the start.
            store
                .audit(&AuditEntry {
                    at: at("2026-12-01T01:00:00Z"),
                    principal: "operator".into(),
                    peer: "127.116.0.9:1".into(),
                    method: "GET".into(),
                    route: "/".into(),
                    status: 200,
                    detail: None,
                })
                .await
                .unwrap();
            store
                .enqueue_mail(&mail("k"), at("2026-12-01T01:00:00Z"), false)
                .await
                .unwrap();
            store.close().await;
        }
        let url = format!("sqlite://{}", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let versions: Vec<(i64, bool)> =
            sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(
            versions,
            files
                .iter()
                .map(|(v, _)| *v)
                .chain(later.iter().copied())
                .map(|v| (v, true))
                .collect::<Vec<_>>(),
            "upto {upto}"
        );
        conn.close().await.unwrap();
    }
}

/// A PostgreSQL store that cannot be opened is a clear error naming the URL, never its
/// password; nothing listens on 127.116.0.1:1.
#[tokio::test]
async fn an_unreachable_postgres_store_is_named_without_its_password() {
    let e = Store::open_postgres("postgres://np:hunter2@127.116.0.1:1/np", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("cannot open store postgres://np:***@127.116.0.1:1/np"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
}
