//! TLCP (GB/T 38636) and SM2 certificates against a real TLCP server: Tongsuo 8.5's
//! `s_server -enable_ntls`, with an SM2 root, signing and encryption certificates that Tongsuo
//! makes in each test's temp dir. Canned responders remain only where Tongsuo cannot play the
//! part: a server with swapped certificate roles (s_server refuses to load them), GmSSL's
//! silent close on extensions, and a gateway taking SM suites in a TLS 1.2 hello. Addresses:
//! 127.113.N.x.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use indicatif::ProgressBar;
use netpatrol::config::{NetworkKind, Segment};
use netpatrol::finding;
use netpatrol::pass::scan_and_record;
use netpatrol::probe::tls::{self, TlsFacts, TlsSpec, TlsVersion, Trust, wire};
use netpatrol::reconcile::History;
use netpatrol::rules::RuleSet;
use netpatrol::scan::{self, ScanRequest};
use netpatrol::scope::{Limits, Scope};
use netpatrol::store::Store;
use tokio_util::sync::CancellationToken;

use crate::support::config;
use crate::support::tls::{Server, legacy_responder};
use crate::support::tongsuo::{SmPki, TongsuoServer};

const ALL_TLCP: [&str; 4] = [
    "ECC_SM4_CBC_SM3",
    "ECC_SM4_GCM_SM3",
    "ECDHE_SM4_CBC_SM3",
    "ECDHE_SM4_GCM_SM3",
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spec(trust: Trust, names: &[&str]) -> TlsSpec {
    TlsSpec {
        timeout: Duration::from_millis(2000),
        sni: names.first().map(|s| s.to_string()),
        names: names.iter().map(|s| s.to_string()).collect(),
        trust: Arc::new(trust),
        now: Utc::now(),
    }
}

async fn posture(server: SocketAddr, spec: &TlsSpec) -> TlsFacts {
    let segment = Segment {
        name: "lab".into(),
        network: NetworkKind::Other,
        cidrs: vec!["127.113.0.0/16".parse().unwrap()],
        exclude: vec![],
        department: None,
        consolidate_by: None,
    };
    let target = Scope::new(&[segment]).target(server.ip()).unwrap();
    tls::probe(&target, server.port(), spec, &Limits::new(0, 64))
        .await
        .expect("probe answers")
        .expect("speaks TLS or TLCP")
}

/// A config scanning only `addr`'s port on its address, trusting `ca_files`.
fn one_port_config(
    dir: &std::path::Path,
    addr: SocketAddr,
    ca_files: &[&std::path::Path],
) -> netpatrol::config::Config {
    let ca: Vec<String> = ca_files
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    config(
        dir,
        &format!(
            "scan: {{icmp: false, ports: [{port}], rate: 0, dns: {{enabled: false}}}}\n\
             trust: {{ca_files: [{ca}]}}\n\
             segments:\n  - {{name: s, network: other, cidrs: [{ip}/32]}}\n",
            port = addr.port(),
            ip = addr.ip(),
            ca = ca.join(", "),
        ),
    )
}

/// The rules that fire on one TLS port after a real scan with `trust.ca_files`.
async fn findings_of_scan(addr: SocketAddr, ca_files: &[&std::path::Path]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = one_port_config(dir.path(), addr, ca_files);
    let rules = RuleSet::load(&config).expect("built-in rules load");
    let obs = scan::run(
        &config,
        &ScanRequest::all(),
        Limits::new(0, 64),
        ProgressBar::hidden(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let today = Utc::now().date_naive();
    let a = finding::assess(&config, &rules, &obs, &History::default(), &[], today);
    a.current.iter().map(|f| f.rule.clone()).collect()
}

/// A whole scan recorded in a store: the rules that fired, the report's JSON, and the stored
/// observation of the one service.
async fn recorded_scan(
    addr: SocketAddr,
    ca_files: &[&std::path::Path],
) -> (Vec<String>, serde_json::Value, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let config = one_port_config(dir.path(), addr, ca_files);
    let rules = RuleSet::load(&config).expect("built-in rules load");
    let store = Store::open(&config.store.path).await.unwrap();
    let (obs, report) = scan_and_record(
        &config,
        &rules,
        &store,
        &ScanRequest::all(),
        Limits::new(0, 64),
        ProgressBar::hidden(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let rows = store.tls_observations(&obs.run.id).await.unwrap();
    assert_eq!(rows.len(), 1);
    let stored: serde_json::Value = serde_json::from_str(&rows[0].data).unwrap();
    store.close().await;
    let fired = report.findings.iter().map(|f| f.rule.clone()).collect();
    (fired, serde_json::to_value(&report).unwrap(), stored)
}

#[tokio::test]
async fn tongsuo_tlcp_server_with_its_sm2_root_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = SmPki::new(dir.path());
    let server = TongsuoServer::start(ip("127.113.1.1"), &pki, &[]).await;
    let trust = Trust::from_pem_files(std::slice::from_ref(&pki.root)).unwrap();
    assert_eq!(trust.extra, 1, "the SM2 root is a trust anchor");
    let f = posture(server.addr, &spec(trust, &["gm.lab.test"])).await;

    assert!(f.tlcp);
    // Every TLCP suite Tongsuo enables, both key exchanges.
    let tlcp = &f.accepted_suites[&TlsVersion::Tlcp];
    let mut sorted = tlcp.clone();
    sorted.sort();
    assert_eq!(sorted, ALL_TLCP, "{tlcp:?}");
    assert_eq!(f.tlcp_key_exchange, ["ECC", "ECDHE"]);
    assert_eq!(f.sm_hellos.first().map(String::as_str), Some("tlcp"));

    // Both certificates: SM2 keys, SM3withSM2 signatures verified up to the SM2 root.
    assert_eq!(f.tlcp_certs.len(), 2, "{:?}", f.tlcp_certs);
    let (sign, enc) = (&f.tlcp_certs[0], &f.tlcp_certs[1]);
    assert_eq!(sign.subject, "CN=gm.lab.test sign");
    assert_eq!(enc.subject, "CN=gm.lab.test enc");
    for c in [sign, enc] {
        assert_eq!(c.key, "SM2");
        assert_eq!(c.signature, "SM3withSM2");
        assert_eq!(c.issuer, "CN=Lab SM2 Root");
        assert!(c.trusted, "{} not trusted with its SM2 root", c.subject);
        assert_eq!(c.hostname_match, Some(true));
        assert!(c.days_left >= 363, "{}", c.days_left);
    }
    assert!(
        sign.key_usage
            .as_ref()
            .unwrap()
            .contains(&"digitalSignature".to_string())
    );
    assert!(
        enc.key_usage
            .as_ref()
            .unwrap()
            .contains(&"keyEncipherment".to_string())
    );
    assert!(
        f.tlcp_cert_problems.is_empty(),
        "{:?}",
        f.tlcp_cert_problems
    );
    assert!(f.incomplete.is_empty(), "{:?}", f.incomplete);

    // The exchanges that produced this are kept for `netpatrol probe`.
    let tlcp_hellos: Vec<_> = f.exchanges.iter().filter(|e| e.step == "TLCP").collect();
    assert!(tlcp_hellos.len() >= 4, "{:?}", f.exchanges);
    assert!(tlcp_hellos.iter().all(|e| e.sent.client_version == "TLCP"));
    assert!(
        tlcp_hellos[0].answer.starts_with("ServerHello TLCP "),
        "{}",
        tlcp_hellos[0].answer
    );

    // In the JSON: the per-version map under the contract names.
    let json = serde_json::to_value(&f).unwrap();
    assert_eq!(json["accepted_suites"]["TLCP"].as_array().unwrap().len(), 4);
    assert!(json.get("exchanges").is_none());

    // Through a whole recorded scan: the report's JSON and the store hold every suite.
    let (fired, report, stored) = recorded_scan(server.addr, &[&pki.root]).await;
    let svc = &report["hosts"][0]["services"][0];
    assert_eq!(
        svc["tls"]["accepted_suites"]["TLCP"]
            .as_array()
            .unwrap()
            .len(),
        4,
        "{svc}"
    );
    assert_eq!(
        stored["tls"]["accepted_suites"]["TLCP"],
        svc["tls"]["accepted_suites"]["TLCP"]
    );
    assert_eq!(stored["tls"]["tlcp_certs"][0]["trusted"], true);
    // No trust or usage finding from the built-in rules.
    for rule in [
        "tls.cert_untrusted",
        "tls.tlcp_cert_usage",
        "tls.tlcp_cert_untrusted",
        "tls.cert_self_signed",
    ] {
        assert!(!fired.contains(&rule.to_string()), "{rule} in {fired:?}");
    }
}

#[tokio::test]
async fn tongsuo_sm2_chain_untrusted_without_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let pki = SmPki::new(dir.path());
    let server = TongsuoServer::start(ip("127.113.2.1"), &pki, &[]).await;
    // A different SM2 root (made the same way) is no anchor for this chain.
    let other_dir = tempfile::tempdir().unwrap();
    let other = SmPki::new(other_dir.path());
    let trust = Trust::from_pem_files(std::slice::from_ref(&other.root)).unwrap();
    let f = posture(server.addr, &spec(trust, &[])).await;
    assert!(f.tlcp);
    assert_eq!(f.tlcp_certs.len(), 2);
    for c in &f.tlcp_certs {
        assert!(!c.trusted, "{} trusted by a foreign root", c.subject);
        // No name of the host is known and the certificate names no address: unknown.
        assert_eq!(c.hostname_match, None);
    }
    let json = serde_json::to_value(&f).unwrap();
    assert!(json["cert"]["hostname_match"].is_null(), "{}", json["cert"]);

    let fired = findings_of_scan(server.addr, &[&other.root]).await;
    assert!(
        fired.contains(&"tls.cert_untrusted".to_string()),
        "{fired:?}"
    );
    // The TLCP pair itself, judged on its own (the TLS certificate is another one).
    assert!(
        fired.contains(&"tls.tlcp_cert_untrusted".to_string()),
        "{fired:?}"
    );
    // Unknown is not false: no mismatch finding without a name to judge.
    assert!(
        !fired.contains(&"tls.cert_hostname_mismatch".to_string()),
        "{fired:?}"
    );
}

#[tokio::test]
async fn tongsuo_certificates_with_swapped_roles() {
    // s_server refuses to load an encryption certificate as the signing one, so a canned
    // responder replays the real Tongsuo-made certificates in swapped order: encryption
    // certificate first (where the signing certificate belongs), then the signing one.
    let dir = tempfile::tempdir().unwrap();
    let pki = SmPki::new(dir.path());
    let certs = vec![SmPki::der(&pki.enc_cert), SmPki::der(&pki.sign_cert)];
    let server = Server::canned(
        ip("127.113.3.1"),
        legacy_responder(&[0x0101], &[0xe053, 0xe013], certs),
    )
    .await;
    let trust = Trust::from_pem_files(std::slice::from_ref(&pki.root)).unwrap();
    let f = posture(server.addr, &spec(trust, &["gm.lab.test"])).await;
    assert!(f.tlcp);
    assert!(f.tlcp_certs.iter().all(|c| c.trusted));
    assert_eq!(
        f.tlcp_cert_problems,
        [
            "signing_certificate_cannot_sign",
            "encryption_certificate_cannot_encrypt",
            "swapped"
        ]
    );
    let fired = findings_of_scan(server.addr, &[&pki.root]).await;
    assert!(
        fired.contains(&"tls.tlcp_cert_usage".to_string()),
        "{fired:?}"
    );
    assert!(
        !fired.contains(&"tls.cert_untrusted".to_string()),
        "{fired:?}"
    );
    assert!(
        !fired.contains(&"tls.tlcp_cert_untrusted".to_string()),
        "{fired:?}"
    );

    // Only one certificate sent: the encryption certificate is missing.
    let certs = vec![SmPki::der(&pki.sign_cert)];
    let server = Server::canned(
        ip("127.113.3.2"),
        legacy_responder(&[0x0101], &[0xe013], certs),
    )
    .await;
    let f = posture(server.addr, &spec(Trust::default(), &[])).await;
    assert_eq!(f.tlcp_cert_problems, ["encryption_certificate_missing"]);
}

#[tokio::test]
async fn gmssl_like_silent_close_on_extensions() {
    // GmSSL's TLCP server closes without an alert when the ClientHello carries an extension
    // it does not know (GmSSL issue 1914): this responder does the same, and answers a TLCP
    // hello without extensions. TLS hellos get the same silence.
    let dir = tempfile::tempdir().unwrap();
    let pki = SmPki::new(dir.path());
    let certs = vec![SmPki::der(&pki.sign_cert), SmPki::der(&pki.enc_cert)];
    let inner = legacy_responder(&[0x0101], &[0xe011, 0xe013], certs);
    let server = Server::canned(ip("127.113.4.1"), move |hello| {
        if hello.client_version == 0x0101 && hello.extensions.is_empty() {
            inner(hello)
        } else {
            Vec::new()
        }
    })
    .await;
    let f = posture(server.addr, &spec(Trust::default(), &["gm.lab.test"])).await;
    assert!(f.tlcp);
    assert_eq!(
        f.accepted_suites[&TlsVersion::Tlcp],
        ["ECDHE_SM4_CBC_SM3", "ECC_SM4_CBC_SM3"]
    );
    assert_eq!(f.sm_hellos, ["tlcp_without_extensions"]);
    assert_eq!(f.tlcp_key_exchange, ["ECC", "ECDHE"]);
    let tlcp: Vec<_> = f.exchanges.iter().filter(|e| e.step == "TLCP").collect();
    assert!(!tlcp[0].sent.extensions.is_empty(), "{:?}", tlcp[0]);
    assert!(tlcp[0].answer.contains("closed"), "{}", tlcp[0].answer);
    assert!(tlcp[1].sent.extensions.is_empty(), "{:?}", tlcp[1]);
    assert_eq!(f.tlcp_certs.len(), 2);
}

#[tokio::test]
async fn sm_suites_inside_a_tls12_hello() {
    // Some gateways take an SM suite offered in a TLS 1.2 ClientHello (browsers offer 0xE013
    // with version 0x0303 before falling back to 0x0101) and answer at 0x0303.
    let server = Server::canned(ip("127.113.5.1"), |hello| {
        if hello.client_version != 0x0303 {
            return wire::alert_record(0x0303, 70);
        }
        let Some(&suite) = [0xe013u16, 0xc02f]
            .iter()
            .find(|s| hello.suites.contains(s))
        else {
            return wire::alert_record(0x0303, 40);
        };
        let mut out = wire::server_hello_record(0x0303, 0x0303, suite, None);
        out.extend(wire::server_hello_done_record(0x0303));
        out
    })
    .await;
    let f = posture(server.addr, &spec(Trust::default(), &[])).await;
    assert_eq!(f.versions, [TlsVersion::Tls12]);
    assert!(!f.tlcp);
    assert_eq!(
        f.accepted_suites[&TlsVersion::Tls12],
        ["ECC_SM4_CBC_SM3", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
    );
    assert_eq!(f.sm_suites, ["ECC_SM4_CBC_SM3"]);
    assert_eq!(f.sm_hellos, ["tls12"]);
}

#[tokio::test]
async fn every_accepted_suite_in_the_servers_order() {
    // Debian's OpenSSL with three TLS 1.2 suites in server preference: all three, in that
    // order, and nothing else.
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) =
        crate::support::tls::openssl_cert(dir.path(), "order", 2048, "sha256", "order.lab.test");
    let server = crate::support::tls::OpensslServer::start(
        ip("127.113.6.1"),
        &crt,
        &key,
        &[
            "-tls1_2",
            "-serverpref",
            "-cipher",
            "AES256-SHA:ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384",
        ],
    )
    .await;
    let f = posture(server.addr, &spec(Trust::default(), &[])).await;
    assert_eq!(f.versions, [TlsVersion::Tls12]);
    assert_eq!(
        f.accepted_suites[&TlsVersion::Tls12],
        [
            "TLS_RSA_WITH_AES_256_CBC_SHA",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384"
        ]
    );
    assert_eq!(
        f.preferred_suites[&TlsVersion::Tls12],
        "TLS_RSA_WITH_AES_256_CBC_SHA"
    );
    assert!(f.cipher_classes[&TlsVersion::Tls12].is_empty());
}

#[tokio::test]
async fn probe_command_shows_facts_and_exchanges() {
    let dir = tempfile::tempdir().unwrap();
    let pki = SmPki::new(dir.path());
    let server = TongsuoServer::start(ip("127.113.7.1"), &pki, &[]).await;
    let bin = env!("CARGO_BIN_EXE_netpatrol");
    let probe = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin)
                .args(&args)
                .output()
                .expect("netpatrol runs")
        })
    };

    // Loopback without a config; the SM2 root through a config's trust.ca_files.
    let yaml = format!(
        "segments:\n  - {{name: s, network: other, cidrs: [127.113.7.0/30]}}\n\
         trust: {{ca_files: [\"{}\"]}}\n",
        pki.root.display()
    );
    std::fs::write(dir.path().join("netpatrol.yaml"), yaml).unwrap();
    let config = dir.path().join("netpatrol.yaml").display().to_string();
    let addr = server.addr.to_string();
    let out = probe(vec![
        "probe".into(),
        "tls".into(),
        addr.clone(),
        "-c".into(),
        config.clone(),
        "--name".into(),
        "gm.lab.test".into(),
        "--format".into(),
        "json".into(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["facts"]["tlcp"], true);
    assert_eq!(json["facts"]["tlcp_certs"][1]["trusted"], true);
    assert_eq!(
        json["facts"]["accepted_suites"]["TLCP"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let exchanges = json["exchanges"].as_array().unwrap();
    assert!(
        exchanges
            .iter()
            .any(|e| e["step"] == "TLCP" && e["sent"]["client_version"] == "TLCP"),
        "{exchanges:?}"
    );

    // Readable text, in English on request.
    let out = probe(vec![
        "probe".into(),
        "tls".into(),
        addr.clone(),
        "--format".into(),
        "table".into(),
        "--lang".into(),
        "en".into(),
    ])
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("Exchanges:"), "{text}");
    assert!(text.contains("[TLCP] hello TLCP (record 0x0101)"), "{text}");

    // A closed port: the probe failed, exit 1.
    let closed = {
        let l = std::net::TcpListener::bind("127.113.7.2:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = probe(vec!["probe".into(), "tls".into(), closed.to_string()])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // Outside the config's segments, and a non-loopback address without one: refused (64).
    let out = probe(vec![
        "probe".into(),
        "tls".into(),
        "127.113.8.1:443".into(),
        "-c".into(),
        config,
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no segment declared"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = probe(vec![
        "probe".into(),
        "service".into(),
        "192.0.2.1:22".into(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

#[test]
fn tlcp_cert_usage_rule_judges_only_tlcp_services() {
    use netpatrol::facts::{Facts, Subject};
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "segments:\n  - {name: s, network: other, cidrs: [192.0.2.0/24]}\n",
    );
    let set = RuleSet::load(&config).unwrap();
    let rule = set
        .get("tls.tlcp_cert_usage")
        .expect("in the built-in pack");
    assert_eq!(rule.severity, netpatrol::rules::Severity::Medium);
    assert!(
        rule.basis.iter().any(|b| b.contains("GB/T 38636")),
        "{:?}",
        rule.basis
    );
    let fired = |problems: Option<&[&str]>| {
        let mut f = Facts::new();
        f.set("host.ip", "192.0.2.10");
        f.set("service.port", 443i64);
        f.set("tls.enabled", true);
        if let Some(p) = problems {
            f.set("tls.tlcp", true);
            f.set(
                "tls.tlcp_cert_problems",
                p.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            );
        }
        set.evaluate(Subject::Service, &f)
            .into_iter()
            .filter(|h| h.rule.id == "tls.tlcp_cert_usage")
            .map(|h| h.evidence.en.clone())
            .collect::<Vec<_>>()
    };
    let hits = fired(Some(&["swapped"]));
    assert_eq!(hits.len(), 1);
    assert!(hits[0].contains("swapped"), "{}", hits[0]);
    assert!(fired(Some(&[])).is_empty());
    // Not TLCP: the fact is unknown, and unknown is not a finding.
    assert!(fired(None).is_empty());
}
