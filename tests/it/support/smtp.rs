//! A small SMTP sink on loopback: EHLO advertising STARTTLS (tokio-rustls, certificate from a
//! test CA) and AUTH PLAIN/LOGIN, accepting MAIL/RCPT/DATA and keeping what it received.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::tls::{Leaf, Pki};

/// One message the sink accepted.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// The session had switched to TLS before MAIL.
    pub tls: bool,
    /// (user, password) from AUTH, when given.
    pub auth: Option<(String, String)>,
    pub from: String,
    pub rcpt: Vec<String>,
    /// The DATA, dot-unstuffed, CRLF line ends.
    pub data: String,
}

pub struct SmtpSink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// While set, a session that has read a message's DATA neither keeps it nor answers: the
    /// client hangs mid-DATA (so a test can kill it there). The messages held so are in
    /// `stalled`.
    pub stall: Arc<AtomicBool>,
    pub stalled: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    /// Listen on `addr` (port 0 for any) with a certificate for 127.0.0.1 issued by `pki`.
    pub async fn start(addr: SocketAddr, pki: &Pki) -> SmtpSink {
        let leaf: Leaf = pki.leaf(&["127.0.0.1", "localhost"], (2025, 1, 1), (2035, 1, 1));
        let chain: Vec<CertificateDer<'static>> = leaf.chain.clone();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, leaf.clone_key())
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr).await.expect("bind smtp sink");
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let stall: Arc<AtomicBool> = Arc::default();
        let stalled: Arc<Mutex<Vec<Received>>> = Arc::default();
        let store = received.clone();
        let (stall_flag, stalled_store) = (stall.clone(), stalled.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let store = store.clone();
                let (stall, stalled) = (stall_flag.clone(), stalled_store.clone());
                tokio::spawn(async move {
                    let mut session = Session {
                        stall,
                        stalled,
                        ..Session::default()
                    };
                    let Some(stream) = session.run(stream, true, &store).await else {
                        return;
                    };
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    session.tls = true;
                    session.run(tls, false, &store).await;
                });
            }
        });
        SmtpSink {
            addr,
            received,
            stall,
            stalled,
            task,
        }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

#[derive(Default)]
struct Session {
    tls: bool,
    auth: Option<(String, String)>,
    current: Option<Received>,
    stall: Arc<AtomicBool>,
    stalled: Arc<Mutex<Vec<Received>>>,
}

