//! TLS and TLCP posture of one TCP service.
//!
//! Stage: probe. Input: a [`Target`], a port, a [`TlsSpec`] (timeout, the host's names, trust
//! anchors, the clock) and the scope's [`Limits`]. Output: [`TlsFacts`] (protocol versions,
//! every accepted suite per version, TLCP, weak cipher suites by class, certificate facts, the
//! exchanges made), `Ok(None)` for a port that does not speak TLS or TLCP, or a [`Failure`]
//! when the port gave no usable answer.
//!
//! How: one quick ClientHello first (everything from TLS 1.0 to 1.3 offered); only a port
//! that answers it with TLS records (or a TLCP port that answers a TLCP hello) gets the full
//! enumeration. Then, concurrently, each on its own connection chain: SSLv3, TLS 1.0, 1.1 and
//! 1.2 offered as the maximum with hand-built hellos (accepted only when the ServerHello names
//! exactly that version), TLS 1.3 through `supported_versions` (a HelloRetryRequest counts),
//! TLCP (GB/T 38636, version 0x0101), and a rustls handshake for the certificate chain. Each
//! accepted version gets the whole suite list offered, the chosen suite removed and the rest
//! offered again until the server refuses (at most [`MAX_ROUNDS`] rounds): that lists every
//! accepted suite in the server's order. The TLS 1.2 offer also carries the four TLCP suites
//! (gateways that take SM suites in a TLS 1.2 hello). The TLCP hello carries extensions first;
//! a server that closes on it without an alert (GmSSL's) is asked again without them, and the
//! hello that worked is recorded. Every handshake stops at the server's first flight, except
//! the rustls one; each is recorded as an [`Exchange`].
//!
//! Invariants: every connection takes a `Limits` slot and rate attempt (the probe itself holds
//! none while it waits for its handshakes, so nested waits cannot deadlock); every step runs
//! under `spec.timeout` and the whole probe under [`BUDGET_FACTOR`] times it; at most
//! [`wire::MAX_HANDSHAKE`] bytes are buffered per connection; nothing from the network is
//! unwrapped.

mod cert;
mod sm;
pub mod suites;
mod verify;
mod version;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

pub use cert::{
    CertFacts, TlsError, Trust, anchors_from_pem_file, facts as cert_facts, name_matches,
    signature_name,
};
pub use sm::{DEFAULT_DISTID, tlcp_usage_problems};
pub use version::TlsVersion;

use self::wire::{
    Flight, Hello, Parsed, SSL3, ServerHello, TLCP, TLS10, TLS11, TLS12, TLS13, WireError,
};
use super::{Failure, Reason, tcp};
use crate::scope::{Limits, Target};

/// Most handshakes of one remove-the-chosen loop (a version's whole accepted list).
pub const MAX_ROUNDS: usize = 128;
/// Most exchanges recorded per probe.
const MAX_EXCHANGES: usize = 1024;
/// The whole probe of one port gets this many times `spec.timeout`.
pub const BUDGET_FACTOR: u32 = 4;
/// Bytes buffered from one connection before giving up on the flight.
const MAX_BUFFER: usize = wire::MAX_HANDSHAKE + 2 * wire::MAX_RECORD;

/// How a TLS probe behaves.
#[derive(Debug, Clone)]
pub struct TlsSpec {
    /// Deadline of each handshake.
    pub timeout: Duration,
    /// Host name sent in SNI (and handed to rustls), if any.
    pub sni: Option<String>,
    /// The names the host goes by (PTR, project asset names): the certificate should cover one.
    pub names: Vec<String>,
    pub trust: Arc<Trust>,
    /// The clock for `days_left`.
    pub now: DateTime<Utc>,
}

