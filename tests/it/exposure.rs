//! Exposure probes against loopback fakes that speak the real protocols: service
//! identification and unauthenticated-access checks (`probe::service`), and the HTTP probe
//! (`probe::http`), including hostile servers that must each cost one bounded observation.
//!
//! Addresses: 127.51.0.0/24 for services, 127.51.1.0/24 for HTTP, 127.51.2.0/24 for hostile
//! servers, so these tests run in parallel with the others.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use netpatrol::config::{NetworkKind, Segment};
use netpatrol::probe::Reason;
use netpatrol::probe::banner::{self, Identity};
use netpatrol::probe::http::{self, HttpFacts, HttpSpec};
use netpatrol::probe::service::{self, ServiceFacts};
use netpatrol::scope::{Limits, Scope, Target};

use crate::support::CountingListener;
use crate::support::fakes::{self, Fake, HttpFake, Reply, open_head, response};

fn target(ip: &str) -> Target {
    let segment = Segment {
        name: "lab".into(),
        network: NetworkKind::Other,
        cidrs: vec!["127.51.0.0/16".parse().unwrap()],
        exclude: vec![],
        department: None,
        consolidate_by: None,
    };
    Scope::new(&[segment])
        .target(ip.parse().unwrap())
        .expect("127.51/16 is in scope")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn known(service: &str) -> Identity {
    let mut id = banner::identify(0, None);
    id.service = service.to_owned();
    id
}

const STEP: Duration = Duration::from_secs(2);

async fn check(addr: &str, fake: &Fake, service: &str) -> ServiceFacts {
    let limits = Limits::new(0, 8);
    service::probe(
        &target(addr),
        fake.port(),
        &known(service),
        b"",
        STEP,
        &limits,
    )
    .await
    .unwrap_or_else(|f| panic!("{service} probe failed: {f}"))
}

// ---------------------------------------------------------------------------------------------
// Data services without credentials.

#[tokio::test]
async fn redis_without_password_is_unauthenticated() {
    let fake = fakes::redis(ip("127.51.0.1"), false).await;
    let facts = check("127.51.0.1", &fake, "redis").await;
    assert_eq!(facts.service.as_deref(), Some("redis"));
    assert_eq!(facts.unauthenticated, Some(true));
    assert_eq!(facts.version.as_deref(), Some("7.0.15"));
    assert_eq!(facts.evidence.as_deref(), Some("redis_version:7.0.15"));
    // Read-only: PING and INFO, nothing else.
    assert_eq!(fake.seen(), ["PING", "INFO server"]);
}

#[tokio::test]
async fn redis_with_password_is_protected_and_gets_no_more_commands() {
    let fake = fakes::redis(ip("127.51.0.2"), true).await;
    let facts = check("127.51.0.2", &fake, "redis").await;
    assert_eq!(facts.service.as_deref(), Some("redis"));
    assert_eq!(facts.unauthenticated, Some(false));
    assert!(facts.evidence.unwrap().starts_with("-NOAUTH"));
    assert_eq!(fake.seen(), ["PING"]);
}

#[tokio::test]
async fn elasticsearch_cluster_json() {
    let fake = HttpFake::start(ip("127.51.0.3"), |req| match req.path.as_str() {
        "/" => response(
            "200 OK",
            &[("content-type", "application/json; charset=UTF-8")],
            br#"{"name":"es-node-1","cluster_name":"zwfw-logs","cluster_uuid":"q2-4qMBmS0qj2Gw0Jb9Zqw","version":{"number":"7.17.15","build_flavor":"default","lucene_version":"8.11.1"},"tagline":"You Know, for Search"}"#,
        ),
        _ => response("404 Not Found", &[], b""),
    })
    .await;
    let limits = Limits::new(0, 8);
    let facts = service::probe(
        &target("127.51.0.3"),
        fake.port(),
        &known("elasticsearch"),
        b"",
        STEP,
        &limits,
    )
    .await
    .unwrap();
    assert_eq!(facts.product.as_deref(), Some("Elasticsearch"));
    assert_eq!(facts.version.as_deref(), Some("7.17.15"));
    assert_eq!(facts.unauthenticated, Some(true));
    assert_eq!(
        facts.evidence.as_deref(),
        Some("cluster_name:zwfw-logs version:7.17.15")
    );
    let methods: Vec<String> = fake.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, ["GET"]);
}

