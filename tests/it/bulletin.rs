//! The bulletin: golden renderings of a fixed store (zh and en), and mail through a real SMTP
//! server on loopback (STARTTLS with a test CA, AUTH), with the outbox surviving SMTP being down.
//!
//! `UPDATE_GOLDEN=1 cargo test bulletin` rewrites `tests/golden/*`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use netpatrol::bulletin::{self, Period, Templates};
use netpatrol::config::{Config, NetworkKind};
use netpatrol::facts::Subject;
use netpatrol::finding::{Event, Finding, State};
use netpatrol::observation::{
    HostObservation, Liveness, RunState, ScanObservations, ScanRun, ServiceObservation,
};
use netpatrol::probe::ProbeKind;
use netpatrol::probe::tls::{CertFacts, TlsFacts, TlsVersion};
use netpatrol::reconcile::Placement;
use netpatrol::rules::{RuleSet, Severity, Text};
use netpatrol::store::{Answer, AnswerKind, Store};

use crate::support::smtp::{Part, SmtpSink};
use crate::support::store::for_each_backend;
use crate::support::tls::Pki;

const HOSTILE_TITLE: &str = "可疑横幅<script>alert(1)</script>\r\nX-Injected: yes";
const HOSTILE_EVIDENCE: &str = "banner <img src=x onerror=alert(1)> | *pipe* `tick`\r\n=cmd";