/// The TLS/TLCP posture of one service. Serialises to the contract's `tls` object (plus
/// extra fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFacts {
    /// Accepted protocol versions, oldest first, SSLv3 to TLS 1.3 (TLCP is `tlcp`).
    pub versions: Vec<TlsVersion>,
    /// The endpoint completes a TLCP (GB/T 38636, 0x0101) ServerHello.
    pub tlcp: bool,
    /// SM suites accepted: TLCP ("ECC_SM4_CBC_SM3", ...), in a TLS 1.2 hello, and RFC 8998
    /// ("TLS_SM4_GCM_SM3", ...).
    pub sm_suites: Vec<String>,
    /// Every accepted suite per version (TLCP included), in the order the server picked them
    /// from ever smaller offers: its preference when it enforces one, else the probe's offer
    /// order. IANA names; GB/T 38636 names for the TLCP suites, which IANA does not list.
    pub accepted_suites: BTreeMap<TlsVersion, Vec<String>>,
    /// TLCP key exchanges accepted: "ECC" (SM2 encryption of the pre-master secret) and/or
    /// "ECDHE" (SM2 key agreement).
    pub tlcp_key_exchange: Vec<String>,
    /// Which hellos got an SM suite: "tlcp" (TLCP hello with extensions),
    /// "tlcp_without_extensions" (the retry after a silent close), "tls12" (SM suites inside
    /// a TLS 1.2 hello), "tls13" (RFC 8998).
    pub sm_hellos: Vec<String>,
    /// IANA names of accepted suites in a suite-level weak class (null, export and single
    /// DES, anon, rc4, 3des), over all versions.
    pub weak_ciphers: Vec<String>,
    /// Per accepted version (SSLv3 to TLS 1.2): its weak classes, from `null`, `export`,
    /// `anon`, `rc4`, `3des` (some accepted suite is of that kind), `cbc_only` (no AEAD suite
    /// accepted) and `no_forward_secrecy` (no ECDHE/DHE suite accepted). Empty = clean.
    pub cipher_classes: BTreeMap<TlsVersion, Vec<String>>,
    /// The suite the server picked from the full offer, per accepted version.
    pub preferred_suites: BTreeMap<TlsVersion, String>,
    /// The certificate of TLS (through rustls when it can, else from the plaintext
    /// Certificate message); the TLCP signing certificate for a TLCP-only endpoint.
    pub cert: Option<CertFacts>,
    /// TLCP signing and encryption certificates, in that order.
    pub tlcp_certs: Vec<CertFacts>,
    /// What is wrong with the TLCP certificate roles (GB/T 38636: the signing certificate
    /// signs, the encryption certificate enciphers or agrees keys), from
    /// `signing_certificate_missing`, `encryption_certificate_missing`,
    /// `signing_certificate_cannot_sign`, `encryption_certificate_cannot_encrypt`, `swapped`;
    /// empty when fine or not TLCP.
    pub tlcp_cert_problems: Vec<String>,
    /// Steps that got no answer ("TLSv1.1: timeout"): the facts above may miss what they
    /// would have found.
    pub incomplete: Vec<String>,
    /// Handshakes this probe made.
    pub handshakes: u32,
    pub elapsed_ms: u64,
    /// The exchanges that produced these facts, in the order they ended (at most
    /// [`MAX_EXCHANGES`]): for `netpatrol probe`, not for the report or the store.
    #[serde(skip)]
    pub exchanges: Vec<Exchange>,
}

/// One ClientHello sent and what came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exchange {
    /// What the exchange was for ("TLSv1.2", "TLCP", "detect", "rustls").
    pub step: String,
    /// The hello: record and client version, suites offered, extensions (left out of the
    /// JSON for exchanges that send no ClientHello).
    #[serde(skip_serializing_if = "HelloSummary::is_empty")]
    pub sent: HelloSummary,
    /// What came back, in words: "ServerHello TLSv1.2 TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    /// 2 certificates", "alert 40", "closed without answer", ...
    pub answer: String,
    pub elapsed_ms: u64,
}