#[tokio::test]
async fn elasticsearch_with_security_is_protected() {
    let fake = HttpFake::start(ip("127.51.0.4"), |_| {
        response(
            "401 Unauthorized",
            &[
                ("WWW-Authenticate", "Basic realm=\"security\" charset=\"UTF-8\""),
                ("content-type", "application/json"),
            ],
            br#"{"error":{"root_cause":[{"type":"security_exception","reason":"missing authentication credentials for REST request [/]"}],"type":"security_exception"},"status":401}"#,
        )
    })
    .await;
    let limits = Limits::new(0, 8);
    let facts = service::probe(
        &target("127.51.0.4"),
        fake.port(),
        &known("elasticsearch"),
        b"",
        STEP,
        &limits,
    )
    .await
    .unwrap();
    assert_eq!(facts.service.as_deref(), Some("elasticsearch"));
    assert_eq!(facts.unauthenticated, Some(false));
}

#[tokio::test]
async fn mongodb_without_auth_lists_databases() {
    let fake = fakes::mongodb(ip("127.51.0.5"), false).await;
    let facts = check("127.51.0.5", &fake, "mongodb").await;
    assert_eq!(facts.product.as_deref(), Some("MongoDB"));
    assert_eq!(facts.version.as_deref(), Some("7.0.5"));
    assert_eq!(facts.unauthenticated, Some(true));
    assert_eq!(
        facts.evidence.as_deref(),
        Some("listDatabases without auth: 4 databases")
    );
    assert_eq!(fake.seen(), ["hello", "buildInfo", "listDatabases"]);
}

#[tokio::test]
async fn mongodb_with_auth_is_protected() {
    let fake = fakes::mongodb(ip("127.51.0.6"), true).await;
    let facts = check("127.51.0.6", &fake, "mongodb").await;
    assert_eq!(facts.service.as_deref(), Some("mongodb"));
    assert_eq!(facts.unauthenticated, Some(false));
    assert_eq!(
        facts.evidence.as_deref(),
        Some("listDatabases: Unauthorized")
    );
}

#[tokio::test]
async fn docker_api_version() {
    let fake = HttpFake::start(ip("127.51.0.7"), |req| match req.path.as_str() {
        "/version" => response(
            "200 OK",
            &[("Content-Type", "application/json"), ("Api-Version", "1.43")],
            br#"{"Platform":{"Name":"Docker Engine - Community"},"Version":"24.0.7","ApiVersion":"1.43","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64","KernelVersion":"5.15.0-91-generic"}"#,
        ),
        _ => response("404 Not Found", &[], b"{\"message\":\"page not found\"}"),
    })
    .await;
    let limits = Limits::new(0, 8);
    let facts = service::probe(
        &target("127.51.0.7"),
        fake.port(),
        &known("docker"),
        b"",
        STEP,
        &limits,
    )
    .await
    .unwrap();
    assert_eq!(facts.product.as_deref(), Some("Docker"));
    assert_eq!(facts.version.as_deref(), Some("24.0.7"));
    assert_eq!(facts.unauthenticated, Some(true));
    assert_eq!(
        facts.evidence.as_deref(),
        Some("ApiVersion:1.43 Version:24.0.7")
    );
}

#[tokio::test]
async fn memcached_stats() {
    let fake = fakes::memcached(ip("127.51.0.8")).await;
    let facts = check("127.51.0.8", &fake, "memcached").await;
    assert_eq!(facts.version.as_deref(), Some("1.6.21"));
    assert_eq!(facts.unauthenticated, Some(true));
    assert_eq!(fake.seen(), ["stats"]);
}

const POD_LIST: &[u8] = br#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[{"metadata":{"name":"kube-proxy-7xk2p","namespace":"kube-system"}},{"metadata":{"name":"gateway-0","namespace":"zwfw"}}]}"#;

