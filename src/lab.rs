//! The lab: a simulated district network on loopback, used by `netpatrol demo` and the tests.
//!
//! Real TCP listeners on addresses of 127.20.0.0/16 (every 127/8 address reaches the local
//! machine on Linux) speak the first bytes of real services: SSH, FTP, SMTP, POP3 and VNC
//! greetings, a MySQL handshake, telnet option negotiation, HTTP responses, TLS (rustls, with
//! self-signed and expired certificates) and canned legacy-TLS and TLCP handshakes; the rest
//! accept and stay silent, as RDP, SMB or PostgreSQL do until the client speaks. The matching config is
//! `config/demo.yaml` (embedded in the binary): three segments, approvals that leave some hosts
//! unapproved, a departmental segment past its consolidation date.
//!
//! Ports: the lab binds the real well-known ports when it can (root, nothing else listening on
//! them); otherwise it shifts every port by [`SHIFTED_BY`] and says so, and the config's port
//! list is shifted to match, so the scan still sees exactly the lab and nothing else.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::{self, Config};
use crate::probe::tls::wire;

/// The demo config, embedded so `netpatrol demo` works from any directory.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

/// Port offset used when the well-known ports cannot be bound.
pub const SHIFTED_BY: u16 = 20000;

/// An address inside 127.20.0.0/16 but outside every demo segment, used to test whether a port
/// is free on loopback.
const PORT_CHECK_ADDR: Ipv4Addr = Ipv4Addr::new(127, 20, 255, 254);