/// A ClientHello, summarised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HelloSummary {
    /// Version of the record header, as hex ("0x0301").
    pub record_version: String,
    /// `client_version` of the hello (a contract name, or hex when none).
    pub client_version: String,
    /// `supported_versions` offered.
    pub supported_versions: Vec<String>,
    /// Number of suites offered.
    pub suites: usize,
    /// Extension names in sent order.
    pub extensions: Vec<String>,
}

fn version_label(v: u16) -> String {
    TlsVersion::from_wire(v).map_or_else(|| format!("0x{v:04x}"), |t| t.to_string())
}

impl HelloSummary {
    /// Nothing known of a hello (an exchange that sent none).
    pub fn is_empty(&self) -> bool {
        *self == HelloSummary::default()
    }

    fn of(hello: &[u8]) -> HelloSummary {
        let Some(info) = wire::parse_client_hello(hello) else {
            return HelloSummary::default();
        };
        HelloSummary {
            record_version: format!("0x{:04x}", info.record_version),
            client_version: version_label(info.client_version),
            supported_versions: info
                .supported_versions
                .iter()
                .map(|&v| version_label(v))
                .collect(),
            suites: info.suites.len(),
            extensions: info
                .extensions
                .iter()
                .map(|&e| wire::extension_name(e))
                .collect(),
        }
    }
}

fn describe(answer: &Result<Answer, Failure>) -> String {
    match answer {
        Ok(Answer::NotTls) => "not TLS".into(),
        Ok(Answer::Tls(f)) => {
            let mut parts = Vec::new();
            if let Some(h) = &f.hello {
                let kind = if h.retry_request {
                    "HelloRetryRequest"
                } else {
                    "ServerHello"
                };
                parts.push(format!(
                    "{kind} {} {}",
                    version_label(h.version()),
                    suites::name(h.cipher_suite)
                ));
            }
            if let Some(c) = &f.certs {
                parts.push(format!("{} certificates", c.len()));
            }
            if let Some(a) = f.alert {
                parts.push(format!(
                    "alert {} ({})",
                    a.description,
                    wire::alert_name(a.description)
                ));
            }
            if let Some(p) = f.problem {
                parts.push(p.to_string());
            }
            if parts.is_empty() {
                "empty flight".into()
            } else {
                parts.join(", ")
            }
        }
        Err(e) => format!("{}: {}", e.reason, e.detail),
    }
}

/// What a connection answered to one ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    NotTls,
    Tls(Flight),
}

struct Ctx<'a> {
    addr: SocketAddr,
    spec: &'a TlsSpec,
    limits: &'a Limits,
    /// End of the probe's whole budget.
    budget: Instant,
    handshakes: AtomicU32,
    incomplete: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<Exchange>>,
    /// Whether TLCP hellos go without extensions (a server closed silently on them).
    tlcp_plain: AtomicBool,
}

