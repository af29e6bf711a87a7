//! TLS/TLCP posture probe against real loopback servers: rustls (tokio-rustls, rcgen
//! certificates), `openssl s_server` (Debian's OpenSSL: TLS 1.0/1.1, NULL and anonymous
//! suites, RSA-1024/SHA-1), canned-handshake responders for what no server packaged for this
//! machine speaks (3DES, RC4 and EXPORT suites; TLCP, for which no server is packaged at all),
//! hostile peers and non-TLS services. Each test uses its own 127.0.N.x addresses so the
//! tests can run in parallel.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use netpatrol::config::{NetworkKind, Segment, TrustSettings};
use netpatrol::probe::tls::{self, TlsFacts, TlsSpec, TlsVersion, Trust, wire};
use netpatrol::scope::{Limits, Scope, Target};

use crate::support::tls::{
    OpensslServer, Pki, Server, legacy_responder, openssl_cert, self_signed,
};

fn target(ip: IpAddr) -> Target {
    let segment = Segment {
        name: "lab".into(),
        network: NetworkKind::Other,
        cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        exclude: vec![],
        department: None,
        consolidate_by: None,
    };
    Scope::new(&[segment])
        .target(ip)
        .expect("loopback is in scope")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spec(trust: Trust, names: &[&str], timeout_ms: u64) -> TlsSpec {
    TlsSpec {
        timeout: Duration::from_millis(timeout_ms),
        sni: names.first().map(|s| s.to_string()),
        names: names.iter().map(|s| s.to_string()).collect(),
        trust: Arc::new(trust),
        now: Utc::now(),
    }
}

async fn posture(server: std::net::SocketAddr, spec: &TlsSpec) -> TlsFacts {
    let limits = Limits::new(0, 256);
    tls::probe(&target(server.ip()), server.port(), spec, &limits)
        .await
        .expect("probe answers")
        .expect("speaks TLS")
}

fn versions(f: &TlsFacts) -> Vec<&str> {
    f.versions.iter().map(|v| v.as_str()).collect()
}

#[tokio::test]
async fn modern_rustls_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Lab Root CA");
    let leaf = pki.leaf(&["www.lab.test"], (2024, 1, 1), (2099, 1, 1));
    let server = Server::rustls(
        ip("127.0.10.1"),
        &leaf,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
    .await;

    // Untrusted: only the system roots.
    let started = Instant::now();
    let f = posture(
        server.addr,
        &spec(
            Trust::load(&TrustSettings::default()).unwrap(),
            &["www.lab.test"],
            1500,
        ),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(versions(&f), ["TLSv1.2", "TLSv1.3"]);
    assert!(f.weak_ciphers.is_empty(), "{:?}", f.weak_ciphers);
    assert_eq!(f.cipher_classes[&TlsVersion::Tls12], Vec::<String>::new());
    assert!(!f.tlcp);
    assert!(f.incomplete.is_empty(), "{:?}", f.incomplete);
    let cert = f.cert.as_ref().expect("certificate facts");
    assert_eq!(cert.subject, "CN=www.lab.test");
    assert!(cert.issuer.contains("CN=Lab Root CA"), "{}", cert.issuer);
    assert_eq!(cert.sans, ["www.lab.test"]);
    assert!(!cert.self_signed);
    assert!(!cert.trusted);
    assert_eq!(cert.hostname_match, Some(true));
    assert_eq!(cert.key, "EC-P256");
    assert_eq!(cert.key_bits, 256);
    assert_eq!(cert.signature, "ecdsa-with-SHA256");
    assert_eq!(cert.not_after, "2099-01-01T00:00:00Z");
    assert!(cert.days_left > 20_000);
    assert_eq!(cert.chain_len, 2);
    assert!(took < Duration::from_secs(2), "one endpoint took {took:?}");

    // Trusted once the CA is in trust.ca_files; a name it does not cover does not match.
    let ca = pki.write_ca(dir.path(), "ca.pem");
    let trust = Trust::load(&TrustSettings { ca_files: vec![ca] }).unwrap();
    assert!(trust.extra == 1);
    let mut s = spec(trust, &["other.lab.test"], 1500);
    s.sni = None;
    let f = posture(server.addr, &s).await;
    let cert = f.cert.unwrap();
    assert!(cert.trusted);
    assert_eq!(cert.hostname_match, Some(false));

    // The contract's JSON fields are all there.
    let json = serde_json::to_value(posture(server.addr, &spec(Trust::default(), &[], 1500)).await)
        .unwrap();
    for key in ["versions", "tlcp", "weak_ciphers", "cert"] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }
    for key in [
        "subject",
        "issuer",
        "not_before",
        "not_after",
        "days_left",
        "self_signed",
        "trusted",
        "hostname_match",
        "key",
        "signature",
    ] {
        assert!(json["cert"].get(key).is_some(), "cert.{key} missing");
    }
}

#[tokio::test]
async fn tls13_only_endpoint() {
    let pki = Pki::new("Lab Root CA");
    let leaf = pki.leaf(&["only13.lab.test"], (2024, 1, 1), (2099, 1, 1));
    let server = Server::rustls(ip("127.0.11.1"), &leaf, &[&rustls::version::TLS13]).await;
    let f = posture(
        server.addr,
        &spec(Trust::default(), &["only13.lab.test"], 1500),
    )
    .await;
    assert_eq!(versions(&f), ["TLSv1.3"]);
    assert!(f.cipher_classes.is_empty());
    // TLS 1.3 sends its certificate encrypted: this came through rustls.
    assert_eq!(f.cert.unwrap().subject, "CN=only13.lab.test");
}

#[tokio::test]
async fn expired_self_signed_certificate() {
    let leaf = self_signed(&["old.lab.test"], (2020, 1, 1), (2021, 1, 1));
    let server = Server::rustls(ip("127.0.12.1"), &leaf, &[&rustls::version::TLS12]).await;
    let f = posture(
        server.addr,
        &spec(Trust::default(), &["old.lab.test"], 1500),
    )
    .await;
    assert_eq!(versions(&f), ["TLSv1.2"]);
    let cert = f.cert.unwrap();
    assert!(cert.days_left < -365 * 4, "{}", cert.days_left);
    assert!(cert.self_signed);
    assert!(!cert.trusted);
    assert_eq!(cert.hostname_match, Some(true));
    assert_eq!(cert.not_before, "2020-01-01T00:00:00Z");
}

#[tokio::test]
async fn openssl_tls10_only_with_rsa1024_sha1() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = openssl_cert(dir.path(), "legacy", 1024, "sha1", "legacy.lab.test");
    let server = OpensslServer::start(
        ip("127.0.13.1"),
        &crt,
        &key,
        &["-tls1", "-cipher", "ALL:@SECLEVEL=0"],
    )
    .await;
    let f = posture(
        server.addr,
        &spec(Trust::default(), &["legacy.lab.test"], 1500),
    )
    .await;
    assert_eq!(versions(&f), ["TLSv1.0"]);
    assert!(
        f.cipher_classes[&TlsVersion::Tls10].contains(&"cbc_only".to_string()),
        "{:?}",
        f.cipher_classes
    );
    let cert = f.cert.unwrap();
    assert_eq!(cert.key, "RSA-1024");
    assert_eq!(cert.key_bits, 1024);
    assert_eq!(cert.signature, "sha1WithRSAEncryption");
    assert!(cert.self_signed);
    assert_eq!(
        cert.hostname_match,
        Some(true),
        "CN is used when there is no SAN"
    );
}