#[tokio::test]
async fn kubelet_read_only_port_lists_pods() {
    let fake = HttpFake::start(ip("127.51.0.9"), |req| match req.path.as_str() {
        "/pods" => response("200 OK", &[("Content-Type", "application/json")], POD_LIST),
        _ => response("404 Not Found", &[], b"404 page not found\n"),
    })
    .await;
    let limits = Limits::new(0, 8);
    let facts = service::probe(
        &target("127.51.0.9"),
        fake.port(),
        &known("kubelet"),
        b"",
        STEP,
        &limits,
    )
    .await
    .unwrap();
    assert_eq!(facts.unauthenticated, Some(true));
    assert_eq!(
        facts.evidence.as_deref(),
        Some("GET /pods: PodList, 2 pods")
    );
}

#[tokio::test]
async fn kubelet_over_https_with_anonymous_auth_off() {
    // Plain HTTP gets no HTTP answer from a TLS port; the check falls back to HTTPS.
    let fake = HttpFake::start_tls(ip("127.51.0.10"), |_| {
        response(
            "401 Unauthorized",
            &[("Content-Type", "text/plain")],
            b"Unauthorized",
        )
    })
    .await;
    let limits = Limits::new(0, 8);
    let facts = service::probe(
        &target("127.51.0.10"),
        fake.port(),
        &known("kubelet"),
        b"",
        STEP,
        &limits,
    )
    .await
    .unwrap();
    assert_eq!(facts.service.as_deref(), Some("kubelet"));
    assert_eq!(facts.unauthenticated, Some(false));
}

// ---------------------------------------------------------------------------------------------
// Silent services named by their answer to a harmless first message.

#[tokio::test]
async fn rdp_connection_confirm() {
    let fake = fakes::rdp(ip("127.51.0.11")).await;
    let facts = check("127.51.0.11", &fake, "rdp").await;
    assert_eq!(facts.service.as_deref(), Some("rdp"));
    assert_eq!(
        facts.evidence.as_deref(),
        Some("X.224 Connection Confirm, selected CredSSP (NLA)")
    );
    assert_eq!(fake.seen(), ["x224 connection request"]);
}

#[tokio::test]
async fn smb2_negotiate() {
    let fake = fakes::smb2(ip("127.51.0.12")).await;
    let facts = check("127.51.0.12", &fake, "smb").await;
    assert_eq!(facts.service.as_deref(), Some("smb"));
    assert_eq!(facts.version.as_deref(), Some("3.0.2"));
    assert_eq!(
        facts.evidence.as_deref(),
        Some("SMB2 NEGOTIATE: dialect 3.0.2, signing required")
    );
    assert_eq!(fake.seen(), ["smb2 negotiate"]);
}

#[tokio::test]
async fn postgresql_ssl_request() {
    let fake = fakes::postgresql(ip("127.51.0.13")).await;
    let facts = check("127.51.0.13", &fake, "postgresql").await;
    assert_eq!(facts.service.as_deref(), Some("postgresql"));
    assert_eq!(facts.evidence.as_deref(), Some("SSLRequest: N (no TLS)"));
    assert_eq!(fake.seen(), ["ssl request"]);
}

#[tokio::test]
async fn mssql_prelogin_version() {
    let fake = fakes::mssql(ip("127.51.0.14")).await;
    let facts = check("127.51.0.14", &fake, "mssql").await;
    assert_eq!(facts.product.as_deref(), Some("Microsoft SQL Server"));
    assert_eq!(facts.version.as_deref(), Some("15.0.2000"));
    assert_eq!(
        facts.evidence.as_deref(),
        Some("TDS PRELOGIN: version 15.0.2000 (SQL Server 2019), encryption not supported")
    );
}

#[tokio::test]
async fn oracle_tns_refuse_names_the_listener() {
    let fake = fakes::oracle_tns(ip("127.51.0.15")).await;
    let facts = check("127.51.0.15", &fake, "oracle-tns").await;
    assert_eq!(facts.service.as_deref(), Some("oracle-tns"));
    assert_eq!(facts.version.as_deref(), Some("19.0.0.0.0"));
    assert_eq!(facts.evidence.as_deref(), Some("TNS REFUSE ERR=12514"));
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].contains("SERVICE_NAME=netpatrol-probe"), "{seen:?}");
}