/// The fixture's config. `rsj` is the name of one department (a hostile one for the mail
/// test); `extra` is appended (the smtp and trust sections).
fn config_yaml(rsj: &str, extra: &str) -> String {
    format!(
        r#"organisation: {{name: 海陵区政府办(大数据管理局), timezone: Asia/Shanghai}}
scan: {{ports: [22, 23, 443, 445, 3306]}}
departments:
  - {{id: fgw, name: 区发改委, emails: [it@fgw.example.gov.cn]}}
  - {{id: rsj, name: "{rsj}", emails: [xxk@rsj.example.gov.cn], leader_emails: [juzhang@rsj.example.gov.cn]}}
  - {{id: wsj, name: 区卫健委, emails: [xxzx@wsj.example.gov.cn], leader_emails: [zhuren@wsj.example.gov.cn]}}
segments:
  - {{name: extranet-a, network: extranet, cidrs: [192.0.2.0/24]}}
  - {{name: legacy-wsj, network: departmental, cidrs: [198.51.100.0/28], department: wsj, consolidate_by: 2026-06-30}}
approvals:
  - {{id: HLSP-2025-001, department: fgw, segment: extranet-a, addresses: [192.0.2.10], ports: [443], approved_on: 2025-01-10}}
  - {{id: HLSP-2025-002, department: rsj, segment: extranet-a, addresses: [192.0.2.11], ports: [22], approved_on: 2025-02-01}}
projects:
  - id: XM-2024-003
    name: 项目申报管理系统
    department: fgw
    stage: in_use
    accepted_on: 2024-12-01
    assets: [192.0.2.10]
    mlps: {{level: 3, filing_no: "32120099999-24001", assessed_on: 2025-12-20, conclusion: basic_pass}}
    crypto: {{assessed_on: 2025-10-20, conclusion: pass}}
  - id: XM-2022-004
    name: 预约挂号系统
    department: wsj
    stage: in_use
    accepted_on: 2022-12-01
    assets: [198.51.100.2]
    mlps: {{level: 3, filing_no: "32120099999-22004", assessed_on: 2024-06-01, conclusion: pass}}
  - id: XM-2025-011
    name: 智慧教育平台
    department: fgw
    stage: trial
    assets: [192.0.2.13]
    mlps: {{level: 2}}
exceptions:
  - {{rule: http.missing_hsts, ip: 192.0.2.10, reason: 改造中, approver: 张伟, expires_on: 2027-06-30}}
bulletin: {{recipients: [leader@example.gov.cn], out_dir: out}}
{extra}"#
    )
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn text(zh: &str, en: &str) -> Text {
    Text {
        zh: zh.into(),
        en: en.into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn finding(
    rules: &RuleSet,
    rule: &str,
    subject: Subject,
    ip: Option<&str>,
    port: Option<u16>,
    segment: Option<&str>,
    department: Option<&str>,
    project: Option<&str>,
    evidence: Text,
    first_seen: &str,
    due: &str,
) -> Finding {
    let known = rules.get(rule);
    Finding {
        fingerprint: format!(
            "{rule}|{}|{}|{}|",
            ip.unwrap_or(""),
            port.map(|p| p.to_string()).unwrap_or_default(),
            project.unwrap_or("")
        ),
        rule: rule.into(),
        severity: known.map_or(Severity::High, |r| r.severity),
        subject,
        ip: ip.map(Into::into),
        port,
        segment: segment.map(Into::into),
        department: department.map(Into::into),
        project: project.map(Into::into),
        approval: None,
        title: known.map_or_else(|| text(HOSTILE_TITLE, HOSTILE_TITLE), |r| r.title.clone()),
        evidence,
        basis: known.map_or_else(Vec::new, |r| r.basis.clone()),
        first_seen: at(first_seen),
        last_seen: at(first_seen),
        due: day(due),
        state: State::Open,
        absent_scans: 0,
        resolved_at: None,
        reopened_at: None,
    }
}

fn cert(subject: &str, not_after: &str) -> CertFacts {
    CertFacts {
        subject: subject.into(),
        issuer: "CN=Hailing Test CA".into(),
        sans: vec![],
        not_before: "2025-12-10T00:00:00Z".into(),
        not_after: not_after.into(),
        days_left: 0,
        self_signed: false,
        trusted: true,
        hostname_match: Some(true),
        key_usage: None,
        key: "RSA-2048".into(),
        key_bits: 2048,
        signature: "sha256WithRSAEncryption".into(),
        serial: "01".into(),
        sha256: "00".into(),
        chain_len: 2,
    }
}

fn service(
    port: u16,
    name: &str,
    banner: Option<&str>,
    tls: Option<TlsFacts>,
) -> ServiceObservation {
    ServiceObservation {
        port,
        protocol: "tcp",
        service: name.into(),
        product: None,
        version: None,
        banner: banner.map(Into::into),
        connect_time: Duration::from_millis(1),
        tls: Some(tls),
        http: None,
        unauthenticated: None,
        exposure_evidence: None,
        failures: Vec::new(),
    }
}

fn host(
    ip: &str,
    segment: &str,
    network: NetworkKind,
    services: Vec<ServiceObservation>,
) -> HostObservation {
    HostObservation {
        ip: ip.parse().unwrap(),
        segment: segment.into(),
        network,
        icmp_rtt: None,
        alive_by: vec![Liveness::OpenPort],
        ptr: None,
        services,
        placement: Placement::bare(segment, network),
    }
}

fn scan(id: &str, started: &str, hosts: Vec<HostObservation>) -> ScanObservations {
    let started_at = at(started);
    ScanObservations {
        run: ScanRun {
            id: id.into(),
            started_at,
            finished_at: Some(started_at + chrono::Duration::minutes(5)),
            segments: vec!["extranet-a".into(), "legacy-wsj".into()],
            addresses: 270,
            probes: 1350,
            probe_kinds: ProbeKind::ALL.to_vec(),
            state: RunState::Complete,
            coverage: Default::default(),
        },
        hosts,
        errors: BTreeMap::new(),
    }
}

/// Two scans (October and November 2026) and their findings, with fixed times.
async fn fill(store: &Store, rules: &RuleSet) {
    let tls = TlsFacts {
        versions: vec![TlsVersion::Tls10, TlsVersion::Tls12],
        cert: Some(cert("CN=xmsb.example.gov.cn", "2026-12-10T00:00:00Z")),
        ..TlsFacts::default()
    };
    let sm = TlsFacts {
        versions: vec![TlsVersion::Tls12, TlsVersion::Tls13],
        tlcp: true,
        sm_suites: vec!["ECC_SM4_CBC_SM3".into()],
        cert: Some(cert(
            "CN=<b>mmfw</b>.example.gov.cn",
            "2027-10-01T00:00:00Z",
        )),
        ..TlsFacts::default()
    };
    let hosts = || {
        vec![
            host(
                "192.0.2.10",
                "extranet-a",
                NetworkKind::Extranet,
                vec![service(443, "https", None, Some(tls.clone()))],
            ),
            host(
                "192.0.2.11",
                "extranet-a",
                NetworkKind::Extranet,
                vec![
                    service(22, "ssh", Some("SSH-2.0-OpenSSH_8.0"), None),
                    service(
                        3306,
                        "mysql",
                        Some("<script>alert('banner')</script>"),
                        None,
                    ),
                ],
            ),
            host(
                "192.0.2.20",
                "extranet-a",
                NetworkKind::Extranet,
                vec![service(23, "telnet", None, None)],
            ),
            host(
                "192.0.2.30",
                "extranet-a",
                NetworkKind::Extranet,
                vec![service(443, "https", None, Some(sm.clone()))],
            ),
            host(
                "198.51.100.2",
                "legacy-wsj",
                NetworkKind::Departmental,
                vec![service(445, "smb", None, None)],
            ),
        ]
    };
    let department = |ip: &str| -> Option<String> {
        match ip {
            "192.0.2.10" => Some("fgw".into()),
            "192.0.2.11" => Some("rsj".into()),
            "198.51.100.2" => Some("wsj".into()),
            _ => None,
        }
    };
    let f1 = finding(
        rules,
        "access.unapproved_host",
        Subject::Host,
        Some("192.0.2.20"),
        None,
        Some("extranet-a"),
        None,
        None,
        text(
            "192.0.2.20(网段 extranet-a)未被任何入网审批覆盖",
            "192.0.2.20 (segment extranet-a) is not covered by any network access approval",
        ),
        "2026-10-10T02:05:00Z",
        "2026-10-25",
    );
    let f2 = finding(
        rules,
        "exposure.telnet",
        Subject::Service,
        Some("192.0.2.20"),
        Some(23),
        Some("extranet-a"),
        None,
        None,
        text(
            "192.0.2.20:23 开放 Telnet 服务",
            "192.0.2.20:23 serves Telnet",
        ),
        "2026-10-10T02:05:00Z",
        "2026-10-25",
    );
    let mut f3 = finding(
        rules,
        "tls.cert_expiring",
        Subject::Service,
        Some("192.0.2.10"),
        Some(443),
        Some("extranet-a"),
        Some("fgw"),
        None,
        text(
            "192.0.2.10:443 的证书将于 40 天内过期",
            "the certificate of 192.0.2.10:443 expires within 40 days",
        ),
        "2026-10-10T02:05:00Z",
        "2026-11-09",
    );
    let october = scan("run-2026-10", "2026-10-10T02:00:00Z", hosts());
    let opened = |f: &Finding| (f.fingerprint.clone(), Event::Opened);
    store
        .record(
            &october,
            &department,
            &[f1.clone(), f2.clone(), f3.clone()],
            &[opened(&f1), opened(&f2), opened(&f3)],
            &serde_json::json!({}),
        )
        .await
        .unwrap();

    let f4 = finding(
        rules,
        "access.unapproved_service",
        Subject::Service,
        Some("192.0.2.11"),
        Some(3306),
        Some("extranet-a"),
        Some("rsj"),
        None,
        text(
            "192.0.2.11:3306(mysql)不在入网审批 HLSP-2025-002 批准开放的端口范围内",
            "192.0.2.11:3306 (mysql) is not among the ports approved by HLSP-2025-002",
        ),
        "2026-11-12T02:05:00Z",
        "2026-12-12",
    );
    let f5 = finding(
        rules,
        "custom.banner",
        Subject::Service,
        Some("192.0.2.11"),
        Some(3306),
        Some("extranet-a"),
        Some("rsj"),
        None,
        text(HOSTILE_EVIDENCE, HOSTILE_EVIDENCE),
        "2026-11-12T02:05:00Z",
        "2026-11-27",
    );
    let f6 = finding(
        rules,
        "project.mlps_overdue",
        Subject::Project,
        None,
        None,
        None,
        Some("wsj"),
        Some("XM-2022-004"),
        text(
            "项目“预约挂号系统”(XM-2022-004)的等保测评已于 2025-06-01 到期",
            "the MLPS assessment of XM-2022-004 was due on 2025-06-01",
        ),
        "2026-11-12T02:05:00Z",
        "2026-12-12",
    );
    let mut f7 = finding(
        rules,
        "network.legacy_segment_active",
        Subject::Segment,
        None,
        None,
        Some("legacy-wsj"),
        Some("wsj"),
        None,
        text(
            "部门专网 legacy-wsj 已过归并期限 2026-06-30,仍有 1 台主机在线",
            "departmental segment legacy-wsj is past its merge date 2026-06-30 with 1 live host",
        ),
        "2026-11-12T02:05:00Z",
        "2026-12-12",
    );
    f7.fingerprint = "network.legacy_segment_active||||legacy-wsj".into();
    let f8 = finding(
        rules,
        "http.missing_hsts",
        Subject::Service,
        Some("192.0.2.10"),
        Some(443),
        Some("extranet-a"),
        Some("fgw"),
        None,
        text(
            "192.0.2.10:443 未设置 HSTS",
            "192.0.2.10:443 sends no HSTS header",
        ),
        "2026-11-12T02:05:00Z",
        "2026-12-27",
    );
    let resolved_at = at("2026-11-12T02:05:00Z");
    f3.state = State::Resolved;
    f3.resolved_at = Some(resolved_at);
    let mut seen_again = vec![f1, f2];
    for f in &mut seen_again {
        f.last_seen = resolved_at;
    }
    let new = [f4, f5, f6, f7, f8];
    let mut changed: Vec<Finding> = seen_again.into_iter().chain([f3.clone()]).collect();
    changed.extend(new.iter().cloned());
    let mut events: Vec<(String, Event)> = new.iter().map(opened).collect();
    events.push((f3.fingerprint.clone(), Event::Resolved));
    let november = scan("run-2026-11", "2026-11-12T02:00:00Z", hosts());
    store
        .record(
            &november,
            &department,
            &changed,
            &events,
            &serde_json::json!({}),
        )
        .await
        .unwrap();

    // The loop: fgw answered 已整改 on its certificate (re-test passed), rsj on its
    // unapproved service (re-test failed: still present), wsj disputed its MLPS finding; rsj's
    // hostile banner and wsj's legacy segment are unanswered.
    let answer = |fp: &str, dept: &str, kind: AnswerKind, when: &str, state: &str| Answer {
        at: at(when),
        department: dept.into(),
        period: "2026-11".into(),
        fingerprint: fp.into(),
        kind,
        note: (kind != AnswerKind::Done).then(|| "已于2026年10月完成测评，报告待归档".to_string()),
        proposed_expiry: None,
        peer: "127.0.0.1:50000".into(),
        state: state.into(),
    };
    let answers = [
        answer(
            &f3.fingerprint,
            "fgw",
            AnswerKind::Done,
            "2026-11-11T03:00:00Z",
            "retest_passed",
        ),
        answer(
            &new[0].fingerprint,
            "rsj",
            AnswerKind::Done,
            "2026-11-20T03:00:00Z",
            "retest_failed",
        ),
        answer(
            &new[2].fingerprint,
            "wsj",
            AnswerKind::Dispute,
            "2026-11-25T03:00:00Z",
            "received",
        ),
    ];
    for a in &answers {
        store.record_answer(a).await.unwrap();
    }
}

fn load(dir: &Path, yaml: &str) -> (Config, RuleSet) {
    let config = crate::support::config(dir, yaml);
    let rules = RuleSet::load(&config).expect("built-in rules load");
    (config, rules)
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compare with `tests/golden/NAME`, or rewrite it when `UPDATE_GOLDEN` is set.
fn golden(name: &str, actual: &[u8]) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        String::from_utf8_lossy(actual),
        String::from_utf8_lossy(&expected),
        "{name} differs from the golden file (UPDATE_GOLDEN=1 rewrites it)"
    );
}

#[tokio::test]
async fn golden_bulletins_in_chinese_and_english() {
    for_each_backend(|db| async move {
        let dir = tempfile::tempdir().unwrap();
        let (mut config, rules) = load(dir.path(), &config_yaml("区人社局", ""));
        config.store = db.settings.clone();
        let store = db.open().await;
        fill(&store, &rules).await;
        let templates = Templates::load(&config).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 1, 0, 0).unwrap();
        let period = Period::month(2026, 11).unwrap();
        for lang in ["zh", "en"] {
            let b = bulletin::build(&config, &rules, &store, &templates, &period, lang, now)
                .await
                .unwrap();
            assert_eq!(b.number, 1, "zh and en share the period's number");
            golden(&format!("bulletin-{lang}.html"), b.rendered.html.as_bytes());
            golden(&format!("bulletin-{lang}.txt"), b.rendered.text.as_bytes());
            golden(
                &format!("bulletin-{lang}.md"),
                b.rendered.markdown.as_bytes(),
            );
            golden(&format!("bulletin-{lang}.csv"), &b.rendered.csv);

            // Observed strings are escaped for each format.
            let html = &b.rendered.html;
            assert!(
                !html.contains("<script>") && !html.contains("<img") && !html.contains("<b>mmfw")
            );
            assert!(html.contains("&lt;script&gt;"));
            assert!(!html.contains('\r'));
            assert!(!b.rendered.markdown.contains("<img"));
            assert!(b.rendered.csv.starts_with("\u{feff}".as_bytes()));
            let csv = String::from_utf8(b.rendered.csv.clone()).unwrap();
            assert_eq!(
                csv.matches("\r\n").count(),
                csv.matches('\n').count(),
                "CRLF line ends"
            );
            assert_eq!(
                csv.matches("\r\n").count(),
                1 + 8,
                "header and 8 findings, one line each"
            );
            assert!(
                csv.contains("'=cmd") || !csv.contains(",=cmd"),
                "no formula cell"
            );
            let files = b.write(&dir.path().join("out")).unwrap();
            assert_eq!(files.len(), 4);
        }
        // The next period gets the next number; this one keeps its own.
        let december = Period::month(2026, 12).unwrap();
        let b = bulletin::build(&config, &rules, &store, &templates, &december, "zh", now)
            .await
            .unwrap();
        assert_eq!(b.number, 2);
        let b = bulletin::build(&config, &rules, &store, &templates, &period, "zh", now)
            .await
            .unwrap();
        assert_eq!(
            (b.number, b.model.number_label.as_str()),
            (1, "2026年第1期")
        );
        store.close().await;
    })
    .await;
}

/// Escalation: a notice carrying items overdue by `bulletin.escalate_after_days` copies the
/// department's leadership (Cc, and the envelope); a notice without such items does not; the
/// bulletin lists the escalated items in its 逾期未整改 section. Only queued, never sent.
#[tokio::test]
async fn overdue_items_copy_the_leadership_and_are_listed_as_escalated() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "smtp: {host: 127.120.0.1, port: 2525, security: none, from: \"网络安全巡检 <netpatrol@example.gov.cn>\"}\n";
    let (mut config, rules) = load(dir.path(), &config_yaml("区人社局", extra));
    // rsj's hostile banner was due 2026-11-27: 3 days overdue on 2026-11-30. wsj's items are
    // due in December.
    config.bulletin.escalate_after_days = 3;
    let store = Store::open(&config.store.path).await.unwrap();
    fill(&store, &rules).await;
    let templates = Templates::load(&config).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 12, 1, 1, 0, 0).unwrap();
    let period = Period::month(2026, 11).unwrap();
    let b = bulletin::build(&config, &rules, &store, &templates, &period, "zh", now)
        .await
        .unwrap();
    let escalated: Vec<(&str, &str)> = b
        .model
        .escalated
        .iter()
        .flat_map(|d| {
            d.items
                .iter()
                .map(move |i| (d.id.as_str(), i.rule.as_str()))
        })
        .collect();
    assert_eq!(
        escalated,
        [
            ("rsj", "custom.banner"),
            ("", "access.unapproved_host"),
            ("", "exposure.telnet")
        ]
    );
    assert!(
        b.rendered.html.contains("逾期3天以上"),
        "{}",
        b.rendered.html
    );
    assert!(b.rendered.text.contains("逾期未整改问题（提请领导督办）"));
    bulletin::enqueue(&config, &store, &b, &templates, false, now, None)
        .await
        .unwrap();
    let outbox = store.outbox().await.unwrap();
    let notice = |dept: &str| {
        outbox
            .iter()
            .find(|m| m.kind == "notice" && m.key.ends_with(&format!("|{dept}")))
            .unwrap_or_else(|| panic!("no notice for {dept}"))
    };
    let rsj = notice("rsj");
    assert_eq!(
        rsj.recipients,
        ["xxk@rsj.example.gov.cn", "juzhang@rsj.example.gov.cn"]
    );
    let head = rsj.message.split("\r\n\r\n").next().unwrap();
    assert!(
        head.lines()
            .any(|l| l.starts_with("Cc:") && l.contains("juzhang@rsj.example.gov.cn")),
        "{head}"
    );
    let body = crate::support::smtp::Part::parse(&rsj.message);
    let text = String::from_utf8_lossy(&body.children()[0].children()[0].decoded()).into_owned();
    assert!(text.contains("本通知同时抄送你单位领导"), "{text}");
    let wsj = notice("wsj");
    assert_eq!(wsj.recipients, ["xxzx@wsj.example.gov.cn"]);
    assert!(!wsj.message.contains("zhuren@wsj.example.gov.cn"));

    // 0 turns escalation off: no copy, and the section says so.
    config.bulletin.escalate_after_days = 0;
    let b = bulletin::build(&config, &rules, &store, &templates, &period, "en", now)
        .await
        .unwrap();
    assert!(b.model.escalated.is_empty());
    assert!(b.rendered.markdown.contains("Escalation is off"));
    store.close().await;
}

