//! A tiny authoritative DNS server over UDP on loopback, for the reverse DNS probe.
//!
//! It answers PTR questions from a fixed map (`"1.0.0.127.in-addr.arpa"` → `"host.lab.test"`)
//! and says NXDOMAIN to everything else. [`DnsServer::silent`] reads queries and never answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A running test DNS server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl DnsServer {
    /// Answers PTR queries for the names in `ptr` (reverse names and targets without trailing
    /// dots, compared case-insensitively), NXDOMAIN for the rest.
    pub async fn start(ptr: &[(&str, &str)]) -> DnsServer {
        let map: HashMap<String, String> = ptr
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
            .collect();
        let map = Arc::new(map);
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind dns server");
        let addr = socket.local_addr().expect("dns server address");
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n], &map) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        DnsServer { addr, task }
    }

    /// A server that reads every query and answers none.
    pub async fn silent() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind dns server");
        let addr = socket.local_addr().expect("dns server address");
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let _ = socket.recv_from(&mut buf).await;
            }
        });
        DnsServer { addr, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const TYPE_PTR: u16 = 12;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_FORMERR: u16 = 1;

/// The reply to one query, or `None` for something that is not a query at all.
fn answer(query: &[u8], map: &HashMap<String, String>) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let id = &query[0..2];
    let flags = u16::from_be_bytes([query[2], query[3]]);
    if flags & 0x8000 != 0 {
        return None; // a response, not a query
    }
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    // QR, opcode copied, AA, RD copied.
    let mut reply_flags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100);
    let mut reply = id.to_vec();

    let question = (qdcount == 1).then(|| question(&query[12..])).flatten();
    let Some((name, qtype, qclass, question_len)) = question else {
        reply_flags |= RCODE_FORMERR;
        reply.extend_from_slice(&reply_flags.to_be_bytes());
        reply.extend_from_slice(&[0; 8]);
        return Some(reply);
    };

    let target = (qtype == TYPE_PTR && qclass == CLASS_IN)
        .then(|| map.get(&name.to_ascii_lowercase()))
        .flatten();
    if target.is_none() && !map.contains_key(&name.to_ascii_lowercase()) {
        reply_flags |= RCODE_NXDOMAIN;
    }
    reply.extend_from_slice(&reply_flags.to_be_bytes());
    reply.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    reply.extend_from_slice(&u16::from(target.is_some()).to_be_bytes()); // ANCOUNT
    reply.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
    reply.extend_from_slice(&query[12..12 + question_len]);
    if let Some(target) = target {
        let rdata = encode_name(target);
        reply.extend_from_slice(&[0xc0, 0x0c]); // the name in the question
        reply.extend_from_slice(&TYPE_PTR.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&60u32.to_be_bytes()); // TTL
        reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        reply.extend_from_slice(&rdata);
    }
    Some(reply)
}

/// Parses the question: (name without trailing dot, type, class, bytes used).
fn question(buf: &[u8]) -> Option<(String, u16, u16, usize)> {
    let mut labels = Vec::new();
    let mut at = 0;
    loop {
        let len = usize::from(*buf.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // no compression in a question we accept
        }
        labels.push(String::from_utf8_lossy(buf.get(at..at + len)?).into_owned());
        at += len;
    }
    let qtype = u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]);
    let qclass = u16::from_be_bytes([*buf.get(at + 2)?, *buf.get(at + 3)?]);
    Some((labels.join("."), qtype, qclass, at + 4))
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}