// ---------------------------------------------------------------------------------------------
// What the service probe does not do, and how it fails.

#[tokio::test]
async fn greeting_or_unknown_service_sends_nothing() {
    let fake = fakes::silent(ip("127.51.0.16")).await;
    let limits = Limits::new(0, 8);
    let t = target("127.51.0.16");
    // RDP's port, but something greeted: not RDP, no probe.
    assert!(!service::applies(&known("rdp"), b"SSH-2.0-OpenSSH_8.9\r\n"));
    let facts = service::probe(
        &t,
        fake.port(),
        &known("rdp"),
        b"SSH-2.0-x\r\n",
        STEP,
        &limits,
    )
    .await
    .unwrap();
    assert_eq!(facts, ServiceFacts::default());
    let facts = service::probe(&t, fake.port(), &known("unknown"), b"", STEP, &limits)
        .await
        .unwrap();
    assert_eq!(facts, ServiceFacts::default());
    assert_eq!(fake.connections(), 0);
}

#[tokio::test]
async fn another_protocol_is_not_confirmed() {
    // An HTTP server on Redis's port: the -ERR-less answer is not Redis.
    let fake = HttpFake::start(ip("127.51.0.17"), |_| response("400 Bad Request", &[], b"")).await;
    let limits = Limits::new(0, 8);
    let facts = service::probe(
        &target("127.51.0.17"),
        fake.port(),
        &known("redis"),
        b"",
        STEP,
        &limits,
    )
    .await;
    // The fake reads up to the blank line the RESP request never sends, so it may time out or
    // answer; either way nothing is confirmed.
    if let Ok(facts) = facts {
        assert_eq!(facts.service, None);
        assert_eq!(facts.unauthenticated, None);
    }
}