/// Run the netpatrol binary; returns (exit code, stdout, stderr).
async fn netpatrol(args: &[&str], config: Option<&Path>) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_netpatrol"));
    cmd.args(args)
        .env("NETPATROL_TEST_SMTP_PASSWORD", "s3cret")
        .env_remove("NETPATROL_CONFIG");
    if let Some(c) = config {
        cmd.env("NETPATROL_CONFIG", c);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn mail_survives_smtp_down_and_is_sent_once_over_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("netpatrol test mail CA");
    let ca = pki.write_ca(dir.path(), "ca.pem");
    // A loopback port with nothing listening (yet).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let extra = format!(
        "trust: {{ca_files: [{}]}}\nsmtp: {{host: 127.0.0.1, port: {port}, security: starttls, username: netpatrol, password_env: NETPATROL_TEST_SMTP_PASSWORD, from: \"网络安全巡检 <netpatrol@example.gov.cn>\"}}\n",
        ca.display()
    );
    // A department name (from a register) trying to add a mail header.
    let yaml = config_yaml("区人社局\\r\\nBcc: spy@example.gov.cn", &extra);
    let config_path = dir.path().join("netpatrol.yaml");
    std::fs::write(&config_path, &yaml).unwrap();
    {
        let (config, rules) = load(dir.path(), &yaml);
        let store = Store::open(&config.store.path).await.unwrap();
        fill(&store, &rules).await;
        store.close().await;
    }
    let cfg = config_path.to_str().unwrap();

    // SMTP down: written, queued, exit 1.
    let (code, stdout, stderr) = netpatrol(
        &["bulletin", "-c", cfg, "--period", "2026-11", "--send"],
        None,
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.contains("网络安全通报-2026-11.html"), "{stdout}");
    assert!(dir.path().join("out/网络安全通报-2026-11.csv").is_file());
    let (code, stdout, _) = netpatrol(&["outbox", "-c", cfg], None).await;
    assert_eq!(code, 1);
    assert!(stdout.contains("3 queued, 0 failed, 0 sent"), "{stdout}");

    // The server comes up: the queued mail goes out.
    let sink = SmtpSink::start(SocketAddr::from(([127, 0, 0, 1], port)), &pki).await;
    let (code, stdout, stderr) = netpatrol(&["outbox", "--flush"], Some(&config_path)).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("0 queued, 0 failed, 3 sent"), "{stdout}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 3);
    let mut rcpts: Vec<String> = messages.iter().flat_map(|m| m.rcpt.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "leader@example.gov.cn",
            "xxk@rsj.example.gov.cn",
            "xxzx@wsj.example.gov.cn"
        ],
        "the whole bulletin to its recipient, each department its own notice; none for findings without a department"
    );
    for m in &messages {
        assert!(m.tls, "STARTTLS before MAIL");
        assert_eq!(m.auth, Some(("netpatrol".into(), "s3cret".into())));
        assert_eq!(m.from, "netpatrol@example.gov.cn");
        let top = Part::parse(&m.data);
        assert!(top.header("bcc").is_none(), "no injected header");
        assert!(top.headers.iter().all(|(k, _)| k != "x-injected"));
        assert!(
            top.header("content-type")
                .unwrap()
                .starts_with("multipart/mixed")
        );
        let children = top.children();
        assert_eq!(children.len(), 2);
        let alternative = &children[0];
        assert!(
            alternative
                .header("content-type")
                .unwrap()
                .starts_with("multipart/alternative")
        );
        let parts = alternative.children();
        let types: Vec<&str> = parts
            .iter()
            .map(|p| p.header("content-type").unwrap())
            .collect();
        assert!(
            types[0].starts_with("text/plain") && types[1].starts_with("text/html"),
            "{types:?}"
        );
        let html = String::from_utf8(parts[1].decoded()).unwrap();
        assert!(!html.contains("<script>") && !html.contains("<img"));
        let csv_part = &children[1];
        assert!(
            csv_part
                .header("content-type")
                .unwrap()
                .starts_with("text/csv")
        );
        assert!(
            csv_part
                .header("content-disposition")
                .unwrap()
                .starts_with("attachment")
        );
        let csv = csv_part.decoded();
        assert!(csv.starts_with(&[0xEF, 0xBB, 0xBF]), "CSV with BOM");
        let csv = String::from_utf8(csv).unwrap();
        if m.rcpt == ["leader@example.gov.cn"] {
            assert!(html.contains("&lt;script&gt;"));
            assert_eq!(
                csv.lines().count(),
                1 + 8,
                "header and every finding open in the period"
            );
        } else if m.rcpt == ["xxk@rsj.example.gov.cn"] {
            // Only its own items: the unapproved service and the hostile banner.
            assert_eq!(csv.lines().count(), 1 + 2, "{csv}");
            assert!(!csv.contains("192.0.2.20"));
        }
    }

    // The same period again: nothing queued twice, nothing sent twice.
    let (code, _, stderr) = netpatrol(
        &["bulletin", "-c", cfg, "--period", "2026-11", "--send"],
        None,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("0 message(s) queued"), "{stderr}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.messages().len(), 3);

    // --force queues it again.
    let (code, _, stderr) = netpatrol(
        &[
            "bulletin", "-c", cfg, "--period", "2026-11", "--send", "--force",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sink.messages().len(), 6);

    // Without a config: a usage error.
    let (code, _, stderr) = netpatrol(&["outbox"], None).await;
    assert_eq!(code, 64, "{stderr}");
}

/// The Message-ID of a received message.
fn message_id(m: &crate::support::smtp::Received) -> String {
    Part::parse(&m.data)
        .header("message-id")
        .unwrap_or_else(|| panic!("no Message-ID in:\n{}", m.data))
        .to_string()
}

#[tokio::test]
async fn concurrent_flushes_send_each_message_once_and_a_killed_flush_loses_nothing() {
    for_each_backend(|db| async move {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("netpatrol test mail CA");
    let ip = [127, 112, 1, 1];
    let port = {
        let l = std::net::TcpListener::bind(SocketAddr::from((ip, 0))).unwrap();
        l.local_addr().unwrap().port()
    };
    let extra = format!(
        "smtp: {{host: 127.112.1.1, port: {port}, security: none, from: \"网络安全巡检 <netpatrol@example.gov.cn>\"}}\n"
    );
    let yaml = config_yaml("区人社局", &format!("{extra}{}", db.yaml()));
    let config_path = dir.path().join("netpatrol.yaml");
    std::fs::write(&config_path, &yaml).unwrap();
    {
        let (_, rules) = load(dir.path(), &yaml);
        let store = db.open().await;
        fill(&store, &rules).await;
        store.close().await;
    }
    let cfg = config_path.to_str().unwrap();
    // Queued while SMTP is down.
    let (code, _, stderr) = netpatrol(
        &["bulletin", "-c", cfg, "--period", "2026-11", "--send"],
        None,
    )
    .await;
    assert_eq!(code, 1, "{stderr}");

    // Two flushes at once (an operator and the daemon): each message delivered once.
    let sink = SmtpSink::start(SocketAddr::from((ip, port)), &pki).await;
    let args = ["outbox", "-c", cfg, "--flush"];
    let (a, b) = tokio::join!(netpatrol(&args, None), netpatrol(&args, None));
    assert!(!a.2.contains("panicked") && !b.2.contains("panicked"));
    let messages = sink.messages();
    let mut rcpts: Vec<String> = messages.iter().flat_map(|m| m.rcpt.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "leader@example.gov.cn",
            "xxk@rsj.example.gov.cn",
            "xxzx@wsj.example.gov.cn"
        ],
        "flushes: {a:?} {b:?}"
    );
    let ids: BTreeSet<String> = messages.iter().map(message_id).collect();
    assert_eq!(ids.len(), 3, "one Message-ID each: {ids:?}");
    assert!(
        ids.iter().all(|id| id.ends_with("@example.gov.cn>")),
        "{ids:?}"
    );
    let (code, stdout, _) = netpatrol(&["outbox", "-c", cfg], None).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("0 queued, 0 failed, 3 sent"), "{stdout}");

    // Queued again (forced) and a flush killed in the middle of DATA: nothing is lost, and the
    // message is sent again with the same Message-ID.
    sink.stall.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_netpatrol"))
        .args([
            "bulletin", "-c", cfg, "--period", "2026-11", "--send", "--force",
        ])
        .env_remove("NETPATROL_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sink.stalled.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the flush never reached DATA"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    sink.stall.store(false, std::sync::atomic::Ordering::SeqCst);
    let before = sink.messages().len();
    let (code, stdout, stderr) = netpatrol(&["outbox", "-c", cfg, "--flush"], None).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("0 queued, 0 failed, 3 sent"), "{stdout}");
    let resent: Vec<_> = sink.messages()[before..].to_vec();
    assert_eq!(resent.len(), 3, "every message of the killed flush is sent");
    let stalled = sink.stalled.lock().unwrap()[0].clone();
    let again: Vec<_> = resent.iter().filter(|m| m.rcpt == stalled.rcpt).collect();
    assert_eq!(again.len(), 1, "sent once more, no more");
    assert_eq!(message_id(again[0]), message_id(&stalled));
    let new_ids: BTreeSet<String> = resent.iter().map(message_id).collect();
    assert!(
        new_ids.is_disjoint(&ids),
        "a forced re-send is a new message"
    );
    })
    .await;
}

