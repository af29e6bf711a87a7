//! Service probe: naming services that wait for the client to speak, and checking whether data
//! services answer without credentials.
//!
//! Input: an open port of a [`Target`], the [`Identity`] the banner stage gave it and the
//! greeting the port scan read (maybe empty). Output: [`ServiceFacts`] (a confirmed service
//! name, product, version, whether it answers data unauthenticated, and short evidence), or a
//! [`Failure`] when the port could not be reached.
//!
//! The check is chosen by the service the banner stage named (from the greeting, else the
//! port), so a silent port with an unknown number gets no traffic. [`applies`] tells beforehand.
//!
//! | service | bytes sent | told by |
//! |---|---|---|
//! | redis | `PING`, then `INFO server` only if it answered `+PONG` | `+PONG` = unauthenticated, `-NOAUTH` = protected |
//! | elasticsearch | `GET /` | cluster JSON (`cluster_name`, `version.number`); 401 = protected |
//! | mongodb | `OP_MSG` `hello`, `buildInfo`, `listDatabases {nameOnly: true}` | `ok: 1` = unauthenticated, `Unauthorized` = protected |
//! | docker | `GET /version` | `ApiVersion`, `Version` |
//! | memcached | `stats` | `STAT version` |
//! | kubelet | `GET /pods` (plain first off 10250, then HTTPS) | `PodList` = unauthenticated, 401/403 = protected |
//! | rdp | X.224 Connection Request with an RDP negotiation request | Connection Confirm, selected security |
//! | smb | SMB2 `NEGOTIATE` (dialects 2.0.2 to 3.0.2) | `0xFE 'SMB'`, dialect, signing |
//! | postgresql | `SSLRequest` | `S` or `N` |
//! | mssql | TDS `PRELOGIN` | type 0x04 answer, `VERSION` option |
//! | oracle-tns | TNS `CONNECT` to a service name that does not exist | `REFUSE`/`ACCEPT`/`RESEND`/`REDIRECT`, `VSNNUM` |
//!
//! Invariants: read-only. Nothing is sent that logs in, writes, or changes state (no `AUTH`,
//! no `SET`/`CONFIG`/`FLUSH`, no `POST`); a handshake is begun and dropped. Every step (connect,
//! each request and its answer) runs under the timeout, every answer is read into at most
//! [`MAX_ANSWER`] bytes, and every parser is bounds-checked: the bytes come from the network.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::banner::{Identity, printable};
use super::{Failure, Reason, http, tcp};
use crate::scope::{Limits, Target};

/// Largest answer read from a service, in bytes.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Longest evidence string, in characters.
const EVIDENCE_MAX: usize = 160;

/// What the service probe learned. Every field is `None` when the check did not tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceFacts {
    /// The service name, when the probe confirmed it (`redis`, `rdp`, ...).
    pub service: Option<String>,
    pub product: Option<String>,
    pub version: Option<String>,
    /// `true`: it answered a data request without credentials; `false`: it asked for them.
    pub unauthenticated: Option<bool>,
    /// A short quote of what told, e.g. `redis_version:7.0.15`.
    pub evidence: Option<String>,
}

/// Which check a port gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Redis,
    Elasticsearch,
    MongoDb,
    Docker,
    Memcached,
    Kubelet,
    Rdp,
    Smb,
    PostgreSql,
    MsSql,
    OracleTns,
}

fn check_for(known: &Identity, greeting: &[u8]) -> Option<Check> {
    let check = match known.service.as_str() {
        "redis" => Check::Redis,
        "elasticsearch" => Check::Elasticsearch,
        "mongodb" => Check::MongoDb,
        "docker" => Check::Docker,
        "memcached" => Check::Memcached,
        "kubelet" => Check::Kubelet,
        // These wait for the client; a greeting means something else answers there.
        _ if !greeting.is_empty() => return None,
        "rdp" => Check::Rdp,
        "smb" => Check::Smb,
        "postgresql" => Check::PostgreSql,
        "mssql" => Check::MsSql,
        "oracle-tns" => Check::OracleTns,
        _ => return None,
    };
    Some(check)
}

/// Whether [`probe`] would send anything for this port.
pub fn applies(known: &Identity, greeting: &[u8]) -> bool {
    check_for(known, greeting).is_some()
}

/// Identify the service on `port` and check it for unauthenticated access. `timeout` bounds
/// each step; the caller (the scan's fan-out) holds the concurrency slot. Returns empty facts when no check applies.
pub async fn probe(
    target: &Target,
    port: u16,
    known: &Identity,
    greeting: &[u8],
    timeout: Duration,
    limits: &Limits,
) -> Result<ServiceFacts, Failure> {
    let Some(check) = check_for(known, greeting) else {
        return Ok(ServiceFacts::default());
    };
    let facts = match check {
        Check::Elasticsearch => return elasticsearch(target, port, timeout, limits).await,
        Check::Docker => return docker(target, port, timeout, limits).await,
        Check::Kubelet => return kubelet(target, port, timeout, limits).await,
        _ => {
            let mut conn = Conn::open(target, port, timeout, limits).await?;
            match check {
                Check::Redis => redis(&mut conn).await?,
                Check::MongoDb => mongodb(&mut conn).await?,
                Check::Memcached => memcached(&mut conn).await?,
                Check::Rdp => rdp(&mut conn).await?,
                Check::Smb => smb(&mut conn).await?,
                Check::PostgreSql => postgresql(&mut conn).await?,
                Check::MsSql => mssql(&mut conn).await?,
                Check::OracleTns => oracle_tns(&mut conn).await?,
                Check::Elasticsearch | Check::Docker | Check::Kubelet => unreachable!(),
            }
        }
    };
    Ok(facts)
}