/// The TLS/TLCP posture of `port` on `target`. `Ok(None)` when the port does not speak TLS or
/// TLCP; `Err` when it gave no usable answer to the first hello (timeout, reset, truncated).
pub async fn probe(
    target: &Target,
    port: u16,
    spec: &TlsSpec,
    limits: &Limits,
) -> Result<Option<TlsFacts>, Failure> {
    let started = Instant::now();
    let ctx = Ctx {
        addr: SocketAddr::new(target.ip(), port),
        spec,
        limits,
        budget: started + spec.timeout * BUDGET_FACTOR,
        handshakes: AtomicU32::new(0),
        incomplete: Mutex::new(Vec::new()),
        exchanges: Mutex::new(Vec::new()),
        tlcp_plain: AtomicBool::new(false),
    };

    // 1. One quick hello: is this TLS at all?
    let detect = ctx.exchange("detect", ctx.detect_hello(), true).await;
    let (first, tlcp_first) = match detect {
        Ok(Answer::Tls(flight)) => (Some(flight), None),
        Ok(Answer::NotTls) => return Ok(None),
        // A TLCP-only server may just hang up on a TLS hello: ask in TLCP before giving up.
        Err(f) if f.reason == Reason::Reset => match ctx.tlcp_round(&suites_tlcp(), true).await {
            Ok(Answer::Tls(flight)) if accepted(&flight, TLCP).is_some() => (None, Some(flight)),
            _ => return Ok(None),
        },
        Err(f) => return Err(f),
    };
    let first_version = first
        .as_ref()
        .and_then(|f| f.hello.as_ref())
        .filter(|h| !h.retry_request || h.version() == TLS13)
        .map(ServerHello::version);

    // 2. Everything else, concurrently.
    let legacy = [SSL3, TLS10, TLS11, TLS12];
    let maybe_13 = first_version.is_none_or(|v| v == TLS13);
    let want_rustls = first_version.is_none_or(|v| v >= TLS12);
    let (v0, v1, v2, v3, tls13, tlcp, rustls_chain) = tokio::join!(
        ctx.version_job(legacy[0]),
        ctx.version_job(legacy[1]),
        ctx.version_job(legacy[2]),
        ctx.version_job(legacy[3]),
        ctx.tls13_job(maybe_13, first_version == Some(TLS13)),
        ctx.tlcp_job(tlcp_first),
        ctx.rustls_job(want_rustls),
    );

    // 3. Facts.
    let mut facts = TlsFacts::default();
    let mut weak: Vec<u16> = Vec::new();
    let mut legacy_certs = None;
    for (v, r) in legacy.iter().zip([v0, v1, v2, v3]) {
        let Some(version) = TlsVersion::from_wire(*v).filter(|_| r.accepted) else {
            continue;
        };
        facts.versions.push(version);
        if let Some(p) = r.preferred {
            facts.preferred_suites.insert(version, suites::name(p));
        }
        facts.cipher_classes.insert(version, r.classes);
        for &s in &r.suites {
            if !suites::weak_classes(s).is_empty() && !weak.contains(&s) {
                weak.push(s);
            }
        }
        let sm: Vec<u16> = r
            .suites
            .iter()
            .copied()
            .filter(|&s| suites::tlcp_suite(s))
            .collect();
        if !sm.is_empty() {
            facts.sm_hellos.push("tls12".into());
            facts.sm_suites.extend(sm.iter().map(|&s| suites::name(s)));
        }
        facts
            .accepted_suites
            .insert(version, r.suites.iter().map(|&s| suites::name(s)).collect());
        if legacy_certs.is_none() {
            legacy_certs = r.certs;
        }
    }
    if tls13.accepted {
        facts.versions.push(TlsVersion::Tls13);
        if let Some(&p) = tls13.suites.first() {
            facts
                .preferred_suites
                .insert(TlsVersion::Tls13, suites::name(p));
        }
        facts.accepted_suites.insert(
            TlsVersion::Tls13,
            tls13.suites.iter().map(|&s| suites::name(s)).collect(),
        );
    }
    facts.weak_ciphers = weak.into_iter().map(suites::name).collect();
    facts.tlcp = tlcp.accepted;
    if tlcp.accepted {
        let names: Vec<String> = tlcp.suites.iter().map(|&s| suites::name(s)).collect();
        facts.sm_suites.splice(0..0, names.iter().cloned());
        facts.accepted_suites.insert(TlsVersion::Tlcp, names);
        for kx in ["ECC", "ECDHE"] {
            if tlcp
                .suites
                .iter()
                .any(|&s| suites::name(s).split('_').next() == Some(kx))
            {
                facts.tlcp_key_exchange.push(kx.into());
            }
        }
        facts.sm_hellos.insert(
            0,
            if ctx.tlcp_plain.load(Ordering::Relaxed) {
                "tlcp_without_extensions".into()
            } else {
                "tlcp".into()
            },
        );
    }
    let sm13: Vec<u16> = tls13
        .suites
        .iter()
        .copied()
        .filter(|s| suites::TLS13_SM_SUITES.contains(s))
        .collect();
    if !sm13.is_empty() {
        facts.sm_hellos.push("tls13".into());
        facts
            .sm_suites
            .extend(sm13.iter().map(|&s| suites::name(s)));
    }

    let mut names = spec.names.clone();
    if let Some(sni) = &spec.sni
        && !names.contains(sni)
    {
        names.push(sni.clone());
    }
    let ip = Some(target.ip());
    let first_certs = first.and_then(|f| f.certs);
    facts.cert = [rustls_chain, first_certs, legacy_certs]
        .into_iter()
        .flatten()
        .find_map(|chain| cert::facts(&chain, &names, ip, &spec.trust, spec.now));
    if let Some(chain) = &tlcp.certs {
        // Signing certificate, then encryption certificate, each judged with the rest as
        // intermediates.
        for i in 0..chain.len().min(2) {
            let mut c = vec![chain[i].clone()];
            c.extend(chain.iter().skip(2).cloned());
            if let Some(f) = cert::facts(&c, &names, ip, &spec.trust, spec.now) {
                facts.tlcp_certs.push(f);
            }
        }
    }
    if tlcp.accepted {
        let usage = |i: usize| facts.tlcp_certs.get(i).map(|c| c.key_usage.as_deref());
        facts.tlcp_cert_problems = sm::tlcp_usage_problems(usage(0), usage(1));
    }
    if facts.cert.is_none() {
        facts.cert = facts.tlcp_certs.first().cloned();
    }
    facts.incomplete =
        std::mem::take(&mut *ctx.incomplete.lock().unwrap_or_else(|e| e.into_inner()));
    facts.handshakes = ctx.handshakes.load(Ordering::Relaxed);
    facts.exchanges = std::mem::take(&mut *ctx.exchanges.lock().unwrap_or_else(|e| e.into_inner()));
    facts.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(Some(facts))
}