#[tokio::test]
async fn written_files_never_follow_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml("区人社局", "");
    let config_path = dir.path().join("netpatrol.yaml");
    std::fs::write(&config_path, &yaml).unwrap();
    {
        let (config, rules) = load(dir.path(), &yaml);
        let store = Store::open(&config.store.path).await.unwrap();
        fill(&store, &rules).await;
        store.close().await;
    }
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    // At the temporary name the bulletin used to write through, and at a final name.
    let planted = [
        out.join(".网络安全通报-2026-11.html.tmp"),
        out.join("网络安全通报-2026-11.txt"),
    ];
    for link in &planted {
        std::os::unix::fs::symlink(&victim, link).unwrap();
    }
    let (code, _, stderr) = netpatrol(
        &[
            "bulletin",
            "-c",
            config_path.to_str().unwrap(),
            "--period",
            "2026-11",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let text = out.join("网络安全通报-2026-11.txt");
    let meta = std::fs::symlink_metadata(&text).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the link was replaced by the file"
    );
    assert!(std::fs::read_to_string(&text).unwrap().contains("2026"));
    // No temporary file left behind (the planted link aside).
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") && !n.starts_with(".网络安全通报-2026-11.html.tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The same for any file netpatrol writes (scan --output, demo reports).
    let report = dir.path().join("report.json");
    std::os::unix::fs::symlink(&victim, &report).unwrap();
    netpatrol::output::write_file(&report, b"{}").unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "{}");
    assert!(
        std::fs::symlink_metadata(&report)
            .unwrap()
            .file_type()
            .is_file()
    );
}