/// One TCP connection, each exchange under the step timeout.
struct Conn {
    stream: TcpStream,
    step: Duration,
}

impl Conn {
    async fn open(
        target: &Target,
        port: u16,
        step: Duration,
        limits: &Limits,
    ) -> Result<Conn, Failure> {
        limits.attempt().await;
        let stream = tcp::connect(SocketAddr::new(target.ip(), port), step).await?;
        Ok(Conn { stream, step })
    }

    /// Send `request`, then read until `complete` says the answer is whole, [`MAX_ANSWER`]
    /// bytes, the peer closes or the step ends. A partial answer is returned as it is; no
    /// answer at all is a failure.
    async fn exchange(
        &mut self,
        request: &[u8],
        complete: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>, Failure> {
        let deadline = Instant::now() + self.step;
        match timeout_at(deadline, self.stream.write_all(request)).await {
            Err(_) => return Err(Failure::timeout()),
            Ok(Err(e)) => return Err(Failure::io(&e)),
            Ok(Ok(())) => {}
        }
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        loop {
            if len == buf.len() {
                if len >= MAX_ANSWER {
                    break;
                }
                buf.resize((len * 2).min(MAX_ANSWER), 0);
            }
            match timeout_at(deadline, self.stream.read(&mut buf[len..])).await {
                Err(_) if len == 0 => return Err(Failure::timeout()),
                Ok(Ok(0)) if len == 0 => {
                    return Err(Failure::new(Reason::Reset, "closed without an answer"));
                }
                Ok(Err(e)) if len == 0 => return Err(Failure::io(&e)),
                Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    len += n;
                    if complete(&buf[..len]) {
                        break;
                    }
                }
            }
        }
        buf.truncate(len);
        Ok(buf)
    }
}

fn evidence(text: impl AsRef<[u8]>) -> Option<String> {
    let p = printable(text.as_ref());
    let p: String = p.chars().take(EVIDENCE_MAX).collect();
    (!p.is_empty()).then_some(p)
}