#[tokio::test]
async fn closed_port_fails_as_refused() {
    let limits = Limits::new(0, 8);
    // Bind and drop to find a port that is closed on this address.
    let port = {
        let l = std::net::TcpListener::bind("127.51.0.18:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = service::probe(
        &target("127.51.0.18"),
        port,
        &known("redis"),
        b"",
        STEP,
        &limits,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason, Reason::Refused);
}

#[tokio::test]
async fn silent_peer_costs_one_step() {
    let fake = fakes::silent(ip("127.51.0.19")).await;
    let limits = Limits::new(0, 8);
    let step = Duration::from_millis(500);
    let started = Instant::now();
    let err = service::probe(
        &target("127.51.0.19"),
        fake.port(),
        &known("mssql"),
        b"",
        step,
        &limits,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason, Reason::Timeout);
    assert!(
        started.elapsed() < step + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn endless_answer_is_capped() {
    let fake = fakes::firehose(ip("127.51.0.20")).await;
    let limits = Limits::new(0, 8);
    let started = Instant::now();
    let facts = service::probe(
        &target("127.51.0.20"),
        fake.port(),
        &known("memcached"),
        b"",
        Duration::from_secs(3),
        &limits,
    )
    .await
    .unwrap();
    // 64 KiB read, not recognised, returned long before the step ends.
    assert_eq!(facts, ServiceFacts::default());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP.

fn spec(timeout_ms: u64) -> HttpSpec {
    HttpSpec {
        timeout: Duration::from_millis(timeout_ms),
        admin_paths: Vec::new(),
        ..HttpSpec::default()
    }
}

async fn http_probe(addr: &str, port: u16, tls: bool, spec: &HttpSpec) -> Option<HttpFacts> {
    let limits = Limits::new(0, 8);
    http::probe(&target(addr), port, tls, spec, &limits)
        .await
        .unwrap_or_else(|f| panic!("http probe failed: {f}"))
}

fn gbk(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::GBK.encode(text);
    assert!(!unmappable);
    bytes.into_owned()
}

#[tokio::test]
async fn gbk_pages_are_decoded_from_meta_header_or_guess() {
    let page = |meta: &str| {
        gbk(&format!(
            "<html><head>{meta}<title>海陵区人民政府 - 政务公开</title></head><body>欢迎</body></html>"
        ))
    };
    for (i, (ct, body, charset)) in [
        (
            "text/html",
            page("<meta http-equiv=\"Content-Type\" content=\"text/html; charset=gb2312\">"),
            "GBK",
        ),
        ("text/html", page("<meta charset=\"gbk\">"), "GBK"),
        ("text/html; charset=GB2312", page(""), "GBK"),
        // Nothing declared, not UTF-8: read as GB18030 (WHATWG name, lowercase).
        ("text/html", page(""), "gb18030"),
    ]
    .into_iter()
    .enumerate()
    {
        let addr = format!("127.51.1.{}", 1 + i);
        let fake = HttpFake::start(ip(&addr), move |_| {
            response(
                "200 OK",
                &[("Content-Type", ct), ("Server", "nginx")],
                &body,
            )
        })
        .await;
        let facts = http_probe(&addr, fake.port(), false, &spec(3000))
            .await
            .unwrap();
        assert_eq!(
            facts.title.as_deref(),
            Some("海陵区人民政府 - 政务公开"),
            "{ct}"
        );
        assert_eq!(facts.charset.as_deref(), Some(charset), "{ct}");
        assert_eq!(facts.server.as_deref(), Some("nginx"));
        assert!(!facts.version_disclosed);
    }
}

#[tokio::test]
async fn login_form_over_plain_http() {
    let fake = HttpFake::start(ip("127.51.1.5"), |_| {
        response(
            "200 OK",
            &[
                ("Content-Type", "text/html; charset=utf-8"),
                ("Server", "Apache/2.4.6 (CentOS) PHP/5.4.16"),
                ("X-Powered-By", "PHP/5.4.16"),
            ],
            "<html><head><title>项目申报管理系统 登录</title></head><body><form method=post action=/login><input name=user><input type=\"password\" name=\"pwd\"></form></body></html>".as_bytes(),
        )
    })
    .await;
    let facts = http_probe("127.51.1.5", fake.port(), false, &spec(3000))
        .await
        .unwrap();
    assert_eq!(facts.status, 200);
    assert_eq!(facts.scheme, "http");
    assert!(facts.login_form);
    assert!(!facts.hsts);
    assert!(facts.version_disclosed);
    assert_eq!(facts.powered_by.as_deref(), Some("PHP/5.4.16"));
    assert_eq!(facts.title.as_deref(), Some("项目申报管理系统 登录"));
    // Only GET, and the form was never submitted.
    assert!(fake.requests().iter().all(|r| r.method == "GET"));
}

#[tokio::test]
async fn directory_listing() {
    let fake = HttpFake::start(ip("127.51.1.6"), |_| {
        response(
            "200 OK",
            &[("Content-Type", "text/html;charset=UTF-8")],
            b"<html><head><title>Index of /</title></head><body><h1>Index of /</h1><pre><a href=\"../\">../</a>\n<a href=\"backup.sql\">backup.sql</a></pre></body></html>",
        )
    })
    .await;
    let facts = http_probe("127.51.1.6", fake.port(), false, &spec(3000))
        .await
        .unwrap();
    assert!(facts.directory_listing);
    assert!(!facts.login_form);
}

#[tokio::test]
async fn redirect_to_https_on_the_same_address_is_recorded_not_followed() {
    let https_side = CountingListener::bind(ip("127.51.1.7"), 0).await;
    let location = format!("https://127.51.1.7:{}/", https_side.addr.port());
    let fake = HttpFake::start(ip("127.51.1.7"), move |_| {
        response(
            "301 Moved Permanently",
            &[("Location", &location), ("Server", "nginx")],
            b"",
        )
    })
    .await;
    let facts = http_probe("127.51.1.7", fake.port(), false, &spec(3000))
        .await
        .unwrap();
    assert_eq!(facts.status, 301);
    assert!(facts.redirects_to_https);
    assert!(
        facts
            .redirect_stopped_at
            .unwrap()
            .starts_with("https://127.51.1.7:")
    );
    assert_eq!(
        https_side.accepted(),
        0,
        "the HTTPS side is probed on its own"
    );
}

#[tokio::test]
async fn redirect_to_another_address_is_never_followed() {
    // Another loopback address with a listener: the probe must not connect to it.
    let elsewhere = CountingListener::bind(ip("127.51.1.99"), 0).await;
    let location = format!("http://127.51.1.99:{}/portal/", elsewhere.addr.port());
    let fake = HttpFake::start(ip("127.51.1.8"), move |_| {
        response("302 Found", &[("Location", &location)], b"")
    })
    .await;
    let facts = http_probe("127.51.1.8", fake.port(), false, &spec(3000))
        .await
        .unwrap();
    assert_eq!(facts.status, 302);
    assert!(!facts.redirects_to_https);
    assert!(facts.redirect_stopped_at.unwrap().contains("127.51.1.99"));
    assert_eq!(elsewhere.accepted(), 0);
    // A redirect to a canonical HTTPS name counts as a redirect to HTTPS, and is not followed
    // (the name is never even resolved: the probe's resolver knows no other name).
    let fake = HttpFake::start(ip("127.51.1.8"), |_| {
        response(
            "302 Found",
            &[("Location", "https://www.hailing.example/")],
            b"",
        )
    })
    .await;
    let facts = http_probe("127.51.1.8", fake.port(), false, &spec(3000))
        .await
        .unwrap();
    assert!(facts.redirects_to_https);
    assert_eq!(
        facts.redirect_stopped_at.as_deref(),
        Some("https://www.hailing.example/")
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn host_name_is_sent_and_redirects_to_it_are_followed() {
    let fake = HttpFake::start(ip("127.51.1.9"), |req| {
        let port = req
            .host
            .as_deref()
            .and_then(|h| h.rsplit_once(':'))
            .map(|(_, p)| p.to_owned());
        match req.path.as_str() {
            "/" => response(
                "302 Found",
                &[(
                    "Location",
                    &format!(
                        "http://portal.hailing.example:{}/index.html",
                        port.unwrap_or_default()
                    ),
                )],
                b"",
            ),
            "/index.html" => response(
                "200 OK",
                &[("Content-Type", "text/html")],
                "<title>海陵区政务服务门户</title>".as_bytes(),
            ),
            _ => response("404 Not Found", &[], b""),
        }
    })
    .await;
    let mut s = spec(3000);
    s.host = Some("portal.hailing.example".into());
    let facts = http_probe("127.51.1.9", fake.port(), false, &s)
        .await
        .unwrap();
    assert_eq!(facts.status, 200);
    assert_eq!(facts.title.as_deref(), Some("海陵区政务服务门户"));
    assert_eq!(
        facts.final_url,
        Some(format!(
            "http://portal.hailing.example:{}/index.html",
            fake.port()
        ))
    );
    let hosts: Vec<Option<String>> = fake.requests().iter().map(|r| r.host.clone()).collect();
    let expected = Some(format!("portal.hailing.example:{}", fake.port()));
    assert_eq!(hosts, [expected.clone(), expected]);
}

#[tokio::test]
async fn https_with_hsts() {
    let fake = HttpFake::start_tls(ip("127.51.1.10"), |_| {
        response(
            "200 OK",
            &[
                ("Content-Type", "text/html; charset=utf-8"),
                ("Strict-Transport-Security", "max-age=31536000"),
                ("Content-Security-Policy", "default-src 'self'"),
                ("X-Frame-Options", "SAMEORIGIN"),
            ],
            "<title>统一身份认证平台</title>".as_bytes(),
        )
    })
    .await;
    let facts = http_probe("127.51.1.10", fake.port(), true, &spec(3000))
        .await
        .unwrap();
    assert_eq!(facts.scheme, "https");
    assert!(facts.hsts);
    assert!(facts.csp);
    assert!(facts.x_frame_options);
    assert_eq!(facts.title.as_deref(), Some("统一身份认证平台"));
}

#[tokio::test]
async fn hsts_over_plain_http_does_not_count() {
    let fake = HttpFake::start(ip("127.51.1.11"), |_| {
        response(
            "200 OK",
            &[("Strict-Transport-Security", "max-age=31536000")],
            b"ok",
        )
    })
    .await;
    let facts = http_probe("127.51.1.11", fake.port(), false, &spec(3000))
        .await
        .unwrap();
    assert!(!facts.hsts);
}

#[tokio::test]
async fn admin_consoles_are_told_from_the_catch_all_page() {
    let index = b"<html><head><title>App</title></head><body><div id=app></div></body></html>";
    let fake = HttpFake::start(ip("127.51.1.12"), move |req| match req.path.as_str() {
        "/manager/html" => response(
            "401 Unauthorized",
            &[("WWW-Authenticate", "Basic realm=\"Tomcat Manager Application\"")],
            b"",
        ),
        "/actuator" => response(
            "200 OK",
            &[("Content-Type", "application/vnd.spring-boot.actuator.v3+json")],
            br#"{"_links":{"self":{"href":"http://127.51.1.12/actuator"},"health":{"href":"http://127.51.1.12/actuator/health"}}}"#,
        ),
        "/console/" => response("302 Found", &[("Location", "/console/login/LoginForm.jsp")], b""),
        "/admin/" => response("302 Found", &[("Location", "/login?from=/admin/")], b""),
        // A single-page app answers every other path with its index.
        _ => response("200 OK", &[("Content-Type", "text/html")], index),
    })
    .await;
    let mut s = spec(3000);
    s.admin_paths = http::DEFAULT_ADMIN_PATHS
        .iter()
        .map(|p| p.to_string())
        .collect();
    let facts = http_probe("127.51.1.12", fake.port(), false, &s)
        .await
        .unwrap();
    assert_eq!(
        facts.admin_paths,
        ["/manager/html", "/console/", "/actuator"]
    );
    let requests = fake.requests();
    assert!(requests.iter().all(|r| r.method == "GET"));
    // The page, one not-found check, and the 12 paths.
    assert_eq!(requests.len(), 1 + 1 + http::DEFAULT_ADMIN_PATHS.len());
}

#[tokio::test]
async fn a_site_that_answers_everything_has_no_admin_paths() {
    let fake = HttpFake::start(ip("127.51.1.13"), |req| {
        // A soft 404 that echoes the path.
        response(
            "200 OK",
            &[("Content-Type", "text/html")],
            format!("<title>页面不存在</title><p>{} not found</p>", req.path).as_bytes(),
        )
    })
    .await;
    let mut s = spec(3000);
    s.admin_paths = http::DEFAULT_ADMIN_PATHS
        .iter()
        .map(|p| p.to_string())
        .collect();
    let facts = http_probe("127.51.1.13", fake.port(), false, &s)
        .await
        .unwrap();
    assert_eq!(facts.admin_paths, Vec::<String>::new());
}

#[tokio::test]
async fn not_http_is_none() {
    let fake = fakes::greeting(
        ip("127.51.1.14"),
        b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n",
    )
    .await;
    assert_eq!(
        http_probe("127.51.1.14", fake.port(), false, &spec(3000)).await,
        None
    );
}

#[tokio::test]
async fn plain_port_probed_as_https_fails_as_protocol() {
    // As nginx answers a TLS ClientHello sent to its plain port.
    let fake = fakes::greeting(
        ip("127.51.1.15"),
        b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nConnection: close\r\n\r\n",
    )
    .await;
    let limits = Limits::new(0, 8);
    let err = http::probe(
        &target("127.51.1.15"),
        fake.port(),
        true,
        &spec(3000),
        &limits,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason, Reason::Protocol, "{err}");
}

// ---------------------------------------------------------------------------------------------
// Hostile web servers: each costs one bounded observation.

const MARGIN: Duration = Duration::from_millis(700);

#[tokio::test]
async fn endless_body_is_cut_at_max_body() {
    let fake = HttpFake::start(ip("127.51.2.1"), |_| {
        Reply::Endless(open_head("200 OK", &[("Content-Type", "text/html")]))
    })
    .await;
    let mut s = spec(3000);
    s.max_body = 256 * 1024;
    let started = Instant::now();
    let facts = http_probe("127.51.2.1", fake.port(), false, &s)
        .await
        .unwrap();
    assert!(
        started.elapsed() < s.timeout + MARGIN,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(facts.body_bytes, 256 * 1024);
    assert!(facts.body_truncated);
}

#[tokio::test]
async fn endless_redirects_stop_at_the_cap() {
    let fake = HttpFake::start(ip("127.51.2.2"), |req| {
        let n: u32 = req.path.trim_start_matches("/r/").parse().unwrap_or(0);
        response("302 Found", &[("Location", &format!("/r/{}", n + 1))], b"")
    })
    .await;
    let s = spec(3000);
    let facts = http_probe("127.51.2.2", fake.port(), false, &s)
        .await
        .unwrap();
    assert_eq!(facts.status, 302);
    assert_eq!(fake.requests().len(), 1 + s.max_redirects);
    assert_eq!(
        facts.final_url,
        Some(format!("http://127.51.2.2:{}/r/5", fake.port()))
    );
}

#[tokio::test]
async fn trickled_head_times_out_within_the_deadline() {
    let fake = HttpFake::start(ip("127.51.2.3"), |_| Reply::Trickle {
        now: Vec::new(),
        slowly: b"HTTP/1.1 200 OK\r\nServer: slowloris\r\nContent-Length: 10\r\n\r\n0123456789"
            .to_vec(),
        every: Duration::from_secs(1),
    })
    .await;
    let s = spec(1500);
    let limits = Limits::new(0, 8);
    let started = Instant::now();
    let err = http::probe(&target("127.51.2.3"), fake.port(), false, &s, &limits)
        .await
        .unwrap_err();
    assert_eq!(err.reason, Reason::Timeout);
    assert!(
        started.elapsed() < s.timeout + MARGIN,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn trickled_body_is_kept_as_far_as_it_came() {
    let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100000\r\n\r\n<title>Slow</title>".to_vec();
    let head_len = bytes.len();
    bytes.extend(std::iter::repeat_n(b'.', 1000));
    let fake = HttpFake::start(ip("127.51.2.4"), move |_| {
        // The head and title at once, then a byte a second.
        let mut now = bytes.clone();
        let slowly = now.split_off(head_len);
        Reply::Trickle {
            now,
            slowly,
            every: Duration::from_secs(1),
        }
    })
    .await;
    let s = spec(1500);
    let started = Instant::now();
    let facts = http_probe("127.51.2.4", fake.port(), false, &s)
        .await
        .unwrap();
    assert!(
        started.elapsed() < s.timeout + MARGIN,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(facts.title.as_deref(), Some("Slow"));
    assert!(facts.body_truncated);
}

#[tokio::test]
async fn gzip_bomb_stays_bounded() {
    let fake = HttpFake::start(ip("127.51.2.5"), |_| {
        Reply::GzipBomb(open_head(
            "200 OK",
            &[("Content-Type", "text/html"), ("Content-Encoding", "gzip")],
        ))
    })
    .await;
    let s = spec(5000);
    let started = Instant::now();
    let facts = http_probe("127.51.2.5", fake.port(), false, &s)
        .await
        .unwrap();
    assert!(
        started.elapsed() < s.timeout + MARGIN,
        "{:?}",
        started.elapsed()
    );
    // At most max_body decompressed bytes kept, from at most max_body compressed ones.
    assert_eq!(facts.body_bytes, s.max_body);
    assert!(facts.body_truncated);
    // The server got to send far less than its gigabyte (about 1 MiB compressed).
    assert!(fake.body_written() < 8 << 20, "{}", fake.body_written());
}

#[tokio::test]
async fn probe_asks_for_gzip_and_deflate_only() {
    let fake = HttpFake::start(ip("127.51.2.6"), |_| response("200 OK", &[], b"ok")).await;
    http_probe("127.51.2.6", fake.port(), false, &spec(3000))
        .await
        .unwrap();
    assert_eq!(
        fake.requests()[0].accept_encoding.as_deref(),
        Some("gzip, deflate")
    );
}
