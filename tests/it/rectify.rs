//! The rectification loop's department page: capability links (signed, expiring, per
//! department), the page that shows only the link's department, answers stored and audited,
//! CSRF. The daemon's real router and guard over a real SQLite store, driven in process
//! (`tower::ServiceExt::oneshot`), the findings recorded as a scan records them.

use netpatrol::reconcile::Placement;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{Duration, Utc};
use netpatrol::config::NetworkKind;
use netpatrol::daemon::{self, Daemon};
use netpatrol::facts::Subject;
use netpatrol::finding::{Event, Finding, State};
use netpatrol::observation::{HostObservation, Liveness, RunState, ScanObservations, ScanRun};
use netpatrol::probe::ProbeKind;
use netpatrol::rectify::{Link, LinkError, LinkKey, page_url};
use netpatrol::rules::{Severity, Text};
use netpatrol::store::{AnswerKind, Store};
use tower::ServiceExt;

use crate::support::smtp::Part;

const OPERATOR: &str = "operator-token-of-the-rectify-tests";

const HOSTILE: &str = "<script>alert(1)</script>";

fn yaml(store: &Path) -> String {
    format!(
        r#"organisation: {{name: 海陵区政府办(大数据管理局), timezone: Asia/Shanghai}}
store: {{path: {}}}
scan: {{ports: [2323]}}
departments:
  - {{id: fgw, name: 区发改委, emails: [it@fgw.example.gov.cn]}}
  - {{id: jyj, name: 区教育局, emails: [it@jyj.example.gov.cn]}}
segments:
  - {{name: dept-fgw, network: departmental, cidrs: [127.117.1.0/29], department: fgw}}
  - {{name: dept-jyj, network: departmental, cidrs: [127.117.2.0/29], department: jyj}}
daemon: {{public_url: "https://netpatrol.example.gov.cn/"}}
smtp: {{host: 127.117.0.1, port: 2525, security: none, from: "网络安全巡检 <netpatrol@example.gov.cn>"}}
"#,
        store.display()
    )
}

fn finding(ip: &str, department: &str, evidence: &str) -> Finding {
    let now = Utc::now();
    Finding {
        fingerprint: format!("access.unapproved_host|{ip}|||"),
        rule: "access.unapproved_host".into(),
        severity: Severity::High,
        subject: Subject::Host,
        ip: Some(ip.into()),
        port: None,
        segment: Some(format!("dept-{department}")),
        department: Some(department.into()),
        project: None,
        approval: None,
        title: Text {
            zh: format!("未经审批接入的主机（{department}）"),
            en: format!("unapproved host ({department})"),
        },
        evidence: Text {
            zh: evidence.into(),
            en: evidence.into(),
        },
        basis: vec!["办法第二十一条".into()],
        first_seen: now,
        last_seen: now,
        due: (now + Duration::days(10)).date_naive(),
        state: State::Open,
        absent_scans: 0,
        resolved_at: None,
        reopened_at: None,
    }
}