/// What a simulated service does with a connection.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Sends these bytes at once, then waits for the client to go.
    Greeting(&'static [u8]),
    /// Accepts and says nothing until the client goes.
    Silent,
    /// Reads HTTP requests; answers each with the response of the first route whose path
    /// matches (`*` matches any; none: 404), its `Content-Length` added.
    Http(&'static [Route]),
    /// Reads commands; answers each with the reply of the first entry whose key the command
    /// contains (ASCII case-insensitive; `*` matches any). Redis and memcached speak so.
    Commands(&'static [(&'static str, &'static str)]),
    /// Speaks TLS or TLCP.
    Tls(TlsEndpoint),
}

/// The TLS endpoints of the lab.
#[derive(Debug, Clone, Copy)]
pub enum TlsEndpoint {
    /// rustls, TLS 1.2 and 1.3, a self-signed ECDSA P-256 certificate for `names`, valid
    /// from 2025 to 2035 or, when `expired`, for the year 2024 only.
    Modern {
        names: &'static [&'static str],
        expired: bool,
        /// HTTP over the TLS connection, when the endpoint is a web server.
        web: Option<&'static [Route]>,
    },
    /// TLS 1.0 and 1.1 only, 3DES first, an RSA-1024/SHA-1 certificate. Canned bytes: no TLS
    /// library packaged here offers 3DES any more. Answers up to the ServerHelloDone.
    Legacy,
    /// TLCP (GB/T 38636) with ECC_SM4_CBC_SM3 and an SM2 signing/encryption certificate pair.
    /// Canned bytes: no TLCP server is packaged for this machine.
    Tlcp,
}

/// Certificates of the canned endpoints, made once with the openssl command line.
const LEGACY_CERT: &[u8] = include_bytes!("lab_certs/legacy-rsa1024-sha1.der");
const TLCP_SIGN_CERT: &[u8] = include_bytes!("lab_certs/tlcp-sign-sm2.der");
const TLCP_ENC_CERT: &[u8] = include_bytes!("lab_certs/tlcp-enc-sm2.der");

/// One simulated service.
#[derive(Debug, Clone, Copy)]
pub struct LabService {
    pub ip: Ipv4Addr,
    /// The well-known port (before any shift).
    pub port: u16,
    /// The service name a scan should report.
    pub service: &'static str,
    pub behaviour: Behaviour,
}

const SSH: &[u8] = b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n";
const SSH_OLD: &[u8] = b"SSH-2.0-OpenSSH_7.4\r\n";
const FTP: &[u8] = b"220 (vsFTPd 3.0.3)\r\n";
const TELNET: &[u8] = &[
    0xff, 0xfd, 0x18, 0xff, 0xfd, 0x20, 0xff, 0xfd, 0x23, 0xff, 0xfd, 0x27,
];
const SMTP: &[u8] = b"220 mail.hailing.example ESMTP Postfix\r\n";
const POP3: &[u8] = b"+OK Dovecot ready.\r\n";
const VNC: &[u8] = b"RFB 003.008\n";
/// A MySQL protocol-10 handshake: 3-byte length, sequence 0, version "5.7.44-log", thread id,
/// salt, capabilities, charset, status, auth plugin.
const MYSQL: &[u8] = b"\x4a\x00\x00\x00\x0a5.7.44-log\x00\x08\x00\x00\x00\x3b\x56\x2e\x1f\x5d\x4a\x61\x2a\x00\xff\xf7\x21\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x18\x4f\x62\x1e\x2f\x3e\x71\x4b\x6a\x4c\x0e\x53\x00mysql_native_password\x00";

/// An HTTP route: a path (`*` = any) and the raw response without `Content-Length`.
pub type Route = (&'static str, &'static str);

const PORTAL: &[Route] = &[(
    "*",
    "HTTP/1.1 200 OK\r\nServer: nginx/1.20.1\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n\r\n<html><head><title>海陵区政务服务门户</title></head><body><h1>海陵区政务服务门户</h1></body></html>",
)];
const PORTAL_HSTS: &[Route] = &[(
    "*",
    "HTTP/1.1 200 OK\r\nServer: nginx\r\nStrict-Transport-Security: max-age=31536000\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n\r\n<html><head><title>项目申报管理系统</title></head><body></body></html>",
)];
const REDIRECT: &[Route] = &[(
    "*",
    "HTTP/1.1 301 Moved Permanently\r\nServer: nginx\r\nLocation: https://portal.hailing.example/\r\nConnection: close\r\n\r\n",
)];
const TRIAL_LOGIN: &[Route] = &[(
    "*",
    "HTTP/1.1 200 OK\r\nServer: Apache-Coyote/1.1\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n\r\n<html><head><title>智慧教育平台 登录</title></head><body><form method=\"post\" action=\"/login\"><input name=\"user\"><input type=\"password\" name=\"pwd\"><button>登录</button></form></body></html>",
)];
const LISTING: &[Route] = &[(
    "*",
    "HTTP/1.1 200 OK\r\nServer: Apache/2.2.15 (CentOS)\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<html><head><title>Index of /</title></head><body><h1>Index of /</h1><ul><li><a href=\"backup.sql\">backup.sql</a></li><li><a href=\"upload/\">upload/</a></li></ul></body></html>",
)];
const TOMCAT: &[Route] = &[
    (
        "/manager/html",
        "HTTP/1.1 401 Unauthorized\r\nServer: Apache-Coyote/1.1\r\nWWW-Authenticate: Basic realm=\"Tomcat Manager Application\"\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<html><head><title>401 Unauthorized</title></head><body>Tomcat Manager</body></html>",
    ),
    (
        "/",
        "HTTP/1.1 200 OK\r\nServer: Apache-Coyote/1.1\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n\r\n<html><head><title>城域网运维门户</title></head><body></body></html>",
    ),
];
const ELASTICSEARCH: &[Route] = &[(
    "*",
    "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{\"name\":\"es-node-1\",\"cluster_name\":\"hailing-logs\",\"version\":{\"number\":\"7.10.2\"},\"tagline\":\"You Know, for Search\"}",
)];
const DOCKER: &[Route] = &[(
    "*",
    "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\nServer: Docker/20.10.7 (linux)\r\n\r\n{\"Platform\":{\"Name\":\"Docker Engine - Community\"},\"Version\":\"20.10.7\",\"ApiVersion\":\"1.41\",\"Os\":\"linux\",\"Arch\":\"amd64\"}",
)];
const REDIS: &[(&str, &str)] = &[
    ("ping", "+PONG\r\n"),
    (
        "info",
        "$76\r\n# Server\r\nredis_version:6.2.6\r\nredis_mode:standalone\r\nos:Linux 3.10.0 x86_64\r\n\r\n",
    ),
    ("*", "-ERR unknown command\r\n"),
];
const MEMCACHED: &[(&str, &str)] = &[
    (
        "stats",
        "STAT pid 1121\r\nSTAT uptime 86400\r\nSTAT version 1.4.15\r\nSTAT curr_items 42\r\nEND\r\n",
    ),
    ("version", "VERSION 1.4.15\r\n"),
    ("*", "ERROR\r\n"),
];

const fn svc(ip: [u8; 4], port: u16, service: &'static str, behaviour: Behaviour) -> LabService {
    LabService {
        ip: Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
        port,
        service,
        behaviour,
    }
}

use Behaviour::{Commands, Greeting, Http, Silent, Tls};

/// The simulated district. Keep in step with `config/demo.yaml`.
pub const SERVICES: &[LabService] = &[
    // extranet-a: the e-government extranet.
    svc([127, 20, 1, 10], 80, "http", Http(REDIRECT)),
    svc(
        [127, 20, 1, 10],
        443,
        "https",
        Tls(TlsEndpoint::Modern {
            names: &["portal.hailing.example"],
            expired: false,
            web: Some(PORTAL),
        }),
    ),
    svc([127, 20, 1, 11], 22, "ssh", Greeting(SSH)),
    svc([127, 20, 1, 11], 3306, "mysql", Greeting(MYSQL)),
    svc([127, 20, 1, 12], 21, "ftp", Greeting(FTP)),
    svc([127, 20, 1, 12], 23, "telnet", Greeting(TELNET)),
    svc([127, 20, 1, 13], 8080, "http", Http(TRIAL_LOGIN)),
    svc([127, 20, 1, 14], 80, "http", Http(PORTAL)),
    svc(
        [127, 20, 1, 14],
        443,
        "https",
        Tls(TlsEndpoint::Modern {
            names: &["xmsb.hailing.example"],
            expired: true,
            web: Some(PORTAL_HSTS),
        }),
    ),
    svc([127, 20, 1, 20], 6379, "redis", Commands(REDIS)),
    svc([127, 20, 1, 20], 9200, "elasticsearch", Http(ELASTICSEARCH)),
    // metro-core: the metropolitan network.
    svc([127, 20, 2, 5], 25, "smtp", Greeting(SMTP)),
    svc([127, 20, 2, 5], 110, "pop3", Greeting(POP3)),
    svc([127, 20, 2, 6], 5432, "postgresql", Silent),
    svc([127, 20, 2, 6], 1433, "mssql", Silent),
    svc([127, 20, 2, 6], 2375, "docker", Http(DOCKER)),
    svc([127, 20, 2, 7], 3389, "rdp", Silent),
    svc([127, 20, 2, 8], 80, "http", Http(TOMCAT)),
    svc([127, 20, 2, 8], 443, "https", Tls(TlsEndpoint::Legacy)),
    svc([127, 20, 2, 4], 443, "https", Tls(TlsEndpoint::Tlcp)),
    svc([127, 20, 2, 9], 22, "ssh", Greeting(SSH_OLD)),
    svc([127, 20, 2, 9], 5900, "vnc", Greeting(VNC)),
    // legacy-wsj: a departmental network not yet merged.
    svc([127, 20, 3, 2], 80, "http", Http(LISTING)),
    svc([127, 20, 3, 2], 445, "smb", Silent),
    svc([127, 20, 3, 3], 23, "telnet", Greeting(TELNET)),
    svc([127, 20, 3, 3], 11211, "memcached", Commands(MEMCACHED)),
    svc([127, 20, 3, 4], 1521, "oracle-tns", Silent),
];

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot make the lab's TLS certificates: {0}")]
    Tls(String),
    #[error("demo config does not load: {0}")]
    Config(#[from] config::ConfigErrors),
    #[error("port {port} is taken on loopback even after shifting by {SHIFTED_BY}")]
    PortTaken { port: u16 },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A running lab. Dropping it stops every listener.
pub struct Lab {
    tasks: JoinSet<()>,
    /// 0 or [`SHIFTED_BY`].
    pub shift: u16,
}

impl Lab {
    /// The demo config with its store under `out_dir` and its ports shifted to match the lab.
    pub fn config(&self, out_dir: &std::path::Path) -> Result<Config, LabError> {
        let mut config = config::load_str(DEMO_CONFIG, std::path::Path::new("config/demo.yaml"))?;
        config.store.path = out_dir.join("netpatrol.db");
        for port in &mut config.scan.ports {
            *port += self.shift;
        }
        Ok(config)
    }

    /// Where each simulated service listens.
    pub fn endpoints(&self) -> Vec<(SocketAddr, &'static str)> {
        SERVICES
            .iter()
            .map(|s| {
                (
                    SocketAddr::new(IpAddr::V4(s.ip), s.port + self.shift),
                    s.service,
                )
            })
            .collect()
    }

    /// Start every simulated service. `ports` is the demo config's port list: every one of them
    /// must be free on loopback (else a scan would see another program's listener), so the lab
    /// shifts them all when any is taken.
    pub async fn start() -> Result<Lab, LabError> {
        let demo = config::load_str(DEMO_CONFIG, std::path::Path::new("config/demo.yaml"))?;
        let ports = demo.scan.ports;
        let mut shift = 0;
        if !all_free(&ports, 0).await {
            shift = SHIFTED_BY;
            if let Some(port) = first_taken(&ports, shift).await {
                return Err(LabError::PortTaken { port });
            }
            tracing::info!(
                shift,
                "well-known ports are not available; the lab shifts its ports"
            );
        }
        let mut tasks = JoinSet::new();
        for s in SERVICES {
            let addr = SocketAddr::new(IpAddr::V4(s.ip), s.port + shift);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| LabError::Bind { addr, source })?;
            let handler = match s.behaviour {
                Behaviour::Tls(TlsEndpoint::Modern {
                    names,
                    expired,
                    web,
                }) => Handler::Rustls(rustls_acceptor(names, expired)?, web),
                other => Handler::Plain(other),
            };
            tasks.spawn(serve(listener, Arc::new(handler)));
        }
        Ok(Lab { tasks, shift })
    }

    /// Stop every listener.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// The demo config with its store under `out_dir` and its ports moved up by `shift`.
pub fn demo_config(out_dir: &std::path::Path, shift: u16) -> Result<Config, LabError> {
    let mut config = config::load_str(DEMO_CONFIG, std::path::Path::new("config/demo.yaml"))?;
    config.store.path = out_dir.join("netpatrol.db");
    for port in &mut config.scan.ports {
        *port += shift;
    }
    Ok(config)
}

/// Where each simulated service listens when the lab runs with `shift`.
pub fn endpoints(shift: u16) -> Vec<(SocketAddr, &'static str)> {
    SERVICES
        .iter()
        .map(|s| (SocketAddr::new(IpAddr::V4(s.ip), s.port + shift), s.service))
        .collect()
}

async fn all_free(ports: &[u16], shift: u16) -> bool {
    first_taken(ports, shift).await.is_none()
}

async fn first_taken(ports: &[u16], shift: u16) -> Option<u16> {
    for &port in ports {
        let Some(p) = port.checked_add(shift) else {
            return Some(port);
        };
        if TcpListener::bind((PORT_CHECK_ADDR, p)).await.is_err() {
            return Some(p);
        }
    }
    None
}

/// How a listener answers, built at start.
enum Handler {
    Plain(Behaviour),
    Rustls(TlsAcceptor, Option<&'static [Route]>),
}

/// A rustls acceptor with a fresh self-signed certificate for `names`.
fn rustls_acceptor(names: &[&str], expired: bool) -> Result<TlsAcceptor, LabError> {
    let tls = |e: &dyn std::fmt::Display| LabError::Tls(e.to_string());
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .map_err(|e| tls(&e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "海陵区大数据管理局(演示)");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().copied().unwrap_or("lab"),
    );
    let (from, to) = if expired {
        ((2024, 1, 1), (2024, 12, 31))
    } else {
        ((2025, 1, 1), (2035, 1, 1))
    };
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
    let key = rcgen::KeyPair::generate().map_err(|e| tls(&e))?;
    let cert = params.self_signed(&key).map_err(|e| tls(&e))?;
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| tls(&e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls(&e))?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key_der)
    .map_err(|e| tls(&e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(listener: TcpListener, handler: Arc<Handler>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let handler = handler.clone();
                    conns.spawn(async move {
                        match &*handler {
                            Handler::Plain(b) => handle(stream, *b).await,
                            Handler::Rustls(acceptor, web) => {
                                let accept = acceptor.accept(stream);
                                if let Ok(Ok(mut tls)) =
                                    tokio::time::timeout(HOLD, accept).await
                                {
                                    match web {
                                        Some(routes) => serve_http(&mut tls, routes).await,
                                        None => drain(&mut tls).await,
                                    }
                                }
                            }
                        }
                    });
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The canned answer of a legacy or TLCP endpoint to one ClientHello record.
fn canned_answer(endpoint: TlsEndpoint, record: &[u8]) -> Vec<u8> {
    let Some(hello) = wire::parse_client_hello(record) else {
        return Vec::new();
    };
    let (versions, suites, certs): (&[u16], &[u16], &[&[u8]]) = match endpoint {
        // TLS_RSA_WITH_3DES_EDE_CBC_SHA first (server preference), then AES128-SHA.
        TlsEndpoint::Legacy => (
            &[wire::TLS10, wire::TLS11],
            &[0x000a, 0x002f],
            &[LEGACY_CERT],
        ),
        // ECC_SM4_CBC_SM3.
        TlsEndpoint::Tlcp => (&[wire::TLCP], &[0xe013], &[TLCP_SIGN_CERT, TLCP_ENC_CERT]),
        TlsEndpoint::Modern { .. } => return Vec::new(),
    };
    // Like a real legacy server: take the client's version if known, else the best below it.
    let chosen = versions
        .iter()
        .copied()
        .filter(|&v| v <= hello.client_version && (v >= wire::SSL3 || v == hello.client_version))
        .max();
    let Some(version) = chosen else {
        return wire::alert_record(hello.record_version, 70); // protocol_version
    };
    let record_version = if version == wire::TLCP {
        wire::TLCP
    } else {
        version
    };
    let Some(&suite) = suites.iter().find(|s| hello.suites.contains(s)) else {
        return wire::alert_record(record_version, 40); // handshake_failure
    };
    let mut out = wire::server_hello_record(record_version, version, suite, None);
    out.extend(wire::certificate_record(record_version, certs));
    out.extend(wire::server_hello_done_record(record_version));
    out
}

/// How long a simulated service keeps an idle connection.
const HOLD: Duration = Duration::from_secs(10);

async fn handle(mut stream: TcpStream, behaviour: Behaviour) {
    match behaviour {
        Behaviour::Tls(endpoint) => {
            let mut header = [0u8; 5];
            if !matches!(
                tokio::time::timeout(HOLD, stream.read_exact(&mut header)).await,
                Ok(Ok(_))
            ) {
                return;
            }
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let mut record = header.to_vec();
            record.resize(5 + len, 0);
            if !matches!(
                tokio::time::timeout(HOLD, stream.read_exact(&mut record[5..])).await,
                Ok(Ok(_))
            ) {
                return;
            }
            let answer = canned_answer(endpoint, &record);
            if !answer.is_empty() && stream.write_all(&answer).await.is_ok() {
                drain(&mut stream).await;
            }
        }
        Behaviour::Greeting(bytes) => {
            if stream.write_all(bytes).await.is_ok() {
                drain(&mut stream).await;
            }
        }
        Behaviour::Silent => drain(&mut stream).await,
        Behaviour::Http(routes) => serve_http(&mut stream, routes).await,
        Behaviour::Commands(replies) => {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(HOLD, async {
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let command = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                    let reply = replies
                        .iter()
                        .find(|(key, _)| *key == "*" || command.contains(key))
                        .map_or("", |(_, reply)| *reply);
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

/// Answer HTTP requests on `stream` from `routes` until the client goes (keep-alive allowed).
async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, routes: &[Route]) {
    let mut buf = [0u8; 1024];
    let mut request = Vec::new();
    let _ = tokio::time::timeout(HOLD, async {
        loop {
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                if request.len() > 16384 {
                    return;
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let end = request
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(request.len(), |p| p + 4);
            let head = String::from_utf8_lossy(&request[..end]).to_string();
            request.drain(..end);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let response = routes
                .iter()
                .find(|(route, _)| *route == "*" || *route == path)
                .map_or(NOT_FOUND, |(_, r)| *r);
            let head_only = head.starts_with("HEAD ");
            if stream
                .write_all(&with_length(response, head_only))
                .await
                .is_err()
            {
                return;
            }
        }
    })
    .await;
    let _ = stream.shutdown().await;
}

const NOT_FOUND: &str = "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\r\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>";

/// The response with a `Content-Length` header computed from its body (and without the body
/// for a HEAD request).
fn with_length(response: &str, head_only: bool) -> Vec<u8> {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let mut out = format!("{head}\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Read and discard until the peer closes or [`HOLD`] passes.
async fn drain<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(HOLD, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