#[tokio::test]
async fn openssl_tls11_only() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = openssl_cert(dir.path(), "t11", 2048, "sha256", "t11.lab.test");
    let server = OpensslServer::start(
        ip("127.0.14.1"),
        &crt,
        &key,
        &["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"],
    )
    .await;
    let f = posture(server.addr, &spec(Trust::default(), &[], 1500)).await;
    assert_eq!(versions(&f), ["TLSv1.1"]);
    let cert = f.cert.unwrap();
    assert_eq!(cert.key, "RSA-2048");
    assert_eq!(cert.signature, "sha256WithRSAEncryption");
}

#[tokio::test]
async fn openssl_null_and_anonymous_suites() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = openssl_cert(dir.path(), "nulls", 2048, "sha256", "nulls.lab.test");
    let server = OpensslServer::start(
        ip("127.0.15.1"),
        &crt,
        &key,
        &["-cipher", "ALL:eNULL:@SECLEVEL=0"],
    )
    .await;
    let started = Instant::now();
    let f = posture(server.addr, &spec(Trust::default(), &[], 1500)).await;
    let took = started.elapsed();
    assert!(versions(&f).contains(&"TLSv1.2"), "{:?}", f.versions);
    let classes = &f.cipher_classes[&TlsVersion::Tls12];
    assert!(classes.contains(&"null".to_string()), "{classes:?}");
    assert!(classes.contains(&"anon".to_string()), "{classes:?}");
    assert!(
        f.weak_ciphers.iter().any(|s| s.contains("_NULL_")),
        "{:?}",
        f.weak_ciphers
    );
    assert!(
        f.weak_ciphers.iter().any(|s| s.contains("anon")),
        "{:?}",
        f.weak_ciphers
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn canned_3des_rc4_export_server() {
    // Debian's OpenSSL has no 3DES, RC4 or EXPORT suites: a responder replays hand-built
    // ServerHellos choosing them, as an old server would.
    let pki = Pki::new("Lab Root CA");
    let leaf = pki.leaf(&["old.lab.test"], (2024, 1, 1), (2099, 1, 1));
    let certs = vec![leaf.chain[0].to_vec()];
    let server = Server::canned(
        ip("127.0.16.1"),
        legacy_responder(&[0x0301, 0x0303], &[0x000a, 0x0005, 0x0003, 0x002f], certs),
    )
    .await;
    let f = posture(
        server.addr,
        &spec(Trust::default(), &["old.lab.test"], 1500),
    )
    .await;
    assert_eq!(versions(&f), ["TLSv1.0", "TLSv1.2"]);
    for suite in [
        "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
        "TLS_RSA_WITH_RC4_128_SHA",
        "TLS_RSA_EXPORT_WITH_RC4_40_MD5",
    ] {
        assert!(
            f.weak_ciphers.iter().any(|s| s == suite),
            "{suite} in {:?}",
            f.weak_ciphers
        );
    }
    for v in [TlsVersion::Tls10, TlsVersion::Tls12] {
        assert_eq!(
            f.cipher_classes[&v],
            ["export", "rc4", "3des", "cbc_only", "no_forward_secrecy"],
            "{v}"
        );
    }
    let cert = f
        .cert
        .expect("certificate from the plaintext Certificate message");
    assert_eq!(cert.subject, "CN=old.lab.test");
    assert_eq!(cert.hostname_match, Some(true));
}

#[tokio::test]
async fn canned_tlcp_server() {
    // No TLCP server is packaged for this machine: a responder replays a hand-built TLCP
    // (0x0101) ServerHello and a Certificate message with a signing and an encryption
    // certificate (ECDSA stand-ins: rcgen cannot make SM2 certificates).
    let pki = Pki::new("Lab SM2 CA");
    let sign = pki.leaf(&["gm.lab.test"], (2024, 1, 1), (2099, 1, 1));
    let enc = pki.leaf(&["gm-enc.lab.test"], (2024, 1, 1), (2099, 1, 1));
    let certs = vec![
        sign.chain[0].to_vec(),
        enc.chain[0].to_vec(),
        sign.chain[1].to_vec(),
    ];
    let server = Server::canned(
        ip("127.0.17.1"),
        legacy_responder(&[0x0101], &[0xe053, 0xe013], certs),
    )
    .await;
    let f = posture(server.addr, &spec(Trust::default(), &["gm.lab.test"], 1500)).await;
    assert!(f.tlcp);
    assert!(f.versions.is_empty(), "{:?}", f.versions);
    assert_eq!(f.sm_suites, ["ECC_SM4_GCM_SM3", "ECC_SM4_CBC_SM3"]);
    assert_eq!(f.tlcp_certs.len(), 2);
    assert_eq!(f.tlcp_certs[0].subject, "CN=gm.lab.test");
    assert_eq!(f.tlcp_certs[1].subject, "CN=gm-enc.lab.test");
    assert_eq!(f.cert.unwrap().subject, "CN=gm.lab.test");
}

#[tokio::test]
async fn tlcp_server_that_hangs_up_on_tls() {
    let pki = Pki::new("Lab SM2 CA");
    let sign = pki.leaf(&["gm.lab.test"], (2024, 1, 1), (2099, 1, 1));
    let certs = vec![sign.chain[0].to_vec(), sign.chain[0].to_vec()];
    let inner = legacy_responder(&[0x0101], &[0xe011], certs);
    let server = Server::canned(ip("127.0.18.1"), move |hello| {
        if hello.client_version == 0x0101 {
            inner(hello)
        } else {
            Vec::new()
        }
    })
    .await;
    let f = posture(server.addr, &spec(Trust::default(), &[], 1500)).await;
    assert!(f.tlcp);
    assert_eq!(f.sm_suites, ["ECDHE_SM4_CBC_SM3"]);
}

#[tokio::test]
async fn canned_tls13_sm_suites_and_retry_request() {
    // RFC 8998: TLS 1.3 with TLS_SM4_GCM_SM3; the server answers with a HelloRetryRequest
    // (it wants a curveSM2 key share), which counts as TLS 1.3 support.
    let server = Server::canned(ip("127.0.19.1"), |hello| {
        if !hello.supported_versions.contains(&0x0304) {
            return wire::alert_record(0x0303, 70);
        }
        let Some(&suite) = [0x00c6u16].iter().find(|s| hello.suites.contains(s)) else {
            return wire::alert_record(0x0303, 40);
        };
        let mut r = wire::server_hello_record(0x0303, 0x0303, suite, Some(0x0304));
        // Turn it into a HelloRetryRequest: its random is the fixed HRR value.
        r[11..43].copy_from_slice(&wire::HRR_RANDOM);
        r
    })
    .await;
    let f = posture(server.addr, &spec(Trust::default(), &[], 1500)).await;
    assert_eq!(versions(&f), ["TLSv1.3"]);
    assert_eq!(f.sm_suites, ["TLS_SM4_GCM_SM3"]);
    assert!(!f.tlcp);
}

#[tokio::test]
async fn hostile_servers_cost_one_observation() {
    let limits = Limits::new(0, 64);
    let s = spec(Trust::default(), &[], 500);
    let garbage = Server::greeting(
        ip("127.0.20.1"),
        &[0x16, 0x03, 0x03, 0xff, 0xff, 1, 2, 3, 4],
    )
    .await;
    let noise = Server::greeting(ip("127.0.20.2"), &[0xff; 4096]).await;
    // A record that announces 1000 bytes, sends 10 and closes.
    let truncated = Server::answer(
        ip("127.0.20.3"),
        &[0x16, 0x03, 0x03, 0x03, 0xe8, 2, 0, 0, 70, 3, 3, 0, 0, 0, 0],
    )
    .await;
    let huge = Server::huge_certificate(ip("127.0.20.4")).await;
    let stall = Server::stall(ip("127.0.20.5")).await;
    for (name, server) in [
        ("garbage", &garbage),
        ("noise", &noise),
        ("truncated", &truncated),
        ("huge certificate", &huge),
        ("stall", &stall),
    ] {
        let started = Instant::now();
        let result = tls::probe(&target(server.addr.ip()), server.addr.port(), &s, &limits).await;
        let took = started.elapsed();
        // The whole probe is bounded by BUDGET_FACTOR × timeout, plus scheduling slack.
        assert!(
            took < Duration::from_millis(500 * 4 + 1000),
            "{name} took {took:?}"
        );
        match (name, &result) {
            ("stall", Err(f)) => assert_eq!(f.reason, netpatrol::probe::Reason::Timeout),
            ("truncated", Err(_)) => {}
            ("garbage" | "noise", Ok(None) | Err(_)) => {}
            ("huge certificate", Ok(Some(f))) => assert!(f.cert.is_none()),
            ("huge certificate", Err(_)) => {}
            _ => panic!("{name}: unexpected {result:?}"),
        }
    }
}

#[tokio::test]
async fn plain_services_are_not_tls() {
    let limits = Limits::new(0, 16);
    let s = spec(Trust::default(), &[], 1000);
    let ssh = Server::greeting(ip("127.0.21.1"), b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n").await;
    let http = Server::answer(
        ip("127.0.21.2"),
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    for server in [&ssh, &http] {
        let started = Instant::now();
        let r = tls::probe(&target(server.addr.ip()), server.addr.port(), &s, &limits).await;
        assert_eq!(r, Ok(None), "{}", server.addr);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}

#[tokio::test]
async fn bad_ca_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("gov-ca.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = Trust::load(&TrustSettings {
        ca_files: vec![bad.clone()],
    })
    .unwrap_err();
    assert!(err.to_string().contains("gov-ca.pem"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "nothing here\n").unwrap();
    let err = Trust::load(&TrustSettings {
        ca_files: vec![empty],
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("empty.pem") && err.to_string().contains("no certificate"),
        "{err}"
    );
    let missing = PathBuf::from("/nonexistent/ca.pem");
    let err = Trust::load(&TrustSettings {
        ca_files: vec![missing],
    })
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    // The system store alone loads.
    assert!(Trust::load(&TrustSettings::default()).is_ok());
}

/// Random bytes over the parsers and certificate facts: no panic, for a fixed number of
/// iterations (the cargo-fuzz target in `fuzz/` does the same, longer).
#[test]
fn parsers_survive_random_bytes() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let valid = {
        let mut v = wire::server_hello_record(0x0303, 0x0303, 0xc02f, None);
        v.extend(wire::certificate_record(0x0303, &[b"\x30\x03\x02\x01\x01"]));
        v
    };
    let trust = Trust::default();
    for i in 0..20_000 {
        let len = (next() % 600) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            // Mutate a valid flight: keeps the parser past its first checks.
            data = valid.clone();
            for _ in 0..(next() % 8) {
                let at = (next() as usize) % data.len();
                data[at] = next() as u8;
            }
            data.truncate((next() as usize) % (data.len() + 1));
        }
        let _ = wire::parse_flight(&data, true);
        let _ = wire::parse_flight(&data, false);
        let _ = wire::parse_server_hello(&data);
        let _ = wire::parse_certificate_list(&data);
        let _ = wire::parse_client_hello(&data);
        let _ = tls::cert_facts(
            &[data.clone()],
            &["a.lab.test".into()],
            None,
            &trust,
            Utc::now(),
        );
    }
}

#[tokio::test]
async fn x509_v1_certificate_read_by_the_tls_and_the_https_probe() {
    // Debian's OpenSSL makes an X.509 v1 certificate with `x509 -req -signkey` (no
    // extensions); webpki refuses to parse those, rustls with it. `s_server -www` answers
    // HTTP over TLS.
    let dir = tempfile::tempdir().unwrap();
    let (key, csr, crt) = (
        dir.path().join("v1.key"),
        dir.path().join("v1.csr"),
        dir.path().join("v1.crt"),
    );
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=v1.lab.test",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
        && std::process::Command::new("openssl")
            .args(["x509", "-req", "-days", "30", "-in"])
            .arg(&csr)
            .arg("-signkey")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl made the v1 certificate");
    for (i, versions) in [["-tls1_2"], ["-tls1_3"]].iter().enumerate() {
        let server = OpensslServer::start(
            ip(&format!("127.113.20.{}", i + 1)),
            &crt,
            &key,
            &[versions[0], "-www"],
        )
        .await;
        let f = posture(server.addr, &spec(Trust::default(), &["v1.lab.test"], 1500)).await;
        let cert = f.cert.expect("the v1 certificate is parsed");
        assert_eq!(cert.subject, "CN=v1.lab.test");
        assert_eq!(cert.hostname_match, Some(true));

        netpatrol::probe::http::install_crypto_provider();
        let http_spec = netpatrol::probe::http::HttpSpec {
            timeout: Duration::from_millis(3000),
            admin_paths: Vec::new(),
            ..Default::default()
        };
        let page = netpatrol::probe::http::probe(
            &target(server.addr.ip()),
            server.addr.port(),
            true,
            &http_spec,
            &Limits::new(0, 8),
        )
        .await
        .unwrap_or_else(|e| panic!("{versions:?}: https probe failed on a v1 certificate: {e}"))
        .expect("an HTTP answer");
        assert_eq!(page.status, 200, "{versions:?}");
        assert_eq!(page.scheme, "https");
    }
}