fn named(service: &str) -> ServiceFacts {
    ServiceFacts {
        service: Some(service.to_owned()),
        ..ServiceFacts::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Redis (RESP).

/// A RESP reply is whole: a line for `+ - :`, the header plus its bytes for `$`.
fn resp_complete(b: &[u8]) -> bool {
    let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if b[0] != b'$' {
        return true;
    }
    let n: i64 = std::str::from_utf8(&b[1..eol])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1);
    n < 0 || b.len() >= eol + 2 + n as usize + 2
}

async fn redis(conn: &mut Conn) -> Result<ServiceFacts, Failure> {
    let reply = conn
        .exchange(b"*1\r\n$4\r\nPING\r\n", resp_complete)
        .await?;
    let line = first_line(&reply);
    let mut facts = named("redis");
    facts.product = Some("Redis".to_owned());
    if line.starts_with(b"-NOAUTH") || line.starts_with(b"-WRONGPASS") {
        facts.unauthenticated = Some(false);
        facts.evidence = evidence(line);
        return Ok(facts);
    }
    if line.starts_with(b"-DENIED") {
        // Protected mode: no password, but remote clients are refused.
        facts.unauthenticated = Some(false);
        facts.evidence = evidence(&line[..line.len().min(48)]);
        return Ok(facts);
    }
    if line != b"+PONG" {
        if line.starts_with(b"-") {
            facts.evidence = evidence(line);
            return Ok(facts);
        }
        return Ok(ServiceFacts::default());
    }
    facts.unauthenticated = Some(true);
    facts.evidence = Some("PING answered +PONG without AUTH".to_owned());
    let info = conn
        .exchange(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n", resp_complete)
        .await;
    if let Ok(info) = info {
        let text = String::from_utf8_lossy(&info);
        if let Some(v) = text
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            facts.version = Some(v.chars().take(32).collect());
            facts.evidence = evidence(format!("redis_version:{v}"));
        }
    }
    Ok(facts)
}

fn first_line(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
        .unwrap_or(b.len());
    &b[..end]
}

// ---------------------------------------------------------------------------------------------
// HTTP-based: Elasticsearch, Docker, kubelet.

/// `GET path` over `first` (plain or TLS), then the other when the port did not speak HTTP
/// that way.
async fn http_get(
    target: &Target,
    port: u16,
    path: &str,
    tls_first: bool,
    timeout: Duration,
    limits: &Limits,
) -> Result<Option<http::Response>, Failure> {
    let first = http::get(target, port, tls_first, path, timeout, MAX_ANSWER, limits).await;
    match first {
        // Go's and nginx's answers to plain HTTP on a TLS port.
        Ok(Some(r))
            if !tls_first
                && r.status == 400
                && [
                    &b"HTTP request to an HTTPS server"[..],
                    b"plain HTTP request was sent to HTTPS port",
                ]
                .iter()
                .any(|m| r.body.windows(m.len()).any(|w| w == *m)) =>
        {
            http::get(target, port, true, path, timeout, MAX_ANSWER, limits).await
        }
        Ok(Some(r)) => Ok(Some(r)),
        Ok(None) => http::get(target, port, !tls_first, path, timeout, MAX_ANSWER, limits).await,
        Err(f) if f.reason == Reason::Protocol => {
            http::get(target, port, !tls_first, path, timeout, MAX_ANSWER, limits).await
        }
        Err(f) => Err(f),
    }
}

fn json(body: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(body).ok()
}

fn json_str(v: &serde_json::Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(|x| x.as_str())
        .map(|s| printable(s.as_bytes()).chars().take(64).collect())
}

async fn elasticsearch(
    target: &Target,
    port: u16,
    timeout: Duration,
    limits: &Limits,
) -> Result<ServiceFacts, Failure> {
    let Some(r) = http_get(target, port, "/", false, timeout, limits).await? else {
        return Ok(ServiceFacts::default());
    };
    match r.status {
        200 => {
            let Some(v) = json(&r.body) else {
                return Ok(ServiceFacts::default());
            };
            let Some(cluster) = json_str(&v, "/cluster_name") else {
                return Ok(ServiceFacts::default());
            };
            let version = json_str(&v, "/version/number");
            let opensearch = json_str(&v, "/version/distribution").as_deref() == Some("opensearch");
            Ok(ServiceFacts {
                service: Some("elasticsearch".to_owned()),
                product: Some(
                    if opensearch {
                        "OpenSearch"
                    } else {
                        "Elasticsearch"
                    }
                    .to_owned(),
                ),
                evidence: evidence(format!(
                    "cluster_name:{cluster} version:{}",
                    version.as_deref().unwrap_or("?")
                )),
                version,
                unauthenticated: Some(true),
            })
        }
        401 | 403 => {
            // X-Pack security answers `WWW-Authenticate: Basic realm="security"`.
            let realm = r
                .headers
                .get("www-authenticate")
                .map(|v| printable(v.as_bytes()))
                .unwrap_or_default();
            let es = realm.contains("realm=\"security\"")
                || String::from_utf8_lossy(&r.body).contains("security_exception");
            Ok(ServiceFacts {
                service: es.then(|| "elasticsearch".to_owned()),
                unauthenticated: es.then_some(false),
                evidence: evidence(format!("GET / {} {realm}", r.status)),
                ..ServiceFacts::default()
            })
        }
        _ => Ok(ServiceFacts::default()),
    }
}

async fn docker(
    target: &Target,
    port: u16,
    timeout: Duration,
    limits: &Limits,
) -> Result<ServiceFacts, Failure> {
    // 2376 is the TLS port (usually with client certificates, which end the handshake).
    let Some(r) = http_get(target, port, "/version", port == 2376, timeout, limits).await? else {
        return Ok(ServiceFacts::default());
    };
    let v = (r.status == 200).then(|| json(&r.body)).flatten();
    let Some(api) = v.as_ref().and_then(|v| json_str(v, "/ApiVersion")) else {
        return Ok(ServiceFacts::default());
    };
    let version = v.as_ref().and_then(|v| json_str(v, "/Version"));
    Ok(ServiceFacts {
        service: Some("docker".to_owned()),
        product: Some("Docker".to_owned()),
        evidence: evidence(format!(
            "ApiVersion:{api} Version:{}",
            version.as_deref().unwrap_or("?")
        )),
        version,
        unauthenticated: Some(true),
    })
}

async fn kubelet(
    target: &Target,
    port: u16,
    timeout: Duration,
    limits: &Limits,
) -> Result<ServiceFacts, Failure> {
    // 10250 is HTTPS; the read-only port 10255 is plain.
    let Some(r) = http_get(target, port, "/pods", port == 10250, timeout, limits).await? else {
        return Ok(ServiceFacts::default());
    };
    match r.status {
        200 => {
            let text = String::from_utf8_lossy(&r.body[..r.body.len().min(4096)]);
            if !(text.contains("\"kind\":\"PodList\"") || text.contains("\"kind\": \"PodList\"")) {
                return Ok(ServiceFacts::default());
            }
            let pods = json(&r.body)
                .and_then(|v| v.get("items").and_then(|i| i.as_array()).map(Vec::len))
                .map_or_else(|| "PodList".to_owned(), |n| format!("PodList, {n} pods"));
            Ok(ServiceFacts {
                service: Some("kubelet".to_owned()),
                product: Some("kubelet".to_owned()),
                unauthenticated: Some(true),
                evidence: evidence(format!("GET /pods: {pods}")),
                ..ServiceFacts::default()
            })
        }
        401 | 403 => Ok(ServiceFacts {
            service: Some("kubelet".to_owned()),
            product: Some("kubelet".to_owned()),
            unauthenticated: Some(false),
            evidence: evidence(format!("GET /pods: {}", r.status)),
            ..ServiceFacts::default()
        }),
        _ => Ok(ServiceFacts::default()),
    }
}

// ---------------------------------------------------------------------------------------------
// memcached (text protocol).

fn memcached_complete(b: &[u8]) -> bool {
    b.ends_with(b"END\r\n")
        || (b.ends_with(b"\r\n")
            && (b.starts_with(b"ERROR")
                || b.starts_with(b"CLIENT_ERROR")
                || b.starts_with(b"SERVER_ERROR")))
}

async fn memcached(conn: &mut Conn) -> Result<ServiceFacts, Failure> {
    let reply = conn.exchange(b"stats\r\n", memcached_complete).await?;
    let text = String::from_utf8_lossy(&reply);
    if text.starts_with("STAT ") {
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("STAT version "))
            .map(|v| v.trim().chars().take(32).collect::<String>());
        return Ok(ServiceFacts {
            service: Some("memcached".to_owned()),
            product: Some("memcached".to_owned()),
            evidence: evidence(format!(
                "STAT version {}",
                version.as_deref().unwrap_or("?")
            )),
            version,
            unauthenticated: Some(true),
        });
    }
    if text.starts_with("CLIENT_ERROR") || text.starts_with("SERVER_ERROR") {
        // SASL-enabled memcached refuses the text protocol.
        return Ok(ServiceFacts {
            service: Some("memcached".to_owned()),
            unauthenticated: Some(false),
            evidence: evidence(first_line(&reply)),
            ..ServiceFacts::default()
        });
    }
    Ok(ServiceFacts::default())
}

