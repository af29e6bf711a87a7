//! The lab: a simulated district network on loopback, used by `netpatrol demo` and the tests.
//!
//! Real TCP listeners on addresses of 127.20.0.0/16 (every 127/8 address reaches the local
//! machine on Linux) speak the first bytes of real services: SSH, FTP, SMTP, POP3 and VNC
//! greetings, a MySQL handshake, telnet option negotiation, HTTP responses; the rest accept and
//! stay silent, as RDP, SMB or PostgreSQL do until the client speaks. The matching config is
//! `config/demo.yaml` (embedded in the binary): three segments, approvals that leave some hosts
//! unapproved, a departmental segment past its consolidation date.
//!
//! Ports: the lab binds the real well-known ports when it can (root, nothing else listening on
//! them); otherwise it shifts every port by [`SHIFTED_BY`] and says so, and the config's port
//! list is shifted to match, so the scan still sees exactly the lab and nothing else.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::config::{self, Config};

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
    /// Reads a request, answers with this HTTP response (its `Content-Length` is added), closes.
    Http(&'static str),
}

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

const HTTP_PORTAL: &str = "HTTP/1.1 200 OK\r\nServer: nginx/1.20.1\r\nContent-Type: text/html; charset=utf-8\r\nConnection: close\r\n\r\n<html><head><title>海陵区政务服务门户</title></head><body></body></html>";
const HTTP_REDIRECT: &str = "HTTP/1.1 301 Moved Permanently\r\nServer: nginx\r\nLocation: https://portal.hailing.example/\r\nConnection: close\r\n\r\n";
const HTTP_APP: &str = "HTTP/1.1 200 OK\r\nServer: Apache-Coyote/1.1\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<html><head><title>Project Trial Login</title></head></html>";
const HTTP_ES: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"cluster_name\":\"es\",\"tagline\":\"You Know, for Search\"}";

const fn svc(ip: [u8; 4], port: u16, service: &'static str, behaviour: Behaviour) -> LabService {
    LabService {
        ip: Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
        port,
        service,
        behaviour,
    }
}

use Behaviour::{Greeting, Http, Silent};

/// The simulated district. Keep in step with `config/demo.yaml`.
pub const SERVICES: &[LabService] = &[
    // extranet-a: the e-government extranet.
    svc([127, 20, 1, 10], 80, "http", Http(HTTP_REDIRECT)),
    svc([127, 20, 1, 10], 443, "https", Silent),
    svc([127, 20, 1, 11], 22, "ssh", Greeting(SSH)),
    svc([127, 20, 1, 11], 3306, "mysql", Greeting(MYSQL)),
    svc([127, 20, 1, 12], 21, "ftp", Greeting(FTP)),
    svc([127, 20, 1, 12], 23, "telnet", Greeting(TELNET)),
    svc([127, 20, 1, 13], 8080, "http", Http(HTTP_APP)),
    svc([127, 20, 1, 14], 80, "http", Http(HTTP_PORTAL)),
    svc([127, 20, 1, 14], 443, "https", Silent),
    svc([127, 20, 1, 20], 6379, "redis", Silent),
    svc([127, 20, 1, 20], 9200, "elasticsearch", Http(HTTP_ES)),
    // metro-core: the metropolitan network.
    svc([127, 20, 2, 5], 25, "smtp", Greeting(SMTP)),
    svc([127, 20, 2, 5], 110, "pop3", Greeting(POP3)),
    svc([127, 20, 2, 6], 5432, "postgresql", Silent),
    svc([127, 20, 2, 6], 1433, "mssql", Silent),
    svc([127, 20, 2, 7], 3389, "rdp", Silent),
    svc([127, 20, 2, 8], 80, "http", Http(HTTP_PORTAL)),
    svc([127, 20, 2, 8], 443, "https", Silent),
    svc([127, 20, 2, 9], 22, "ssh", Greeting(SSH_OLD)),
    svc([127, 20, 2, 9], 5900, "vnc", Greeting(VNC)),
    // legacy-wsj: a departmental network not yet merged.
    svc([127, 20, 3, 2], 80, "http", Http(HTTP_APP)),
    svc([127, 20, 3, 2], 445, "smb", Silent),
    svc([127, 20, 3, 3], 23, "telnet", Greeting(TELNET)),
    svc([127, 20, 3, 3], 11211, "memcached", Silent),
    svc([127, 20, 3, 4], 1521, "oracle-tns", Silent),
];

#[derive(Debug, thiserror::Error)]
pub enum LabError {
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
            tasks.spawn(serve(listener, s.behaviour));
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

async fn serve(listener: TcpListener, behaviour: Behaviour) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    conns.spawn(handle(stream, behaviour));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle(mut stream: TcpStream, behaviour: Behaviour) {
    let mut buf = [0u8; 1024];
    let hold = Duration::from_secs(10);
    match behaviour {
        Behaviour::Greeting(bytes) => {
            if stream.write_all(bytes).await.is_ok() {
                let _ = tokio::time::timeout(hold, drain(&mut stream, &mut buf)).await;
            }
        }
        Behaviour::Silent => {
            let _ = tokio::time::timeout(hold, drain(&mut stream, &mut buf)).await;
        }
        Behaviour::Http(response) => {
            let mut request = Vec::new();
            let got_request = tokio::time::timeout(hold, async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if got_request == Ok(true) {
                let _ = stream.write_all(with_length(response).as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        }
    }
}

/// The response with a `Content-Length` header computed from its body.
fn with_length(response: &str) -> String {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    format!("{head}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

async fn drain(stream: &mut TcpStream, buf: &mut [u8]) {
    while let Ok(n) = stream.read(buf).await {
        if n == 0 {
            break;
        }
    }
}