fn host(ip: &str, segment: &str) -> HostObservation {
    HostObservation {
        ip: ip.parse().unwrap(),
        segment: segment.into(),
        network: NetworkKind::Departmental,
        icmp_rtt: None,
        alive_by: vec![Liveness::OpenPort],
        ptr: None,
        services: Vec::new(),
        placement: Placement::bare(segment, NetworkKind::Departmental),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    daemon: Arc<Daemon>,
    router: axum::Router,
    key: LinkKey,
    fgw: Finding,
    jyj: Finding,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("netpatrol.db");
    let config_path = dir.path().join("netpatrol.yaml");
    let compiled = netpatrol::config::Loaded::compile_str(&yaml(&db), &config_path).unwrap();
    let store = Store::open(&db).await.unwrap();
    let fgw = finding("127.117.1.2", "fgw", &format!("fgw-evidence {HOSTILE}"));
    let jyj = finding("127.117.2.2", "jyj", "jyj-evidence");
    let now = Utc::now();
    let scan = ScanObservations {
        run: ScanRun {
            id: "run-rectify".into(),
            started_at: now,
            finished_at: Some(now),
            segments: vec!["dept-fgw".into(), "dept-jyj".into()],
            addresses: 12,
            probes: 12,
            probe_kinds: ProbeKind::ALL.to_vec(),
            state: RunState::Complete,
            coverage: Default::default(),
        },
        hosts: vec![
            host("127.117.1.2", "dept-fgw"),
            host("127.117.2.2", "dept-jyj"),
        ],
        errors: BTreeMap::new(),
    };
    let department = |ip: &str| {
        Some(
            if ip.starts_with("127.117.1.") {
                "fgw"
            } else {
                "jyj"
            }
            .to_string(),
        )
    };
    store
        .record(
            &scan,
            &department,
            &[fgw.clone(), jyj.clone()],
            &[
                (fgw.fingerprint.clone(), Event::Opened),
                (jyj.fingerprint.clone(), Event::Opened),
            ],
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    let mut loaded = daemon::Loaded::from(compiled);
    loaded.access.operator = Some(OPERATOR.into());
    let daemon = Daemon::new(loaded, store);
    let router = daemon::api::router(daemon.clone());
    // No `daemon.link_key_env` in the environment: the key the daemon keeps in its store.
    let key = daemon.stored_link_key().await.unwrap();
    Fixture {
        _dir: dir,
        daemon,
        router,
        key,
        fgw,
        jyj,
    }
}

struct Reply {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

impl Fixture {
    fn link(&self, department: &str, valid_for: Duration) -> String {
        self.key
            .sign(&Link {
                department: department.into(),
                period: "2026-11".into(),
                expires: Utc::now() + valid_for,
            })
            .unwrap()
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        Reply {
            status,
            location,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    async fn post(&self, token: &str, fields: &[(&str, &str)]) -> Reply {
        let body: String = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send(
            Request::post(format!("/r/{token}"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
    }

    /// The audit rows of the rectification routes: (principal, status, detail).
    async fn audit(&self) -> Vec<(String, u16, String)> {
        self.daemon
            .store
            .audit_since(None)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.route.starts_with("/r/"))
            .map(|e| (e.principal, e.status, e.detail.unwrap_or_default()))
            .collect()
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn links_verify_and_any_change_or_expiry_is_refused() {
    let key = LinkKey::new(&[7u8; 32]);
    let now = Utc::now();
    let link = Link {
        department: "fgw".into(),
        period: "2026-11".into(),
        expires: now + Duration::days(1),
    };
    let token = key.sign(&link).unwrap();
    let back = key.verify(&token, now).unwrap();
    assert_eq!(
        (back.department.as_str(), back.period.as_str()),
        ("fgw", "2026-11")
    );
    assert_eq!(
        key.verify(&token, now + Duration::days(2)),
        Err(LinkError::Expired)
    );
    assert_eq!(
        LinkKey::new(&[8u8; 32]).verify(&token, now),
        Err(LinkError::Tampered)
    );
    // Another department's payload under this link's tag.
    let other = key
        .sign(&Link {
            department: "jyj".into(),
            ..link.clone()
        })
        .unwrap();
    let (_, tag) = token.split_once('.').unwrap();
    let (payload, _) = other.split_once('.').unwrap();
    assert_eq!(
        key.verify(&format!("{payload}.{tag}"), now),
        Err(LinkError::Tampered)
    );
    assert_eq!(key.verify("no-dot", now), Err(LinkError::Malformed));
    assert!(key.csrf_ok(&token, &key.csrf(&token)));
    assert!(!key.csrf_ok(&other, &key.csrf(&token)));
    assert!(!key.csrf_ok(&token, ""));
    assert_eq!(
        page_url("https://np.example.gov.cn/", &token),
        format!("https://np.example.gov.cn/r/{token}")
    );
}

#[tokio::test]
async fn a_valid_link_shows_only_its_department_escaped_in_chinese_or_english() {
    let f = fixture().await;
    let token = f.link("fgw", Duration::days(1));
    let page = f.get(&format!("/r/{token}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("网络安全问题整改反馈"));
    assert!(page.body.contains("区发改委"));
    assert!(page.body.contains("fgw-evidence"));
    assert!(page.body.contains("127.117.1.2"));
    assert!(!page.body.contains("jyj-evidence"));
    assert!(!page.body.contains("127.117.2.2"));
    assert!(!page.body.contains(HOSTILE), "evidence must be escaped");
    assert!(page.body.contains("&lt;script&gt;"));
    assert!(page.body.contains(&f.key.csrf(&token)));
    let en = f.get(&format!("/r/{token}?lang=en")).await;
    assert_eq!(en.status, StatusCode::OK);
    assert!(en.body.contains("Rectification feedback"));
    assert!(en.body.contains("unapproved host (fgw)"));
    // No answer yet: both departments' findings count as unanswered.
    let metrics = f.get("/metrics").await;
    for dept in ["fgw", "jyj"] {
        let line = format!(
            "netpatrol_rectification_items{{department=\"{dept}\",state=\"unanswered\"}} 1"
        );
        assert!(metrics.body.contains(&line), "{line}:\n{}", metrics.body);
    }
    let audit = f.audit().await;
    assert!(
        audit.iter().any(|(who, status, detail)| who == "link:fgw"
            && *status == 200
            && detail.contains("page of fgw")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn tampered_expired_and_unknown_department_links_are_refused_and_audited() {
    let f = fixture().await;
    let good = f.link("fgw", Duration::days(1));
    // Change the first character of the tag (always a whole 6 bits: still valid base64).
    let (payload, tag) = good.split_once('.').unwrap();
    let first = if tag.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{payload}.{first}{}", &tag[1..]);
    let expired = f.link("fgw", Duration::seconds(-1));
    let unknown = f.link("nosuch", Duration::days(1));
    let foreign = LinkKey::new(&[1u8; 32])
        .sign(&Link {
            department: "fgw".into(),
            period: "2026-11".into(),
            expires: Utc::now() + Duration::days(1),
        })
        .unwrap();
    for token in [&tampered, &expired, &unknown, &foreign] {
        let r = f.get(&format!("/r/{token}")).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{token}");
        assert!(!r.body.contains("fgw-evidence"));
    }
    // A POST with a bad link stores nothing either.
    let r = f
        .post(
            &tampered,
            &[
                ("csrf", &f.key.csrf(&tampered)),
                ("item", &f.fgw.fingerprint),
                ("answer", "done"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(f.daemon.store.answers("fgw").await.unwrap().is_empty());
    let audit = f.audit().await;
    let refused: Vec<_> = audit.iter().filter(|(_, s, _)| *s == 403).collect();
    assert_eq!(refused.len(), 5, "{audit:?}");
    assert_eq!(
        refused
            .iter()
            .filter(|(_, _, d)| d.contains("tampered link"))
            .count(),
        3,
        "{audit:?}"
    );
    assert!(refused.iter().any(|(_, _, d)| d.contains("expired link")));
    assert!(
        refused
            .iter()
            .any(|(who, _, d)| who == "link:nosuch" && d.contains("no longer configured"))
    );
    // The prefix lets only the link routes through: the API still wants its token.
    let api = f.get("/api/v1/findings").await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    assert!(!api.body.contains("fgw-evidence"));
    let sneaky = f.get(&format!("/r/{good}/../../api/v1/findings")).await;
    assert_ne!(sneaky.status, StatusCode::OK);
    assert!(!sneaky.body.contains("jyj-evidence"));
}

#[tokio::test]
async fn an_answer_is_stored_and_audited_and_csrf_and_other_departments_are_refused() {
    let f = fixture().await;
    let token = f.link("fgw", Duration::days(1));
    let csrf = f.key.csrf(&token);
    let other_csrf = f.key.csrf(&f.link("jyj", Duration::days(1)));
    let item = f.fgw.fingerprint.as_str();
    // No CSRF token, a wrong one, another link's.
    for bad in ["", "AAAA", other_csrf.as_str()] {
        let r = f
            .post(&token, &[("csrf", bad), ("item", item), ("answer", "done")])
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "csrf {bad:?}");
    }
    let r = f.post(&token, &[("item", item), ("answer", "done")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Another department's finding through this department's link.
    let r = f
        .post(
            &token,
            &[
                ("csrf", &csrf),
                ("item", &f.jyj.fingerprint),
                ("answer", "done"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A waiver without its expiry, a dispute without its reason: told, nothing stored.
    let r = f
        .post(
            &token,
            &[
                ("csrf", &csrf),
                ("item", item),
                ("answer", "waiver"),
                ("note", "改造中"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("拟定豁免期限"));
    let r = f
        .post(
            &token,
            &[("csrf", &csrf), ("item", item), ("answer", "dispute")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(f.daemon.store.answers("fgw").await.unwrap().is_empty());
    assert!(f.daemon.store.answers("jyj").await.unwrap().is_empty());

    // A waiver request first (the done answer below queues a re-test, which may resolve the
    // finding at once: nothing could be answered on it after that).
    let expiry = (Utc::now() + Duration::days(60))
        .format("%Y-%m-%d")
        .to_string();
    let r = f
        .post(
            &token,
            &[
                ("csrf", &csrf),
                ("item", item),
                ("answer", "waiver"),
                ("note", "系统迁移中 <b>ok</b>"),
                ("expiry", &expiry),
                ("lang", "en"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        r.location.as_deref(),
        Some(format!("{token}?answered=1&lang=en").as_str())
    );
    let page = f.get(&format!("/r/{token}?answered=1")).await;
    assert!(page.body.contains("反馈已收到"));
    assert!(page.body.contains("申请豁免 · "));
    // The latest answer is shown (the waiver's reason), escaped like every input.
    assert!(page.body.contains("系统迁移中 &lt;b&gt;ok"));
    assert!(!page.body.contains("<b>ok</b>"));

    let note = "已关闭该主机";
    let r = f
        .post(
            &token,
            &[
                ("csrf", &csrf),
                ("item", item),
                ("answer", "done"),
                ("note", note),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        r.location.as_deref(),
        Some(format!("{token}?answered=1").as_str())
    );
    let answers = f.daemon.store.answers("fgw").await.unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].kind, AnswerKind::Waiver);
    assert_eq!(answers[0].fingerprint, f.fgw.fingerprint);
    assert_eq!(answers[0].period, "2026-11");
    assert_eq!(
        answers[0]
            .proposed_expiry
            .map(|d| d.format("%Y-%m-%d").to_string()),
        Some(expiry)
    );
    assert_eq!(answers[1].kind, AnswerKind::Done);
    assert_eq!(answers[1].note.as_deref(), Some(note));
    assert!(f.daemon.store.answers("jyj").await.unwrap().is_empty());

    let audit = f.audit().await;
    let answered: Vec<_> = audit
        .iter()
        .filter(|(who, s, d)| who == "link:fgw" && *s == 303 && d.starts_with("answer "))
        .collect();
    assert_eq!(answered.len(), 2, "{audit:?}");
    assert!(
        answered
            .iter()
            .any(|(_, _, d)| d == &format!("answer done fgw {}", f.fgw.fingerprint)),
        "{answered:?}"
    );
    assert!(
        answered
            .iter()
            .any(|(_, _, d)| d == &format!("answer waiver fgw {}", f.fgw.fingerprint)),
        "{answered:?}"
    );
    assert!(
        audit
            .iter()
            .filter(|(_, s, d)| *s == 403 && d.contains("csrf"))
            .count()
            == 4,
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|(_, s, d)| *s == 403 && d.contains("not an open finding of fgw"))
    );
    // The done answer queued a re-test (of 127.117.1.2, on loopback): stop it as the daemon's
    // shutdown does, rather than drop it with the runtime mid-scan.
    f.daemon
        .stop_scans(tokio::time::Instant::now() + std::time::Duration::from_secs(20))
        .await;
}

/// Every text part of a MIME message, decoded.
fn texts(part: &Part) -> Vec<String> {
    let children = part.children();
    if children.is_empty() {
        return vec![String::from_utf8_lossy(&part.decoded()).into_owned()];
    }
    children.iter().flat_map(texts).collect()
}

#[tokio::test]
async fn the_notice_mail_carries_a_link_that_opens_its_department_page() {
    let f = fixture().await;
    let loaded = f.daemon.current();
    let now = Utc::now();
    let today = now
        .with_timezone(&loaded.config.organisation.timezone)
        .date_naive();
    let period = netpatrol::bulletin::Period::month_to_date(today);
    let bulletin = netpatrol::bulletin::build(
        &loaded.config,
        &loaded.rules,
        &f.daemon.store,
        &loaded.templates,
        &period,
        "zh",
        now,
    )
    .await
    .unwrap();
    // Nothing is sent: the mail is only queued, then read from the outbox.
    netpatrol::bulletin::enqueue(
        &loaded.config,
        &f.daemon.store,
        &bulletin,
        &loaded.templates,
        false,
        now,
        None,
    )
    .await
    .unwrap();
    let outbox = f.daemon.store.outbox().await.unwrap();
    let notice = |email: &str| {
        let mail = outbox
            .iter()
            .find(|m| m.kind == "notice" && m.recipients.iter().any(|r| r == email))
            .unwrap_or_else(|| panic!("no notice to {email}"));
        texts(&Part::parse(&mail.message)).join("\n")
    };
    let prefix = "https://netpatrol.example.gov.cn/r/";
    let token_in = |text: &str| {
        let at = text.find(prefix).expect("the notice carries its link") + prefix.len();
        text[at..]
            .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
            .next()
            .unwrap()
            .to_string()
    };
    let fgw = token_in(&notice("it@fgw.example.gov.cn"));
    let jyj = token_in(&notice("it@jyj.example.gov.cn"));
    assert_ne!(fgw, jyj);
    let link = f.key.verify(&fgw, now).unwrap();
    assert_eq!(
        (link.department.as_str(), link.period),
        ("fgw", period.key())
    );
    let page = f.get(&format!("/r/{fgw}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("fgw-evidence"));
    assert!(!page.body.contains("jyj-evidence"));
    let page = f.get(&format!("/r/{jyj}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("jyj-evidence"));
    assert!(!page.body.contains("fgw-evidence"));
}

#[test]
fn check_config_refuses_a_short_link_key_and_a_bad_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netpatrol.yaml");
    let check = |daemon: &str, key: &str| {
        let text = yaml(&dir.path().join("netpatrol.db")).replace(
            r#"daemon: {public_url: "https://netpatrol.example.gov.cn/"}"#,
            daemon,
        );
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_netpatrol"))
            .args(["check-config", "-c"])
            .arg(&path)
            .env("NETPATROL_TEST_LINK_KEY", key)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let keyed = "daemon: {public_url: \"https://np.example.gov.cn\", link_key_env: NETPATROL_TEST_LINK_KEY}";
    let (code, stderr) = check(keyed, "too-short");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(
            "the link key in NETPATROL_TEST_LINK_KEY is 9 bytes long: it must have at least 32"
        ),
        "{stderr}"
    );
    let (code, stderr) = check(keyed, &"k".repeat(32));
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = check("daemon: {public_url: netpatrol.example.gov.cn}", "");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(":10:22: invalid daemon.public_url `netpatrol.example.gov.cn`"),
        "{stderr}"
    );
}

impl Fixture {
    async fn api(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        self.send(request.body(Body::from(body.to_string())).unwrap())
            .await
    }
}

#[tokio::test]
async fn an_approved_waiver_request_waives_the_finding_and_a_denied_dispute_is_shown() {
    let f = fixture().await;
    let fgw = f.link("fgw", Duration::days(1));
    let jyj = f.link("jyj", Duration::days(1));
    let expiry = (Utc::now() + Duration::days(90))
        .format("%Y-%m-%d")
        .to_string();
    let r = f
        .post(
            &fgw,
            &[
                ("csrf", &f.key.csrf(&fgw)),
                ("item", &f.fgw.fingerprint),
                ("answer", "waiver"),
                ("note", "业务系统迁移中"),
                ("expiry", &expiry),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = f
        .post(
            &jyj,
            &[
                ("csrf", &f.key.csrf(&jyj)),
                ("item", &f.jyj.fingerprint),
                ("answer", "dispute"),
                ("note", "该主机已审批"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);

    let path = "/api/v1/rectification/requests";
    assert_eq!(
        f.api("GET", path, None, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let list = f.api("GET", path, Some(OPERATOR), "").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let list: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    let requests = list["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2, "{list}");
    let id_of = |kind: &str| {
        requests.iter().find(|r| r["kind"] == kind).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (waiver, dispute) = (id_of("waiver"), id_of("dispute"));
    assert_eq!(
        requests.iter().find(|r| r["kind"] == "waiver").unwrap()["proposed_expiry"],
        expiry.as_str()
    );

    let approve = format!("{path}/{}/approve", encode(&waiver));
    let body = r#"{"approver": "张伟"}"#;
    assert_eq!(
        f.api("POST", &approve, None, body).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A dispute is no waiver request.
    let wrong = format!("{path}/{}/approve", encode(&dispute));
    assert_eq!(
        f.api("POST", &wrong, Some(OPERATOR), body).await.status,
        StatusCode::NOT_FOUND
    );
    let r = f.api("POST", &approve, Some(OPERATOR), body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Decided once only.
    assert_eq!(
        f.api("POST", &approve, Some(OPERATOR), body).await.status,
        StatusCode::NOT_FOUND
    );

    // The existing machinery honours it: the API says waived, with approver and expiry.
    let findings = f
        .api("GET", "/api/v1/findings?department=fgw", Some(OPERATOR), "")
        .await;
    let findings: serde_json::Value = serde_json::from_str(&findings.body).unwrap();
    let waived = findings
        .as_array()
        .or_else(|| findings["findings"].as_array())
        .unwrap()
        .iter()
        .find(|x| x["fingerprint"] == f.fgw.fingerprint.as_str())
        .unwrap()
        .clone();
    assert_eq!(waived["state"], "waived", "{waived}");
    assert!(waived["waiver"].to_string().contains("张伟"), "{waived}");
    assert!(waived["waiver"].to_string().contains(&expiry), "{waived}");
    // ... and the department's page no longer lists it as open.
    let page = f.get(&format!("/r/{fgw}")).await;
    assert!(!page.body.contains("fgw-evidence"), "{}", page.body);
    // jyj's finding is not waived by it.
    let jyj_findings = f
        .api("GET", "/api/v1/findings?department=jyj", Some(OPERATOR), "")
        .await;
    assert!(
        !jyj_findings.body.contains("\"waived\""),
        "{}",
        jyj_findings.body
    );

    // The `bulletin` command reads the stored waiver as the daemon does.
    let config_path = f._dir.path().join("netpatrol.yaml");
    std::fs::write(&config_path, yaml(&f._dir.path().join("netpatrol.db"))).unwrap();
    let month = Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m")
        .to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netpatrol"))
        .args(["bulletin", "--period", &month, "--out"])
        .arg(f._dir.path().join("out"))
        .arg("-c")
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_dir(f._dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "csv"))
        .unwrap();
    let csv = String::from_utf8_lossy(&std::fs::read(csv).unwrap()).into_owned();
    let row_of = |ip: &str| {
        csv.lines()
            .find(|l| l.contains(ip))
            .unwrap_or_else(|| panic!("no row for {ip} in {csv}"))
            .to_string()
    };
    assert!(row_of("127.117.1.2").contains("已豁免"), "{csv}");
    assert!(!row_of("127.117.2.2").contains("已豁免"), "{csv}");

    // The loop in the metrics: fgw's waiver approved, jyj's dispute still undecided.
    let metrics = f.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    for line in [
        "netpatrol_rectification_items{department=\"fgw\",state=\"waiver_approved\"} 1",
        "netpatrol_rectification_items{department=\"jyj\",state=\"disputed\"} 1",
    ] {
        assert!(
            metrics.body.contains(line),
            "{line} missing:\n{}",
            metrics.body
        );
    }

    let deny = format!("{path}/{}/deny", encode(&dispute));
    let r = f.api("POST", &deny, Some(OPERATOR), "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let page = f.get(&format!("/r/{jyj}")).await;
    assert!(page.body.contains("jyj-evidence"));
    // A dispute denied through the API is closed: the finding stands.
    assert!(page.body.contains("异议未予采纳"), "{}", page.body);
    let left = f.api("GET", path, Some(OPERATOR), "").await;
    assert!(!left.body.contains("\"kind\""), "{}", left.body);

    let audit = f.daemon.store.audit_since(None).await.unwrap();
    assert!(
        audit.iter().any(|e| e.principal == "operator"
            && e.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("approved waiver") && d.contains("张伟"))),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|e| e.detail.as_deref() == Some(format!("closed request {dispute}").as_str()))
    );
}

/// A request to the operator page, with the session cookie when given.
fn operator_request(
    method: &str,
    path: &str,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
) -> Request<Body> {
    let body: String = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, format!("np_operator={c}"));
    }
    r.body(Body::from(body)).unwrap()
}

/// The operator page: a login form that only the operator token opens (session cookie:
/// HttpOnly, SameSite=Strict), CSRF on every decision, escaped content; a waiver request
/// approved there waives the finding; a dispute closed there is mailed to the department
/// (queued once in the outbox) and shown on its page; a dispute turned into a rule override
/// takes the finding off the department's list; every step is audited.
#[tokio::test]
async fn the_operator_page_logs_in_with_the_operator_token_and_decides_requests() {
    let f = fixture().await;
    // A second jyj finding, to be disputed and overridden.
    let extra = finding("127.117.2.3", "jyj", "jyj-second");
    f.daemon
        .store
        .record(
            &ScanObservations {
                run: ScanRun {
                    id: "run-rectify-2".into(),
                    started_at: Utc::now(),
                    finished_at: Some(Utc::now()),
                    segments: vec!["dept-jyj".into()],
                    addresses: 6,
                    probes: 6,
                    probe_kinds: ProbeKind::ALL.to_vec(),
                    state: RunState::Complete,
                    coverage: Default::default(),
                },
                hosts: vec![host("127.117.2.3", "dept-jyj")],
                errors: BTreeMap::new(),
            },
            &|_: &str| Some("jyj".to_string()),
            std::slice::from_ref(&extra),
            &[(extra.fingerprint.clone(), Event::Opened)],
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    let (fgw, jyj) = (
        f.link("fgw", Duration::days(1)),
        f.link("jyj", Duration::days(1)),
    );
    let expiry = (Utc::now() + Duration::days(90)).date_naive().to_string();
    for (token, item, answer, note) in [
        (&fgw, &f.fgw.fingerprint, "waiver", HOSTILE),
        (&jyj, &f.jyj.fingerprint, "dispute", "该主机已审批"),
        (&jyj, &extra.fingerprint, "dispute", "误报：该地址为打印机"),
    ] {
        let csrf = f.key.csrf(token);
        let r = f
            .post(
                token,
                &[
                    ("csrf", &csrf),
                    ("item", item),
                    ("answer", answer),
                    ("note", note),
                    ("expiry", &expiry),
                ],
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    }

    // Not logged in: the login form only.
    let page = f
        .send(operator_request("GET", "/operator", None, &[]))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("操作员登录"), "{}", page.body);
    assert!(!page.body.contains("该主机已审批"));
    // A forged cookie is no session.
    let forged = f
        .send(operator_request(
            "GET",
            "/operator",
            Some("czEKb3BlcmF0b3IKOTk5OTk5OTk5OQ.AAAA"),
            &[],
        ))
        .await;
    assert!(forged.body.contains("操作员登录"));
    // A wrong token is refused.
    let wrong = f
        .send(operator_request(
            "POST",
            "/operator/login",
            None,
            &[("token", "guess")],
        ))
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    // The operator token opens a session.
    let response = f
        .router
        .clone()
        .oneshot(operator_request(
            "POST",
            "/operator/login",
            None,
            &[("token", OPERATOR)],
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/operator"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP here: {cookie}");
    let session = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("np_operator=")
        .unwrap()
        .to_string();

    let page = f
        .send(operator_request("GET", "/operator", Some(&session), &[]))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("待处理的申请（3）"), "{}", page.body);
    assert!(page.body.contains("区发改委") && page.body.contains("区教育局"));
    assert!(page.body.contains(&expiry), "the proposed expiry is shown");
    assert!(!page.body.contains(HOSTILE), "the reason must be escaped");
    assert!(page.body.contains("&lt;script&gt;"));
    let en = f
        .send(operator_request(
            "GET",
            "/operator?lang=en",
            Some(&session),
            &[],
        ))
        .await;
    assert!(en.body.contains("Pending requests (3)") || en.body.contains("Pending requests"));
    let csrf = f.key.csrf(&session);
    let requests = f.daemon.store.requests(false).await.unwrap();
    let id_of = |fp: &str| {
        requests
            .iter()
            .find(|(_, a)| a.fingerprint == fp)
            .unwrap()
            .0
            .clone()
    };
    let (waiver, dispute, second) = (
        id_of(&f.fgw.fingerprint),
        id_of(&f.jyj.fingerprint),
        id_of(&extra.fingerprint),
    );
    let decide = |id: &str| format!("/operator/requests/{}", encode(id));

    // No CSRF token, or no session: refused, nothing decided.
    let r = f
        .send(operator_request(
            "POST",
            &decide(&waiver),
            Some(&session),
            &[("action", "approve"), ("approver", "张伟")],
        ))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = f
        .send(operator_request(
            "POST",
            &decide(&waiver),
            None,
            &[("csrf", &csrf), ("action", "approve"), ("approver", "张伟")],
        ))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(f.daemon.store.requests(false).await.unwrap().len(), 3);

    // Approve the waiver (approver, expiry).
    let r = f
        .send(operator_request(
            "POST",
            &decide(&waiver),
            Some(&session),
            &[
                ("csrf", &csrf),
                ("action", "approve"),
                ("approver", "张伟"),
                ("expires_on", &expiry),
            ],
        ))
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let findings = f
        .api("GET", "/api/v1/findings?department=fgw", Some(OPERATOR), "")
        .await;
    assert!(findings.body.contains("\"waived\""), "{}", findings.body);
    assert!(findings.body.contains("张伟"));

    // Closing a dispute needs a note; with one, the department is mailed it, once.
    let r = f
        .send(operator_request(
            "POST",
            &decide(&dispute),
            Some(&session),
            &[("csrf", &csrf), ("action", "close")],
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = f
        .send(operator_request(
            "POST",
            &decide(&dispute),
            Some(&session),
            &[
                ("csrf", &csrf),
                ("action", "close"),
                ("note", "审批已于上月过期，请重新申请"),
            ],
        ))
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let again = f
        .send(operator_request(
            "POST",
            &decide(&dispute),
            Some(&session),
            &[("csrf", &csrf), ("action", "close"), ("note", "again")],
        ))
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "decided once only");
    let outbox = f.daemon.store.outbox().await.unwrap();
    let decisions: Vec<_> = outbox.iter().filter(|m| m.kind == "decision").collect();
    assert_eq!(decisions.len(), 1, "{outbox:?}");
    assert_eq!(decisions[0].recipients, ["it@jyj.example.gov.cn"]);
    let text = texts(&Part::parse(&decisions[0].message)).join("\n");
    assert!(text.contains("审批已于上月过期，请重新申请"), "{text}");
    assert!(text.contains("异议未予采纳"), "{text}");
    assert!(
        text.contains("https://netpatrol.example.gov.cn/r/"),
        "the mail carries the department's link: {text}"
    );
    let page = f.get(&format!("/r/{jyj}")).await;
    assert!(page.body.contains("异议未予采纳"), "{}", page.body);
    assert!(
        page.body.contains("处理意见: 审批已于上月过期，请重新申请"),
        "the bureau's note is on the page: {}",
        page.body
    );
    assert!(page.body.contains("jyj-evidence"), "the finding stands");

    // The other dispute becomes a rule override: off the department's open list, not mailed.
    let r = f
        .send(operator_request(
            "POST",
            &decide(&second),
            Some(&session),
            &[
                ("csrf", &csrf),
                ("action", "override"),
                ("approver", "李强"),
                ("note", "确认为打印机"),
            ],
        ))
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let page = f.get(&format!("/r/{jyj}")).await;
    assert!(!page.body.contains("jyj-second"), "{}", page.body);
    let stored = f.daemon.store.stored_exceptions().await.unwrap();
    assert!(
        stored
            .iter()
            .any(|e| e.kind == netpatrol::store::ExceptionKind::Override
                && e.ip.as_deref() == Some("127.117.2.3")
                && e.approver == "李强")
    );
    let outbox = f.daemon.store.outbox().await.unwrap();
    assert_eq!(outbox.iter().filter(|m| m.kind == "decision").count(), 1);

    // Nothing pending; the decisions are listed.
    let page = f
        .send(operator_request("GET", "/operator", Some(&session), &[]))
        .await;
    assert!(page.body.contains("待处理的申请（0）"), "{}", page.body);
    assert!(page.body.contains("豁免已批准") && page.body.contains("规则已覆盖"));

    let audit: Vec<(String, u16, String)> = f
        .daemon
        .store
        .audit_since(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.route.starts_with("/operator"))
        .map(|e| (e.principal, e.status, e.detail.unwrap_or_default()))
        .collect();
    let has = |who: &str, status: u16, detail: &str| {
        audit
            .iter()
            .any(|(w, s, d)| w == who && *s == status && d.contains(detail))
    };
    assert!(has("-", 403, "login refused: wrong token"), "{audit:?}");
    assert!(has("operator", 303, "operator login"), "{audit:?}");
    assert!(has("operator", 403, "csrf"), "{audit:?}");
    assert!(has("-", 403, "no session"), "{audit:?}");
    assert!(
        has("operator", 303, &format!("approved request {waiver}")),
        "{audit:?}"
    );
    assert!(
        has("operator", 303, &format!("closed request {dispute}")),
        "{audit:?}"
    );
    assert!(
        has("operator", 303, &format!("overridden request {second}")),
        "{audit:?}"
    );
}

/// The bureau's decisions in the store, on SQLite and PostgreSQL: one decision per request
/// (a second is refused and changes nothing), the waiver or override kept with its kind, a
/// decision of the wrong kind refused, the notes read back by department.
#[tokio::test]
async fn decisions_are_kept_once_with_their_exceptions_on_both_backends() {
    use netpatrol::store::{Answer, Decision, DecisionKind, ExceptionKind, StoredException};
    crate::support::store::for_each_backend(|db| async move {
        let store = db.open().await;
        let answer = |fp: &str, kind: AnswerKind| Answer {
            at: Utc::now(),
            department: "jyj".into(),
            period: "2026-11".into(),
            fingerprint: fp.into(),
            kind,
            note: Some("理由".into()),
            proposed_expiry: Some((Utc::now() + Duration::days(30)).date_naive()),
            peer: "127.117.0.9:40000".into(),
            state: "received".into(),
        };
        let waiver = store
            .record_answer(&answer("r|127.117.2.2|80||", AnswerKind::Waiver))
            .await
            .unwrap();
        let dispute = store
            .record_answer(&answer("r|127.117.2.3|80||", AnswerKind::Dispute))
            .await
            .unwrap();
        let decision = |id: &str, kind: DecisionKind, note: Option<&str>| Decision {
            answer_id: id.into(),
            at: Utc::now(),
            kind,
            actor: "operator".into(),
            note: note.map(Into::into),
            expires_on: None,
        };
        let exception = |id: &str, kind: ExceptionKind, ip: &str| StoredException {
            id: id.into(),
            kind,
            rule: "r".into(),
            ip: Some(ip.into()),
            port: Some(80),
            department: Some("jyj".into()),
            reason: "理由".into(),
            approver: "张伟".into(),
            expires_on: netpatrol::store::override_expires(),
        };
        // A dispute cannot be approved as a waiver request.
        assert!(
            !store
                .decide(&decision(&dispute, DecisionKind::Approved, None), None)
                .await
                .unwrap()
        );
        assert!(
            store
                .decide(
                    &decision(&dispute, DecisionKind::Overridden, Some("确认为打印机")),
                    Some(&exception(&dispute, ExceptionKind::Override, "127.117.2.3")),
                )
                .await
                .unwrap()
        );
        assert!(
            !store
                .decide(
                    &decision(&dispute, DecisionKind::Closed, Some("again")),
                    None
                )
                .await
                .unwrap(),
            "decided once"
        );
        assert!(
            store
                .decide(
                    &decision(&waiver, DecisionKind::Denied, Some("不予批准")),
                    None
                )
                .await
                .unwrap()
        );
        let stored = store.stored_exceptions().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].kind, ExceptionKind::Override);
        assert_eq!(stored[0].expires_on, netpatrol::store::override_expires());
        let decisions = store.decisions().await.unwrap();
        assert_eq!(decisions[&dispute].kind, DecisionKind::Overridden);
        assert_eq!(decisions[&waiver].note.as_deref(), Some("不予批准"));
        assert_eq!(
            store.answer(&waiver).await.unwrap().unwrap().state,
            "denied"
        );
        let notes = store.decision_notes("jyj").await.unwrap();
        assert_eq!(notes["r|127.117.2.3|80||"], "确认为打印机");
        assert!(store.decision_notes("fgw").await.unwrap().is_empty());
        assert!(store.requests(false).await.unwrap().is_empty());
        store.close().await;
    })
    .await;
}