impl Session {
    /// Serve commands; returns the stream when the client asked for STARTTLS.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
        plain: bool,
        store: &Mutex<Vec<Received>>,
    ) -> Option<S> {
        let mut io = BufReader::new(stream);
        if plain {
            io.get_mut()
                .write_all(b"220 sink.example.gov.cn ESMTP test sink\r\n")
                .await
                .ok()?;
        }
        loop {
            let line = read_line(&mut io).await?;
            let upper = line.to_ascii_uppercase();
            let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                let mut r = String::from("250-sink.example.gov.cn\r\n");
                if plain {
                    r.push_str("250-STARTTLS\r\n");
                }
                r.push_str("250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n");
                r
            } else if upper.starts_with("STARTTLS") && plain {
                io.get_mut().write_all(b"220 go ahead\r\n").await.ok()?;
                return Some(io.into_inner());
            } else if upper.starts_with("AUTH PLAIN") {
                let arg = line[10..].trim().to_string();
                let arg = if arg.is_empty() {
                    io.get_mut().write_all(b"334 \r\n").await.ok()?;
                    read_line(&mut io).await?
                } else {
                    arg
                };
                let decoded = base64_decode(&arg);
                let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
                if parts.len() == 3 {
                    self.auth = Some((
                        String::from_utf8_lossy(parts[1]).into_owned(),
                        String::from_utf8_lossy(parts[2]).into_owned(),
                    ));
                }
                "235 ok\r\n".into()
            } else if upper.starts_with("AUTH LOGIN") {
                io.get_mut().write_all(b"334 VXNlcm5hbWU6\r\n").await.ok()?;
                let user = base64_decode(&read_line(&mut io).await?);
                io.get_mut().write_all(b"334 UGFzc3dvcmQ6\r\n").await.ok()?;
                let pass = base64_decode(&read_line(&mut io).await?);
                self.auth = Some((
                    String::from_utf8_lossy(&user).into_owned(),
                    String::from_utf8_lossy(&pass).into_owned(),
                ));
                "235 ok\r\n".into()
            } else if upper.starts_with("MAIL FROM:") {
                self.current = Some(Received {
                    tls: self.tls,
                    auth: self.auth.clone(),
                    from: angle(&line[10..]),
                    ..Received::default()
                });
                "250 ok\r\n".into()
            } else if upper.starts_with("RCPT TO:") {
                if let Some(c) = self.current.as_mut() {
                    c.rcpt.push(angle(&line[8..]));
                }
                "250 ok\r\n".into()
            } else if upper.starts_with("DATA") {
                io.get_mut().write_all(b"354 end with .\r\n").await.ok()?;
                let mut data = String::new();
                loop {
                    let l = read_line(&mut io).await?;
                    if l == "." {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                    data.push_str("\r\n");
                }
                if let Some(mut c) = self.current.take() {
                    c.data = data;
                    if self.stall.load(Ordering::SeqCst) {
                        self.stalled.lock().unwrap().push(c.clone());
                        std::future::pending::<()>().await;
                    }
                    store.lock().unwrap().push(c);
                }
                "250 queued\r\n".into()
            } else if upper.starts_with("QUIT") {
                io.get_mut().write_all(b"221 bye\r\n").await.ok()?;
                return None;
            } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                "250 ok\r\n".into()
            } else {
                "502 not implemented\r\n".into()
            };
            io.get_mut().write_all(reply.as_bytes()).await.ok()?;
        }
    }
}

async fn read_line<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> Option<String> {
    let mut line = String::new();
    let n = io.read_line(&mut line).await.ok()?;
    if n == 0 {
        return None;
    }
    Some(line.trim_end_matches(['\r', '\n']).to_string())
}

fn angle(s: &str) -> String {
    let s = s.trim();
    let inner = s
        .strip_prefix('<')
        .and_then(|r| r.split_once('>').map(|(a, _)| a))
        .unwrap_or(s);
    inner.to_string()
}

/// Standard base64, padding optional, whitespace ignored.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let Some(v) = value(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Quoted-printable body decoding.
pub fn qp_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' if bytes.get(i + 1) == Some(&b'\r') && bytes.get(i + 2) == Some(&b'\n') => i += 3,
            b'=' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// A MIME part: its headers (lower-case names, unfolded) and its raw body.
#[derive(Debug, Clone)]
pub struct Part {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Part {
    pub fn parse(raw: &str) -> Part {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        Part {
            headers,
            body: body.to_string(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The sub-parts of a multipart part.
    pub fn children(&self) -> Vec<Part> {
        let ct = self.header("content-type").unwrap_or("");
        let Some(b) = ct.split("boundary=").nth(1) else {
            return Vec::new();
        };
        let boundary = format!("--{}", b.trim_matches('"').split(';').next().unwrap_or(""));
        self.body
            .split(&boundary)
            .skip(1)
            .filter(|p| !p.starts_with("--"))
            .map(|p| Part::parse(p.trim_start_matches("\r\n")))
            .collect()
    }

    /// The body after its Content-Transfer-Encoding.
    pub fn decoded(&self) -> Vec<u8> {
        match self
            .header("content-transfer-encoding")
            .unwrap_or("")
            .to_ascii_lowercase()
            .as_str()
        {
            "base64" => base64_decode(&self.body),
            "quoted-printable" => qp_decode(&self.body),
            _ => self.body.as_bytes().to_vec(),
        }
    }
}