/// The ServerHello of `flight` when it chose exactly `version` (a HelloRetryRequest counts for
/// TLS 1.3 only).
fn accepted(flight: &Flight, version: u16) -> Option<&ServerHello> {
    flight
        .hello
        .as_ref()
        .filter(|h| h.version() == version && (!h.retry_request || version == TLS13))
        .filter(|h| version == TLS13 || version == TLCP || h.selected_version.is_none())
}

fn suites_tlcp() -> Vec<u16> {
    suites::TLCP_SUITES.iter().map(|(id, _)| *id).collect()
}

#[derive(Debug, Default)]
struct VersionResult {
    accepted: bool,
    preferred: Option<u16>,
    /// Every accepted suite, in the server's order.
    suites: Vec<u16>,
    classes: Vec<String>,
    certs: Option<Vec<Vec<u8>>>,
}

#[derive(Debug, Default)]
struct Tls13Result {
    accepted: bool,
    /// Every accepted suite, in the server's order.
    suites: Vec<u16>,
}

#[derive(Debug, Default)]
struct TlcpResult {
    accepted: bool,
    suites: Vec<u16>,
    certs: Option<Vec<Vec<u8>>>,
}

impl Ctx<'_> {
    fn random() -> [u8; 32] {
        let mut r = [0u8; 32];
        // The OS generator does not fail on Linux; a zero random would still be a valid hello.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
        r
    }

    fn hello(
        &self,
        record_version: u16,
        client_version: u16,
        suites: &[u16],
        sv: &[u16],
    ) -> Vec<u8> {
        let tlcp_plain = client_version == TLCP && self.tlcp_plain.load(Ordering::Relaxed);
        wire::client_hello(&Hello {
            record_version,
            client_version,
            suites,
            sni: if tlcp_plain {
                None
            } else {
                self.spec.sni.as_deref()
            },
            extensions: client_version != SSL3 && !tlcp_plain,
            supported_versions: sv,
            key_share: Self::random(),
            random: Self::random(),
        })
    }

    fn detect_hello(&self) -> Vec<u8> {
        let mut offer = suites::TLS13_SUITES.to_vec();
        offer.extend(suites::offer(TLS12));
        self.hello(TLS10, TLS12, &offer, &[TLS13, TLS12, TLS11, TLS10])
    }

    fn legacy_hello(&self, version: u16, suites: &[u16]) -> Vec<u8> {
        let record = if version == SSL3 { SSL3 } else { TLS10 };
        self.hello(record, version, suites, &[])
    }

    fn note(&self, step: &str, failure: &Failure) {
        // A hang-up is how many servers refuse a version; only silence and nonsense are gaps.
        if failure.reason != Reason::Reset && failure.reason != Reason::Refused {
            let mut v = self.incomplete.lock().unwrap_or_else(|e| e.into_inner());
            if v.len() < 32 {
                v.push(format!("{step}: {}", failure.reason));
            }
        }
    }

    fn record(&self, step: &str, sent: HelloSummary, answer: String, started: Instant) {
        let mut v = self.exchanges.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < MAX_EXCHANGES {
            v.push(Exchange {
                step: step.to_string(),
                sent,
                answer,
                elapsed_ms: started.elapsed().as_millis() as u64,
            });
        }
    }

    /// One connection: send `hello`, read the server's first flight; recorded as an
    /// [`Exchange`] of `step`.
    async fn exchange(
        &self,
        step: &str,
        hello: Vec<u8>,
        want_certs: bool,
    ) -> Result<Answer, Failure> {
        let started = Instant::now();
        let sent = HelloSummary::of(&hello);
        let answer = self.exchange_inner(hello, want_certs).await;
        self.record(step, sent, describe(&answer), started);
        answer
    }

    async fn exchange_inner(&self, hello: Vec<u8>, want_certs: bool) -> Result<Answer, Failure> {
        let _slot = self.limits.slot().await;
        self.limits.attempt().await;
        let deadline = (Instant::now() + self.spec.timeout).min(self.budget);
        let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
            return Err(Failure::new(Reason::Timeout, "probe budget spent"));
        };
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        let mut stream = tcp::connect(self.addr, remaining).await?;
        let mut last = Flight::default();
        let io = async {
            stream
                .write_all(&hello)
                .await
                .map_err(|e| Failure::io(&e))?;
            let mut buf: Vec<u8> = Vec::with_capacity(8192);
            let mut chunk = vec![0u8; 16384];
            loop {
                let n = match stream.read(&mut chunk).await {
                    Ok(n) => n,
                    Err(e) if buf.is_empty() => return Err(Failure::io(&e)),
                    Err(_) => 0,
                };
                if n == 0 {
                    if buf.is_empty() {
                        return Err(Failure::new(Reason::Reset, "closed without answer"));
                    }
                    if last.hello.is_some() || last.alert.is_some() {
                        last.problem
                            .get_or_insert(WireError::Malformed("truncated flight"));
                        return Ok(Answer::Tls(std::mem::take(&mut last)));
                    }
                    return Err(Failure::new(Reason::Protocol, "truncated record"));
                }
                buf.extend_from_slice(&chunk[..n]);
                match wire::parse_flight(&buf, want_certs) {
                    Parsed::NotTls => return Ok(Answer::NotTls),
                    Parsed::Done(f) => return Ok(Answer::Tls(f)),
                    Parsed::NeedMore(f) => {
                        last = f;
                        if buf.len() > MAX_BUFFER {
                            last.problem = Some(WireError::TooLarge(buf.len()));
                            return Ok(Answer::Tls(std::mem::take(&mut last)));
                        }
                    }
                }
            }
        };
        let result = timeout_at(deadline, io).await;
        match result {
            Ok(r) => r,
            // The hello came but the rest did not: keep what was said.
            Err(_) if last.hello.is_some() => {
                last.problem
                    .get_or_insert(WireError::Malformed("stalled flight"));
                Ok(Answer::Tls(last))
            }
            Err(_) => Err(Failure::timeout()),
        }
    }

    /// Send a legacy hello at `version` offering `offer`: the chosen suite when the server
    /// accepted exactly that version and one of the offered suites.
    async fn round(
        &self,
        version: u16,
        offer: &[u16],
        want_certs: bool,
    ) -> (Option<u16>, Option<Flight>) {
        let step = suites::version_name(version);
        match self
            .exchange(step, self.legacy_hello(version, offer), want_certs)
            .await
        {
            Ok(Answer::Tls(f)) => {
                let chosen = accepted(&f, version).map(|h| h.cipher_suite);
                (chosen, Some(f))
            }
            Ok(Answer::NotTls) => {
                self.note(step, &Failure::new(Reason::Protocol, "not tls"));
                (None, None)
            }
            Err(e) => {
                self.note(step, &e);
                (None, None)
            }
        }
    }

    /// Offer-all, remove-the-chosen: every suite of `offer` the server accepts at `version`,
    /// in the server's order, at most [`MAX_ROUNDS`] handshakes.
    async fn enumerate(&self, version: u16, mut offer: Vec<u16>) -> Vec<u16> {
        let mut found = Vec::new();
        for _ in 0..MAX_ROUNDS {
            if offer.is_empty() {
                break;
            }
            let (chosen, _) = self.round(version, &offer, false).await;
            match chosen {
                Some(s) if offer.contains(&s) => {
                    found.push(s);
                    offer.retain(|&x| x != s);
                }
                _ => break,
            }
        }
        found
    }

    async fn version_job(&self, version: u16) -> VersionResult {
        let mut offer = suites::offer(version);
        if version == TLS12 {
            // Gateways that speak SM suites inside TLS 1.2 (browsers offer them so).
            offer.extend(suites_tlcp());
        }
        let (chosen, flight) = self.round(version, &offer, true).await;
        let Some(preferred) = chosen else {
            return VersionResult::default();
        };
        offer.retain(|&x| x != preferred);
        let mut accepted = vec![preferred];
        accepted.extend(self.enumerate(version, offer).await);
        let mut classes: Vec<&str> = accepted
            .iter()
            .flat_map(|&s| suites::weak_classes(s))
            .collect();
        let aead_ok = version >= TLS12 && accepted.iter().any(|&s| suites::aead(s));
        let cbc_ok = accepted.iter().any(|&s| suites::cbc(s));
        let fs_ok = accepted.iter().any(|&s| suites::forward_secret(s));
        if cbc_ok && !aead_ok {
            classes.push(suites::CBC_ONLY);
        }
        if !fs_ok {
            classes.push(suites::NO_FORWARD_SECRECY);
        }
        let order = [
            suites::NULL,
            suites::EXPORT,
            suites::ANON,
            suites::RC4,
            suites::TRIPLE_DES,
            suites::CBC_ONLY,
            suites::NO_FORWARD_SECRECY,
        ];
        VersionResult {
            accepted: true,
            preferred: Some(preferred),
            suites: accepted,
            classes: order
                .iter()
                .filter(|c| classes.contains(c))
                .map(|c| c.to_string())
                .collect(),
            certs: flight.and_then(|f| f.certs),
        }
    }

    async fn tls13_round(&self, offer: &[u16]) -> Option<u16> {
        let hello = self.hello(TLS10, TLS12, offer, &[TLS13]);
        match self.exchange("TLSv1.3", hello, false).await {
            Ok(Answer::Tls(f)) => accepted(&f, TLS13).map(|h| h.cipher_suite),
            Ok(Answer::NotTls) => None,
            Err(e) => {
                self.note("TLSv1.3", &e);
                None
            }
        }
    }

    /// TLS 1.3 support and every accepted TLS 1.3 suite (RFC 8446 and RFC 8998), by the
    /// remove-the-chosen loop. `known`: the first hello already got a TLS 1.3 answer.
    async fn tls13_job(&self, maybe: bool, known: bool) -> Tls13Result {
        if !maybe {
            return Tls13Result::default();
        }
        let mut offer = suites::TLS13_SUITES.to_vec();
        let mut found = Vec::new();
        while !offer.is_empty() {
            match self.tls13_round(&offer).await {
                Some(s) if offer.contains(&s) => {
                    found.push(s);
                    offer.retain(|&x| x != s);
                }
                _ => break,
            }
        }
        Tls13Result {
            accepted: known || !found.is_empty(),
            suites: found,
        }
    }

    /// One TLCP hello. With extensions first; a server that closes without a word on them
    /// (GmSSL's TLCP server does, on any extension it does not know) is asked again without
    /// any, and later TLCP hellos of this probe go without them too.
    async fn tlcp_round(&self, offer: &[u16], want_certs: bool) -> Result<Answer, Failure> {
        let answer = self
            .exchange("TLCP", self.hello(TLCP, TLCP, offer, &[]), want_certs)
            .await;
        match answer {
            Err(f) if f.reason == Reason::Reset && !self.tlcp_plain.load(Ordering::Relaxed) => {
                self.tlcp_plain.store(true, Ordering::Relaxed);
                let again = self
                    .exchange("TLCP", self.hello(TLCP, TLCP, offer, &[]), want_certs)
                    .await;
                if !matches!(&again, Ok(Answer::Tls(fl)) if accepted(fl, TLCP).is_some()) {
                    // The plain hello did no better: the silence was not about extensions.
                    self.tlcp_plain.store(false, Ordering::Relaxed);
                    return Err(f);
                }
                again
            }
            other => other,
        }
    }

    /// TLCP support, its suites (remove-the-chosen over the four), and its certificates.
    async fn tlcp_job(&self, first: Option<Flight>) -> TlcpResult {
        let mut offer = suites_tlcp();
        let mut result = TlcpResult::default();
        let mut pending = first;
        for _ in 0..=offer.len() {
            let flight = match pending.take() {
                Some(f) => f,
                None => match self.tlcp_round(&offer, result.certs.is_none()).await {
                    Ok(Answer::Tls(f)) => f,
                    Ok(Answer::NotTls) => break,
                    Err(e) => {
                        if result.accepted {
                            self.note("TLCP", &e);
                        }
                        break;
                    }
                },
            };
            let Some(s) = accepted(&flight, TLCP).map(|h| h.cipher_suite) else {
                break;
            };
            result.accepted = true;
            if result.certs.is_none() {
                result.certs = flight.certs;
            }
            if !offer.contains(&s) {
                break;
            }
            result.suites.push(s);
            offer.retain(|&x| x != s);
            if offer.is_empty() {
                break;
            }
        }
        result
    }

    async fn rustls_job(&self, wanted: bool) -> Option<Vec<Vec<u8>>> {
        if !wanted {
            return None;
        }
        let _slot = self.limits.slot().await;
        self.limits.attempt().await;
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        let deadline = (Instant::now() + self.spec.timeout).min(self.budget);
        let started = Instant::now();
        let chain = verify::chain(self.addr, self.spec.sni.as_deref(), deadline).await;
        let answer = match &chain {
            Some(c) => format!("{} certificates", c.len()),
            None => "no certificate".into(),
        };
        // rustls builds its own hello: what it offers is known, not its exact bytes.
        let sent = HelloSummary {
            client_version: "TLSv1.2".into(),
            supported_versions: vec!["TLSv1.3".into(), "TLSv1.2".into()],
            ..HelloSummary::default()
        };
        self.record("rustls", sent, answer, started);
        chain
    }
}
