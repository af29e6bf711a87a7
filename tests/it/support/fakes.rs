//! Loopback fakes of the services the exposure checks talk to: each reads the real request
//! bytes a client sends (and records them, so a test can check that only read-only requests
//! were made) and answers with the real reply bytes of that protocol. Also a small HTTP/1.1
//! server, optionally over TLS, with hostile behaviours: endless bodies, trickling, gzip bombs.

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a fake received: one entry per request message, in order.
pub type Seen = Arc<Mutex<Vec<String>>>;

/// A fake service on a loopback address and an ephemeral port.
pub struct Fake {
    pub addr: SocketAddr,
    pub seen: Seen,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Fake {
    /// Serve each connection with `handle`, which records what it reads in `seen`.
    pub async fn start<F, Fut>(ip: IpAddr, handle: F) -> Fake
    where
        F: Fn(TcpStream, Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind fake");
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(handle(stream, s.clone()));
            }
        });
        Fake {
            addr,
            seen,
            connections,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(seen: &Seen, what: impl Into<String>) {
    seen.lock().unwrap().push(what.into());
}

async fn read_exact_or_close(stream: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

// ---------------------------------------------------------------------------------------------
// Redis: RESP arrays of bulk strings in, RESP replies out.

/// A Redis 7.0.15; with `password`, every command but AUTH gets `-NOAUTH`.
pub async fn redis(ip: IpAddr, password: bool) -> Fake {
    Fake::start(ip, move |mut stream, seen| async move {
        let mut reader = tokio::io::BufReader::new(&mut stream);
        loop {
            let Some(command) = read_resp_command(&mut reader).await else {
                return;
            };
            record(&seen, command.join(" "));
            let name = command.first().map(|c| c.to_ascii_uppercase()).unwrap_or_default();
            let reply: Vec<u8> = if password && name != "AUTH" {
                b"-NOAUTH Authentication required.\r\n".to_vec()
            } else {
                match name.as_str() {
                    "PING" => b"+PONG\r\n".to_vec(),
                    "INFO" => {
                        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\nredis_mode:standalone\r\nos:Linux 5.15.0-91-generic x86_64\r\narch_bits:64\r\ntcp_port:6379\r\n";
                        format!("${}\r\n{info}\r\n", info.len()).into_bytes()
                    }
                    _ => format!("-ERR unknown command '{name}'\r\n").into_bytes(),
                }
            };
            if reader.get_mut().write_all(&reply).await.is_err() {
                return;
            }
        }
    })
    .await
}

async fn read_resp_command<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Option<Vec<String>> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    r.read_line(&mut line).await.ok()?;
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut parts = Vec::new();
    for _ in 0..n.min(16) {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0u8; len.min(4096) + 2];
        r.read_exact(&mut buf).await.ok()?;
        buf.truncate(len);
        parts.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Some(parts)
}

// ---------------------------------------------------------------------------------------------
// memcached text protocol.

pub async fn memcached(ip: IpAddr) -> Fake {
    Fake::start(ip, |mut stream, seen| async move {
        let mut reader = tokio::io::BufReader::new(&mut stream);
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        while reader.read_line(&mut line).await.is_ok_and(|n| n > 0) {
            record(&seen, line.trim_end());
            let reply = if line.trim_end() == "stats" {
                "STAT pid 1\r\nSTAT uptime 4021\r\nSTAT time 1767225600\r\nSTAT version 1.6.21\r\nSTAT libevent 2.1.12-stable\r\nSTAT pointer_size 64\r\nSTAT curr_connections 2\r\nEND\r\n"
            } else {
                "ERROR\r\n"
            };
            if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            line.clear();
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// MongoDB: OP_MSG in and out, BSON built by hand.

/// A BSON value for fake replies.
pub enum B {
    Double(f64),
    Int(i32),
    Bool(bool),
    Str(&'static str),
    Array(Vec<Vec<(&'static str, B)>>),
}

pub fn bson(elements: &[(&str, B)]) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    for (name, value) in elements {
        let (kind, bytes) = match value {
            B::Double(f) => (0x01, f.to_le_bytes().to_vec()),
            B::Int(i) => (0x10, i.to_le_bytes().to_vec()),
            B::Bool(b) => (0x08, vec![u8::from(*b)]),
            B::Str(s) => {
                let mut v = ((s.len() + 1) as i32).to_le_bytes().to_vec();
                v.extend_from_slice(s.as_bytes());
                v.push(0);
                (0x02, v)
            }
            B::Array(items) => {
                let indexed: Vec<(String, Vec<u8>)> = items
                    .iter()
                    .enumerate()
                    .map(|(i, doc)| (i.to_string(), bson(doc)))
                    .collect();
                let mut a = vec![0u8; 4];
                for (i, doc) in indexed {
                    a.push(0x03);
                    a.extend_from_slice(i.as_bytes());
                    a.push(0);
                    a.extend_from_slice(&doc);
                }
                a.push(0);
                let len = a.len() as i32;
                a[..4].copy_from_slice(&len.to_le_bytes());
                (0x04, a)
            }
        };
        d.push(kind);
        d.extend_from_slice(name.as_bytes());
        d.push(0);
        d.extend_from_slice(&bytes);
    }
    d.push(0);
    let len = d.len() as i32;
    d[..4].copy_from_slice(&len.to_le_bytes());
    d
}

fn op_msg_reply(request_id: i32, doc: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((21 + doc.len()) as i32).to_le_bytes());
    m.extend_from_slice(&1000i32.to_le_bytes());
    m.extend_from_slice(&request_id.to_le_bytes());
    m.extend_from_slice(&2013i32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.push(0);
    m.extend_from_slice(doc);
    m
}

/// The first key of the body document of an OP_MSG, i.e. the command name.
fn op_msg_command(msg: &[u8]) -> Option<String> {
    if i32::from_le_bytes(msg.get(12..16)?.try_into().ok()?) != 2013 || *msg.get(20)? != 0 {
        return None;
    }
    let doc = msg.get(21..)?;
    let name = doc.get(5..)?;
    let end = name.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// A MongoDB 7.0.5; with `auth`, `listDatabases` is refused as a real mongod with
/// `--auth` refuses it.
pub async fn mongodb(ip: IpAddr, auth: bool) -> Fake {
    Fake::start(ip, move |mut stream, seen| async move {
        loop {
            let Some(head) = read_exact_or_close(&mut stream, 4).await else {
                return;
            };
            let len = i32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
            if !(16..=1 << 20).contains(&len) {
                return;
            }
            let Some(rest) = read_exact_or_close(&mut stream, len - 4).await else {
                return;
            };
            let msg = [head, rest].concat();
            let request_id = i32::from_le_bytes(msg[4..8].try_into().unwrap());
            let command = op_msg_command(&msg).unwrap_or_else(|| "<not OP_MSG>".into());
            record(&seen, command.clone());
            let doc = match command.as_str() {
                "hello" | "isMaster" | "ismaster" => bson(&[
                    ("isWritablePrimary", B::Bool(true)),
                    ("maxBsonObjectSize", B::Int(16_777_216)),
                    ("minWireVersion", B::Int(0)),
                    ("maxWireVersion", B::Int(21)),
                    ("readOnly", B::Bool(false)),
                    ("ok", B::Double(1.0)),
                ]),
                "buildInfo" => bson(&[
                    ("version", B::Str("7.0.5")),
                    (
                        "gitVersion",
                        B::Str("7809d71e84e314b497f282ea8aa06d7ded3eb205"),
                    ),
                    ("bits", B::Int(64)),
                    ("ok", B::Double(1.0)),
                ]),
                "listDatabases" if auth => bson(&[
                    ("ok", B::Double(0.0)),
                    (
                        "errmsg",
                        B::Str("command listDatabases requires authentication"),
                    ),
                    ("code", B::Int(13)),
                    ("codeName", B::Str("Unauthorized")),
                ]),
                "listDatabases" => bson(&[
                    (
                        "databases",
                        B::Array(vec![
                            vec![("name", B::Str("admin"))],
                            vec![("name", B::Str("config"))],
                            vec![("name", B::Str("local"))],
                            vec![("name", B::Str("rkxx"))],
                        ]),
                    ),
                    ("ok", B::Double(1.0)),
                ]),
                _ => bson(&[
                    ("ok", B::Double(0.0)),
                    ("errmsg", B::Str("no such command")),
                    ("code", B::Int(59)),
                    ("codeName", B::Str("CommandNotFound")),
                ]),
            };
            if stream
                .write_all(&op_msg_reply(request_id, &doc))
                .await
                .is_err()
            {
                return;
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Silent services that answer the client's first message.

/// RDP: reads the X.224 Connection Request, answers a Connection Confirm selecting CredSSP.
pub async fn rdp(ip: IpAddr) -> Fake {
    Fake::start(ip, |mut stream, seen| async move {
        let Some(tpkt) = read_exact_or_close(&mut stream, 4).await else {
            return;
        };
        let len = u16::from_be_bytes([tpkt[2], tpkt[3]]) as usize;
        let Some(rest) = read_exact_or_close(&mut stream, len.saturating_sub(4)).await else {
            return;
        };
        let is_cr = tpkt[0] == 3 && rest.get(1) == Some(&0xe0);
        record(
            &seen,
            if is_cr {
                "x224 connection request"
            } else {
                "garbage"
            },
        );
        if is_cr {
            let cc = [
                0x03, 0x00, 0x00, 0x13, 0x0e, 0xd0, 0x00, 0x00, 0x12, 0x34, 0x00, 0x02, 0x1f, 0x08,
                0x00, 0x02, 0x00, 0x00, 0x00,
            ];
            let _ = stream.write_all(&cc).await;
            hold(&mut stream).await;
        }
    })
    .await
}

/// SMB: reads an SMB2 NEGOTIATE, answers dialect 3.0.2 with signing required.
pub async fn smb2(ip: IpAddr) -> Fake {
    Fake::start(ip, |mut stream, seen| async move {
        let Some(nb) = read_exact_or_close(&mut stream, 4).await else {
            return;
        };
        let len = (nb[1] as usize) << 16 | (nb[2] as usize) << 8 | nb[3] as usize;
        let Some(smb) = read_exact_or_close(&mut stream, len.min(65536)).await else {
            return;
        };
        let negotiate = smb.starts_with(b"\xfeSMB") && smb.get(12..14) == Some(&[0, 0]);
        record(
            &seen,
            if negotiate {
                "smb2 negotiate"
            } else {
                "garbage"
            },
        );
        if !negotiate {
            return;
        }
        let mut r = Vec::new();
        r.extend_from_slice(b"\xfeSMB");
        r.extend_from_slice(&64u16.to_le_bytes());
        r.extend_from_slice(&0u16.to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes()); // STATUS_SUCCESS
        r.extend_from_slice(&0u16.to_le_bytes()); // NEGOTIATE
        r.extend_from_slice(&1u16.to_le_bytes());
        r.extend_from_slice(&1u32.to_le_bytes()); // SERVER_TO_REDIR
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&0u64.to_le_bytes());
        r.extend_from_slice(&0xfeffu32.to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&0u64.to_le_bytes());
        r.extend_from_slice(&[0; 16]);
        r.extend_from_slice(&65u16.to_le_bytes()); // StructureSize
        r.extend_from_slice(&3u16.to_le_bytes()); // signing enabled | required
        r.extend_from_slice(&0x0302u16.to_le_bytes()); // dialect 3.0.2
        r.extend_from_slice(&0u16.to_le_bytes());
        r.extend_from_slice(b"fake-smb-server!"); // ServerGuid
        r.extend_from_slice(&0x2fu32.to_le_bytes()); // Capabilities
        r.extend_from_slice(&8_388_608u32.to_le_bytes()); // MaxTransactSize
        r.extend_from_slice(&8_388_608u32.to_le_bytes()); // MaxReadSize
        r.extend_from_slice(&8_388_608u32.to_le_bytes()); // MaxWriteSize
        r.extend_from_slice(&0u64.to_le_bytes()); // SystemTime
        r.extend_from_slice(&0u64.to_le_bytes()); // ServerStartTime
        r.extend_from_slice(&128u16.to_le_bytes()); // SecurityBufferOffset
        r.extend_from_slice(&0u16.to_le_bytes()); // SecurityBufferLength
        r.extend_from_slice(&0u32.to_le_bytes());
        let mut packet = vec![0u8];
        packet.extend_from_slice(&(r.len() as u32).to_be_bytes()[1..]);
        packet.extend_from_slice(&r);
        let _ = stream.write_all(&packet).await;
        hold(&mut stream).await;
    })
    .await
}

/// PostgreSQL: reads the SSLRequest, answers `N`.
pub async fn postgresql(ip: IpAddr) -> Fake {
    Fake::start(ip, |mut stream, seen| async move {
        let Some(request) = read_exact_or_close(&mut stream, 8).await else {
            return;
        };
        let ssl = request == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        record(&seen, if ssl { "ssl request" } else { "garbage" });
        if ssl {
            let _ = stream.write_all(b"N").await;
            hold(&mut stream).await;
        }
    })
    .await
}

/// SQL Server 2019 (15.0.2000): reads a TDS PRELOGIN, answers its own option list.
pub async fn mssql(ip: IpAddr) -> Fake {
    Fake::start(ip, |mut stream, seen| async move {
        let Some(head) = read_exact_or_close(&mut stream, 8).await else {
            return;
        };
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let Some(_payload) = read_exact_or_close(&mut stream, len.saturating_sub(8)).await else {
            return;
        };
        let prelogin = head[0] == 0x12;
        record(&seen, if prelogin { "tds prelogin" } else { "garbage" });
        if !prelogin {
            return;
        }
        // VERSION 15.0.2000.0, ENCRYPTION_NOT_SUP, INSTOPT, THREADID, MARS.
        let payload: Vec<u8> = vec![
            0x00, 0x00, 0x1a, 0x00, 0x06, //
            0x01, 0x00, 0x20, 0x00, 0x01, //
            0x02, 0x00, 0x21, 0x00, 0x01, //
            0x03, 0x00, 0x22, 0x00, 0x00, //
            0x04, 0x00, 0x22, 0x00, 0x01, //
            0xff, //
            0x0f, 0x00, 0x07, 0xd0, 0x00, 0x00, // version
            0x02, // encryption not supported
            0x00, // instopt
            0x00, // mars
        ];
        let mut packet = vec![0x04, 0x01];
        packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&[0x00, 0x00, 0x01, 0x00]);
        packet.extend_from_slice(&payload);
        let _ = stream.write_all(&packet).await;
        hold(&mut stream).await;
    })
    .await
}

/// An Oracle 19c listener: reads a TNS CONNECT, refuses the unknown service (ERR 12514) and
/// says its version.
pub async fn oracle_tns(ip: IpAddr) -> Fake {
    Fake::start(ip, |mut stream, seen| async move {
        let Some(head) = read_exact_or_close(&mut stream, 8).await else {
            return;
        };
        let len = u16::from_be_bytes([head[0], head[1]]) as usize;
        let Some(body) = read_exact_or_close(&mut stream, len.saturating_sub(8)).await else {
            return;
        };
        let connect = head[4] == 1;
        let data = String::from_utf8_lossy(&body).into_owned();
        let at = data.find("(CONNECT_DATA").unwrap_or(data.len());
        record(
            &seen,
            if connect {
                format!("tns connect {}", &data[at..])
            } else {
                "garbage".into()
            },
        );
        if !connect {
            return;
        }
        let text = b"(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=12514)(ERROR_STACK=(ERROR=(CODE=12514)(EMFI=4))))";
        let mut p = Vec::new();
        p.extend_from_slice(&((12 + text.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 4, 0, 0, 0]); // checksum, REFUSE, reserved, header checksum
        p.extend_from_slice(&[0x22, 0x00]); // user and system reasons
        p.extend_from_slice(&(text.len() as u16).to_be_bytes());
        p.extend_from_slice(text);
        let _ = stream.write_all(&p).await;
    })
    .await
}

/// A port that accepts and never says anything.
pub async fn silent(ip: IpAddr) -> Fake {
    Fake::start(ip, |mut stream, _| async move { hold(&mut stream).await }).await
}

/// A port that answers anything with an endless stream of bytes.
pub async fn firehose(ip: IpAddr) -> Fake {
    Fake::start(ip, |mut stream, _| async move {
        let mut buf = [0u8; 256];
        let _ = stream.read(&mut buf).await;
        let chunk = vec![b'x'; 16 * 1024];
        while stream.write_all(&chunk).await.is_ok() {}
    })
    .await
}

/// Sends `bytes` first, then holds the connection (an SSH server, say).
pub async fn greeting(ip: IpAddr, bytes: &'static [u8]) -> Fake {
    Fake::start(ip, move |mut stream, _| async move {
        if stream.write_all(bytes).await.is_ok() {
            hold(&mut stream).await;
        }
    })
    .await
}

/// Keep the connection until the peer goes (at most 30 s).
async fn hold<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1.

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub accept_encoding: Option<String>,
}

/// How the fake answers a request.
pub enum Reply {
    /// These bytes, then close.
    Raw(Vec<u8>),
    /// `now` at once, then `slowly` one byte at a time, `every` apart.
    Trickle {
        now: Vec<u8>,
        slowly: Vec<u8>,
        every: Duration,
    },
    /// This head, then body bytes without end.
    Endless(Vec<u8>),
    /// This head (with `Content-Encoding: gzip`), then 1 GiB of zeros gzip-compressed on the fly.
    GzipBomb(Vec<u8>),
}

/// A full response with `Content-Length` and `Connection: close`.
pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut r = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    Reply::Raw(bytes)
}

/// A response head without a length: the body runs until the connection closes.
pub fn open_head(status: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("Connection: close\r\n\r\n");
    r.into_bytes()
}

/// An HTTP server on loopback; every request goes to `route`.
pub struct HttpFake {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Body bytes the server managed to write (for the hostile replies).
    pub body_written: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

type Route = dyn Fn(&Request) -> Reply + Send + Sync;

impl HttpFake {
    pub async fn start(
        ip: IpAddr,
        route: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> HttpFake {
        Self::start_with(ip, None, route).await
    }

    /// Over TLS with a self-signed certificate.
    pub async fn start_tls(
        ip: IpAddr,
        route: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> HttpFake {
        Self::start_with(ip, Some(tls_acceptor(ip)), route).await
    }

    async fn start_with(
        ip: IpAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        route: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> HttpFake {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind http fake");
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let body_written = Arc::new(AtomicUsize::new(0));
        let route: Arc<Route> = Arc::new(route);
        let (reqs, written) = (requests.clone(), body_written.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (route, reqs, written, tls) =
                    (route.clone(), reqs.clone(), written.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_http(stream, &*route, &reqs, &written).await,
                        Some(acceptor) => {
                            if let Ok(Ok(tls)) = tokio::time::timeout(
                                Duration::from_secs(5),
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                serve_http(tls, &*route, &reqs, &written).await;
                            }
                        }
                    }
                });
            }
        });
        HttpFake {
            addr,
            requests,
            body_written,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn body_written(&self) -> usize {
        self.body_written.load(Ordering::SeqCst)
    }
}

impl Drop for HttpFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    route: &Route,
    requests: &Mutex<Vec<Request>>,
    written: &AtomicUsize,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 && head.len() < 16 * 1024 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let header = |name: &str| {
        text.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let request = Request {
        method: first.next().unwrap_or_default().to_owned(),
        path: first.next().unwrap_or_default().to_owned(),
        host: header("host"),
        accept_encoding: header("accept-encoding"),
    };
    requests.lock().unwrap().push(request.clone());
    match route(&request) {
        Reply::Raw(bytes) => {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
        Reply::Trickle { now, slowly, every } => {
            if stream.write_all(&now).await.is_err() {
                return;
            }
            for b in slowly {
                if stream.write_all(&[b]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
                written.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(every).await;
            }
        }
        Reply::Endless(head) => {
            if stream.write_all(&head).await.is_err() {
                return;
            }
            let chunk = b"<p>more</p>".repeat(1500);
            while stream.write_all(&chunk).await.is_ok() {
                written.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        }
        Reply::GzipBomb(head) => {
            if stream.write_all(&head).await.is_err() {
                return;
            }
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..1024 {
                encoder.write_all(&zeros).unwrap();
                let out = std::mem::take(encoder.get_mut());
                if !out.is_empty() {
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                    written.fetch_add(out.len(), Ordering::SeqCst);
                }
            }
            if let Ok(rest) = encoder.finish() {
                let _ = stream.write_all(&rest).await;
            }
            let _ = stream.shutdown().await;
        }
    }
}

/// A TLS acceptor with a fresh self-signed certificate for `ip` and `localhost`.
pub fn tls_acceptor(ip: IpAddr) -> tokio_rustls::TlsAcceptor {
    let cert = rcgen::generate_simple_self_signed(vec![ip.to_string(), "localhost".to_owned()])
        .expect("self-signed certificate");
    let der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
        cert.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