// ---------------------------------------------------------------------------------------------
// MongoDB (OP_MSG with hand-built BSON).

const OP_REPLY: i32 = 1;
const OP_MSG: i32 = 2013;

/// A BSON value we send.
enum Bson<'a> {
    Int(i32),
    Bool(bool),
    Str(&'a str),
}

fn bson_doc(elements: &[(&str, Bson<'_>)]) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    for (name, value) in elements {
        let kind = match value {
            Bson::Int(_) => 0x10,
            Bson::Bool(_) => 0x08,
            Bson::Str(_) => 0x02,
        };
        d.push(kind);
        d.extend_from_slice(name.as_bytes());
        d.push(0);
        match value {
            Bson::Int(i) => d.extend_from_slice(&i.to_le_bytes()),
            Bson::Bool(b) => d.push(u8::from(*b)),
            Bson::Str(s) => {
                d.extend_from_slice(&(s.len() as i32 + 1).to_le_bytes());
                d.extend_from_slice(s.as_bytes());
                d.push(0);
            }
        }
    }
    d.push(0);
    let len = d.len() as i32;
    d[..4].copy_from_slice(&len.to_le_bytes());
    d
}

/// An `OP_MSG` with one body section.
pub(crate) fn op_msg(request_id: i32, doc: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(21 + doc.len());
    let len = (16 + 4 + 1 + doc.len()) as i32;
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(&request_id.to_le_bytes());
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(&OP_MSG.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    m.push(0); // section kind 0: body
    m.extend_from_slice(doc);
    m
}

fn mongo_complete(b: &[u8]) -> bool {
    le_i32(b, 0).is_some_and(|len| len >= 0 && b.len() >= len as usize)
}

fn le_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The top-level fields of a BSON document that the checks read.
#[derive(Debug, Default)]
struct MongoReply {
    ok: Option<bool>,
    errmsg: Option<String>,
    code_name: Option<String>,
    version: Option<String>,
    databases: Option<usize>,
    max_wire_version: Option<i32>,
}

/// The reply document of an `OP_MSG` (or legacy `OP_REPLY`) message.
fn mongo_reply(msg: &[u8]) -> Option<MongoReply> {
    let doc = match le_i32(msg, 12)? {
        OP_MSG => {
            // flagBits, then sections; the body section has kind 0.
            if *msg.get(20)? != 0 {
                return None;
            }
            msg.get(21..)?
        }
        // responseFlags, cursorID, startingFrom, numberReturned, then the documents.
        OP_REPLY => msg.get(36..)?,
        _ => return None,
    };
    parse_bson(doc)
}

fn parse_bson(doc: &[u8]) -> Option<MongoReply> {
    let len = usize::try_from(le_i32(doc, 0)?).ok()?;
    let doc = doc.get(..len)?;
    let mut reply = MongoReply::default();
    let mut at = 4;
    while at < doc.len() {
        let kind = doc[at];
        if kind == 0 {
            return Some(reply);
        }
        let name_end = at + 1 + doc.get(at + 1..)?.iter().position(|&b| b == 0)?;
        let name = std::str::from_utf8(&doc[at + 1..name_end]).ok()?;
        let v = name_end + 1;
        let string = |v: usize| -> Option<(String, usize)> {
            let n = usize::try_from(le_i32(doc, v)?).ok()?;
            let s = doc.get(v + 4..v + 4 + n.checked_sub(1)?)?;
            Some((String::from_utf8_lossy(s).into_owned(), 4 + n))
        };
        let size = match kind {
            0x01 => {
                if name == "ok" {
                    reply.ok = Some(f64::from_le_bytes(doc.get(v..v + 8)?.try_into().ok()?) == 1.0);
                }
                8
            }
            0x02 | 0x0d | 0x0e => {
                let (s, size) = string(v)?;
                match name {
                    "errmsg" => reply.errmsg = Some(s),
                    "codeName" => reply.code_name = Some(s),
                    "version" => reply.version = Some(s),
                    _ => {}
                }
                size
            }
            0x03 | 0x04 => {
                let n = usize::try_from(le_i32(doc, v)?).ok()?;
                if kind == 0x04 && name == "databases" {
                    reply.databases = Some(count_elements(doc.get(v..v + n)?));
                }
                n
            }
            0x05 => 4 + 1 + usize::try_from(le_i32(doc, v)?).ok()?,
            0x06 | 0x0a | 0x7f | 0xff => 0,
            0x07 => 12,
            0x08 => {
                if name == "ok" {
                    reply.ok = Some(*doc.get(v)? == 1);
                }
                1
            }
            0x09 | 0x11 | 0x12 => {
                if name == "ok" && kind == 0x12 {
                    reply.ok = Some(i64::from_le_bytes(doc.get(v..v + 8)?.try_into().ok()?) == 1);
                }
                8
            }
            0x0b => {
                let a = doc.get(v..)?.iter().position(|&b| b == 0)?;
                let b = doc.get(v + a + 1..)?.iter().position(|&b| b == 0)?;
                a + b + 2
            }
            0x0c => string(v)?.1 + 12,
            0x0f => usize::try_from(le_i32(doc, v)?).ok()?,
            0x10 => {
                let i = le_i32(doc, v)?;
                match name {
                    "ok" => reply.ok = Some(i == 1),
                    "maxWireVersion" => reply.max_wire_version = Some(i),
                    _ => {}
                }
                4
            }
            0x13 => 16,
            _ => return None,
        };
        at = v.checked_add(size)?;
    }
    None
}

/// Elements of a BSON array (or document); 0 when malformed.
fn count_elements(doc: &[u8]) -> usize {
    fn walk(doc: &[u8]) -> Option<usize> {
        let mut n = 0;
        let mut at = 4;
        while at < doc.len() {
            let kind = doc[at];
            if kind == 0 {
                return Some(n);
            }
            let name_end = at + 1 + doc.get(at + 1..)?.iter().position(|&b| b == 0)?;
            let v = name_end + 1;
            let size = match kind {
                0x03 | 0x04 | 0x0f => usize::try_from(le_i32(doc, v)?).ok()?,
                0x02 | 0x0d | 0x0e => 4 + usize::try_from(le_i32(doc, v)?).ok()?,
                0x01 | 0x09 | 0x11 | 0x12 => 8,
                0x10 => 4,
                0x08 => 1,
                0x07 => 12,
                0x13 => 16,
                0x05 => 5 + usize::try_from(le_i32(doc, v)?).ok()?,
                0x06 | 0x0a | 0x7f | 0xff => 0,
                _ => return None,
            };
            n += 1;
            at = v.checked_add(size)?;
        }
        None
    }
    walk(doc).unwrap_or(0)
}

async fn mongodb(conn: &mut Conn) -> Result<ServiceFacts, Failure> {
    let hello = op_msg(
        1,
        &bson_doc(&[("hello", Bson::Int(1)), ("$db", Bson::Str("admin"))]),
    );
    let reply = conn.exchange(&hello, mongo_complete).await?;
    let Some(hello) = mongo_reply(&reply) else {
        return Ok(ServiceFacts::default());
    };
    let mut facts = named("mongodb");
    facts.product = Some("MongoDB".to_owned());
    if hello.ok != Some(true) {
        // A MongoDB that refuses even `hello` is protected in some other way.
        facts.evidence = evidence(format!(
            "hello: {}",
            hello.code_name.or(hello.errmsg).unwrap_or_default()
        ));
        return Ok(facts);
    }
    let build = op_msg(
        2,
        &bson_doc(&[("buildInfo", Bson::Int(1)), ("$db", Bson::Str("admin"))]),
    );
    if let Ok(reply) = conn.exchange(&build, mongo_complete).await {
        facts.version = mongo_reply(&reply)
            .and_then(|r| r.version)
            .map(|v| printable(v.as_bytes()).chars().take(32).collect());
    }
    let list = op_msg(
        3,
        &bson_doc(&[
            ("listDatabases", Bson::Int(1)),
            ("nameOnly", Bson::Bool(true)),
            ("$db", Bson::Str("admin")),
        ]),
    );
    let reply = conn.exchange(&list, mongo_complete).await?;
    let Some(list) = mongo_reply(&reply) else {
        return Ok(facts);
    };
    if list.ok == Some(true) {
        facts.unauthenticated = Some(true);
        facts.evidence = evidence(format!(
            "listDatabases without auth: {} databases",
            list.databases.unwrap_or(0)
        ));
    } else {
        let why = list
            .code_name
            .clone()
            .or(list.errmsg.clone())
            .unwrap_or_default();
        let protected = why.contains("Unauthorized")
            || list
                .errmsg
                .as_deref()
                .is_some_and(|m| m.contains("requires authentication"));
        facts.unauthenticated = protected.then_some(false);
        facts.evidence = evidence(format!("listDatabases: {why}"));
    }
    Ok(facts)
}

// ---------------------------------------------------------------------------------------------
// RDP: X.224 Connection Request (ISO 8073 over TPKT, RFC 1006) with an RDP Negotiation Request
// ([MS-RDPBCGR] 2.2.1.1).

/// TPKT header, X.224 CR TPDU, RDP_NEG_REQ asking for TLS and CredSSP.
pub(crate) const RDP_CONNECTION_REQUEST: [u8; 19] = [
    0x03, 0x00, 0x00, 0x13, // TPKT: version 3, length 19
    0x0e, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x00, // X.224: LI 14, CR, dst-ref, src-ref, class 0
    0x01, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00,
    0x00, // RDP_NEG_REQ: PROTOCOL_SSL | PROTOCOL_HYBRID
];

fn tpkt_complete(b: &[u8]) -> bool {
    b.len() >= 4 && b.len() >= usize::from(u16::from_be_bytes([b[2], b[3]]))
}

async fn rdp(conn: &mut Conn) -> Result<ServiceFacts, Failure> {
    let reply = conn
        .exchange(&RDP_CONNECTION_REQUEST, tpkt_complete)
        .await?;
    // TPKT version 3, then the X.224 TPDU: length indicator, code 0xD0 (Connection Confirm).
    if !(reply.len() >= 7 && reply[0] == 3 && reply[5] & 0xf0 == 0xd0) {
        return Ok(ServiceFacts::default());
    }
    let negotiation = match reply.get(11..19) {
        Some([0x02, _, _, _, p0, p1, p2, p3]) => match u32::from_le_bytes([*p0, *p1, *p2, *p3]) {
            0 => "selected standard RDP security".to_owned(),
            1 => "selected TLS".to_owned(),
            2 => "selected CredSSP (NLA)".to_owned(),
            4 => "selected RDSTLS".to_owned(),
            8 => "selected CredSSP with early user auth".to_owned(),
            p => format!("selected protocol {p}"),
        },
        Some([0x03, _, _, _, c0, c1, c2, c3]) => {
            format!(
                "negotiation failure {}",
                u32::from_le_bytes([*c0, *c1, *c2, *c3])
            )
        }
        // RDP 4.0/5.x servers answer without a negotiation response: standard security only.
        _ => "no negotiation (standard RDP security)".to_owned(),
    };
    Ok(ServiceFacts {
        service: Some("rdp".to_owned()),
        evidence: evidence(format!("X.224 Connection Confirm, {negotiation}")),
        ..ServiceFacts::default()
    })
}

// ---------------------------------------------------------------------------------------------
// SMB2 NEGOTIATE ([MS-SMB2] 2.2.3) over direct TCP (4-byte length prefix).

pub(crate) fn smb2_negotiate() -> Vec<u8> {
    let mut smb = Vec::with_capacity(108);
    smb.extend_from_slice(b"\xfeSMB");
    smb.extend_from_slice(&64u16.to_le_bytes()); // StructureSize
    smb.extend_from_slice(&0u16.to_le_bytes()); // CreditCharge
    smb.extend_from_slice(&0u32.to_le_bytes()); // Status
    smb.extend_from_slice(&0u16.to_le_bytes()); // Command: NEGOTIATE
    smb.extend_from_slice(&1u16.to_le_bytes()); // CreditRequest
    smb.extend_from_slice(&0u32.to_le_bytes()); // Flags
    smb.extend_from_slice(&0u32.to_le_bytes()); // NextCommand
    smb.extend_from_slice(&0u64.to_le_bytes()); // MessageId
    smb.extend_from_slice(&0u32.to_le_bytes()); // Reserved (ProcessId)
    smb.extend_from_slice(&0u32.to_le_bytes()); // TreeId
    smb.extend_from_slice(&0u64.to_le_bytes()); // SessionId
    smb.extend_from_slice(&[0; 16]); // Signature
    const DIALECTS: [u16; 4] = [0x0202, 0x0210, 0x0300, 0x0302];
    smb.extend_from_slice(&36u16.to_le_bytes()); // StructureSize
    smb.extend_from_slice(&(DIALECTS.len() as u16).to_le_bytes());
    smb.extend_from_slice(&1u16.to_le_bytes()); // SecurityMode: signing enabled
    smb.extend_from_slice(&0u16.to_le_bytes()); // Reserved
    smb.extend_from_slice(&0u32.to_le_bytes()); // Capabilities
    smb.extend_from_slice(b"netpatrol-probe\0"); // ClientGuid
    smb.extend_from_slice(&0u64.to_le_bytes()); // ClientStartTime
    for d in DIALECTS {
        smb.extend_from_slice(&d.to_le_bytes());
    }
    let mut packet = vec![0u8];
    packet.extend_from_slice(&(smb.len() as u32).to_be_bytes()[1..]);
    packet.extend_from_slice(&smb);
    packet
}

fn netbios_complete(b: &[u8]) -> bool {
    b.len() >= 4
        && b.len() >= 4 + (usize::from(b[1]) << 16 | usize::from(b[2]) << 8 | usize::from(b[3]))
}

async fn smb(conn: &mut Conn) -> Result<ServiceFacts, Failure> {
    let reply = conn.exchange(&smb2_negotiate(), netbios_complete).await?;
    let smb = reply.get(4..).unwrap_or_default();
    if smb.starts_with(b"\xffSMB") {
        return Ok(ServiceFacts {
            service: Some("smb".to_owned()),
            product: Some("SMB".to_owned()),
            version: Some("1".to_owned()),
            evidence: Some("SMB1 answer to an SMB2 NEGOTIATE".to_owned()),
            ..ServiceFacts::default()
        });
    }
    if !smb.starts_with(b"\xfeSMB") {
        return Ok(ServiceFacts::default());
    }
    let mut facts = named("smb");
    facts.product = Some("SMB".to_owned());
    let status = le_u32(smb, 8).unwrap_or(u32::MAX);
    // NEGOTIATE response body: StructureSize 65, SecurityMode, DialectRevision.
    match (status, le_u16(smb, 64), le_u16(smb, 66), le_u16(smb, 68)) {
        (0, Some(65), Some(mode), Some(dialect)) => {
            let name = match dialect {
                0x0202 => "2.0.2".to_owned(),
                0x0210 => "2.1".to_owned(),
                0x0300 => "3.0".to_owned(),
                0x0302 => "3.0.2".to_owned(),
                0x0311 => "3.1.1".to_owned(),
                0x02ff => "2.x".to_owned(),
                d => format!("0x{d:04x}"),
            };
            let signing = if mode & 0x02 != 0 {
                "signing required"
            } else {
                "signing not required"
            };
            facts.evidence = evidence(format!("SMB2 NEGOTIATE: dialect {name}, {signing}"));
            facts.version = Some(name);
        }
        (status, ..) => {
            facts.evidence = evidence(format!("SMB2 NEGOTIATE status 0x{status:08x}"));
        }
    }
    Ok(facts)
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: SSLRequest (protocol 3, code 80877103).

pub(crate) const PG_SSL_REQUEST: [u8; 8] = [0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f];

async fn postgresql(conn: &mut Conn) -> Result<ServiceFacts, Failure> {
    let reply = conn.exchange(&PG_SSL_REQUEST, |b| !b.is_empty()).await?;
    let evidence = match reply.as_slice() {
        [b'S'] => "SSLRequest: S (TLS offered)",
        [b'N'] => "SSLRequest: N (no TLS)",
        // Servers older than 7.0 answer an ErrorResponse.
        [b'E', ..] => "SSLRequest: error response",
        _ => return Ok(ServiceFacts::default()),
    };
    Ok(ServiceFacts {
        service: Some("postgresql".to_owned()),
        product: Some("PostgreSQL".to_owned()),
        evidence: Some(evidence.to_owned()),
        ..ServiceFacts::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Microsoft SQL Server: TDS PRELOGIN ([MS-TDS] 2.2.6.5).

pub(crate) fn tds_prelogin() -> Vec<u8> {
    // Options: VERSION, ENCRYPTION, INSTOPT, THREADID, MARS, then the terminator.
    let options: [(u8, &[u8]); 5] = [
        (0x00, &[0, 0, 0, 0, 0, 0]),
        (0x01, &[0x00]), // ENCRYPT_OFF: offers encryption of the login only
        (0x02, &[0x00]), // default instance
        (0x03, &[0, 0, 0, 0]),
        (0x04, &[0x00]),
    ];
    let mut head = Vec::new();
    let mut data = Vec::new();
    let data_start = options.len() * 5 + 1;
    for (token, value) in options {
        head.push(token);
        head.extend_from_slice(&((data_start + data.len()) as u16).to_be_bytes());
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        data.extend_from_slice(value);
    }
    head.push(0xff);
    let len = (8 + head.len() + data.len()) as u16;
    let mut packet = vec![0x12, 0x01];
    packet.extend_from_slice(&len.to_be_bytes());
    packet.extend_from_slice(&[0x00, 0x00, 0x01, 0x00]); // SPID, PacketID, Window
    packet.extend_from_slice(&head);
    packet.extend_from_slice(&data);
    packet
}

fn tds_complete(b: &[u8]) -> bool {
    be_u16(b, 2).is_some_and(|len| b.len() >= usize::from(len))
}

async fn mssql(conn: &mut Conn) -> Result<ServiceFacts, Failure> {
    let reply = conn.exchange(&tds_prelogin(), tds_complete).await?;
    // Tabular result (0x04); the payload is the server's PRELOGIN option list.
    if reply.len() < 9 || reply[0] != 0x04 {
        return Ok(ServiceFacts::default());
    }
    let payload = &reply[8..reply
        .len()
        .min(be_u16(&reply, 2).map_or(0, usize::from).max(8))];
    let mut version = None;
    let mut encryption = None;
    let mut at = 0;
    while let Some(&token) = payload.get(at) {
        if token == 0xff {
            break;
        }
        let (Some(offset), Some(len)) = (be_u16(payload, at + 1), be_u16(payload, at + 3)) else {
            break;
        };
        let value = payload.get(usize::from(offset)..usize::from(offset) + usize::from(len));
        match (token, value) {
            (0x00, Some([major, minor, b0, b1, ..])) => {
                version = Some(format!(
                    "{major}.{minor}.{}",
                    u16::from_be_bytes([*b0, *b1])
                ));
            }
            (0x01, Some([e, ..])) => encryption = Some(*e),
            _ => {}
        }
        at += 5;
    }
    let Some(version) = version else {
        return Ok(ServiceFacts::default());
    };
    let release = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u8>().ok())
        .and_then(|major| {
            Some(match major {
                8 => "2000",
                9 => "2005",
                10 => "2008",
                11 => "2012",
                12 => "2014",
                13 => "2016",
                14 => "2017",
                15 => "2019",
                16 => "2022",
                17 => "2025",
                _ => return None,
            })
        });
    let encryption = match encryption {
        Some(0) => "encryption off",
        Some(1) => "encryption on",
        Some(2) => "encryption not supported",
        Some(3) => "encryption required",
        _ => "encryption unknown",
    };
    Ok(ServiceFacts {
        service: Some("mssql".to_owned()),
        product: Some("Microsoft SQL Server".to_owned()),
        evidence: evidence(format!(
            "TDS PRELOGIN: version {version}{}, {encryption}",
            release
                .map(|r| format!(" (SQL Server {r})"))
                .unwrap_or_default()
        )),
        version: Some(version),
        ..ServiceFacts::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Oracle TNS: a CONNECT to a service name that does not exist; the listener refuses it (and
// says its version), or asks for a resend, either of which names it.

const TNS_CONNECT_DATA: &str = "(CONNECT_DATA=(SERVICE_NAME=netpatrol-probe)(CID=(PROGRAM=netpatrol)(HOST=netpatrol)(USER=netpatrol)))";

pub(crate) fn tns_connect() -> Vec<u8> {
    let data = TNS_CONNECT_DATA.as_bytes();
    let header_len = 58usize;
    let total = (header_len + data.len()) as u16;
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&total.to_be_bytes()); // packet length
    p.extend_from_slice(&[0, 0]); // packet checksum
    p.push(1); // type: CONNECT
    p.push(0); // reserved
    p.extend_from_slice(&[0, 0]); // header checksum
    p.extend_from_slice(&0x0136u16.to_be_bytes()); // version 310
    p.extend_from_slice(&0x012cu16.to_be_bytes()); // compatible with 300
    p.extend_from_slice(&0u16.to_be_bytes()); // service options
    p.extend_from_slice(&0x0800u16.to_be_bytes()); // SDU
    p.extend_from_slice(&0x7fffu16.to_be_bytes()); // TDU
    p.extend_from_slice(&0x7f08u16.to_be_bytes()); // NT protocol characteristics
    p.extend_from_slice(&0u16.to_be_bytes()); // line turnaround
    p.extend_from_slice(&1u16.to_be_bytes()); // value of 1 in hardware
    p.extend_from_slice(&(data.len() as u16).to_be_bytes()); // connect data length
    p.extend_from_slice(&(header_len as u16).to_be_bytes()); // connect data offset
    p.extend_from_slice(&0u32.to_be_bytes()); // max receivable connect data
    p.extend_from_slice(&[0, 0]); // connect flags
    p.resize(header_len, 0); // trace items, connection id
    p.extend_from_slice(data);
    p
}

fn tns_complete(b: &[u8]) -> bool {
    be_u16(b, 0).is_some_and(|len| len >= 8 && b.len() >= usize::from(len))
}

async fn oracle_tns(conn: &mut Conn) -> Result<ServiceFacts, Failure> {
    let reply = conn.exchange(&tns_connect(), tns_complete).await?;
    if reply.len() < 8 || be_u16(&reply, 0).is_none_or(|l| l < 8) {
        return Ok(ServiceFacts::default());
    }
    let kind = match reply[4] {
        2 => "ACCEPT",
        4 => "REFUSE",
        5 => "REDIRECT",
        11 => "RESEND",
        _ => return Ok(ServiceFacts::default()),
    };
    let text = String::from_utf8_lossy(reply.get(8..).unwrap_or_default()).into_owned();
    let number_after = |key: &str| -> Option<u64> {
        let at = text.find(key)? + key.len();
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let version = number_after("VSNNUM=").map(|v| {
        format!(
            "{}.{}.{}.{}.{}",
            (v >> 24) & 0xff,
            (v >> 20) & 0xf,
            (v >> 12) & 0xff,
            (v >> 8) & 0xf,
            v & 0xff
        )
    });
    let err = number_after("ERR=")
        .map(|e| format!(" ERR={e}"))
        .unwrap_or_default();
    Ok(ServiceFacts {
        service: Some("oracle-tns".to_owned()),
        product: Some("Oracle TNS listener".to_owned()),
        evidence: evidence(format!("TNS {kind}{err}")),
        version,
        ..ServiceFacts::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_frames() {
        assert!(resp_complete(b"+PONG\r\n"));
        assert!(!resp_complete(b"+PON"));
        assert!(!resp_complete(b"$10\r\n12345"));
        assert!(resp_complete(b"$5\r\n12345\r\n"));
        assert!(resp_complete(b"$-1\r\n"));
        assert!(resp_complete(b"$x\r\n"));
    }

    #[test]
    fn packets_have_their_declared_lengths() {
        assert_eq!(RDP_CONNECTION_REQUEST.len(), 19);
        let smb = smb2_negotiate();
        assert_eq!(smb.len(), 4 + 64 + 36 + 8);
        assert!(netbios_complete(&smb));
        let tds = tds_prelogin();
        assert_eq!(usize::from(be_u16(&tds, 2).unwrap()), tds.len());
        let tns = tns_connect();
        assert_eq!(usize::from(be_u16(&tns, 0).unwrap()), tns.len());
        assert_eq!(&tns[58..], TNS_CONNECT_DATA.as_bytes());
        let msg = op_msg(7, &bson_doc(&[("hello", Bson::Int(1))]));
        assert!(mongo_complete(&msg));
    }

    #[test]
    fn bson_round_trip() {
        let doc = bson_doc(&[
            ("ok", Bson::Int(1)),
            ("version", Bson::Str("7.0.5")),
            ("errmsg", Bson::Str("x")),
        ]);
        let r = parse_bson(&doc).unwrap();
        assert_eq!(r.ok, Some(true));
        assert_eq!(r.version.as_deref(), Some("7.0.5"));
        // Every prefix of a document, and garbage, parse to None without panicking.
        for end in 0..doc.len() {
            let _ = parse_bson(&doc[..end]);
            let _ = mongo_reply(&doc[..end]);
        }
        let _ = parse_bson(&[0xff, 0xff, 0xff, 0x7f, 0x02, 0]);
        let _ = count_elements(&[5, 0, 0, 0, 0x04, b'0', 0, 0xff, 0xff]);
    }
}