/// `leader_emails` in the departments' CSV register: a list cell (`;`, `；`), checked like
/// `emails`.
#[test]
fn leader_emails_come_from_the_departments_csv() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("departments.csv"),
        "\u{feff}id,name,emails,leader_emails\r\nrsj,区人社局,xxk@rsj.example.gov.cn,juzhang@rsj.example.gov.cn；fujuzhang@rsj.example.gov.cn\r\nwsj,区卫健委,xxzx@wsj.example.gov.cn,\r\n",
    )
    .unwrap();
    let config = crate::support::config(
        dir.path(),
        "departments: {file: departments.csv}\nsegments:\n  - {name: lab, network: other, cidrs: [127.120.9.0/30]}\nbulletin: {escalate_after_days: 14}\n",
    );
    let rsj = config.department("rsj").unwrap();
    assert_eq!(
        rsj.leader_emails,
        ["juzhang@rsj.example.gov.cn", "fujuzhang@rsj.example.gov.cn"]
    );
    assert!(config.department("wsj").unwrap().leader_emails.is_empty());
    assert_eq!(config.bulletin.escalate_after_days, 14);
    let bad = netpatrol::config::load_str(
        "departments:\n  - {id: a, name: A, leader_emails: [not-an-address]}\nsegments:\n  - {name: lab, network: other, cidrs: [127.120.9.0/30]}\n",
        &dir.path().join("netpatrol.yaml"),
    );
    let problems = format!("{:?}", bad.expect_err("a bad leader email is refused"));
    assert!(
        problems.contains("invalid email `not-an-address`"),
        "{problems}"
    );
}
