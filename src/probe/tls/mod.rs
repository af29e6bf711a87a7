//! TLS and TLCP posture of one TCP service.
//!
//! Stage: probe. Input: a [`Target`], a port, a [`TlsSpec`] (timeout, the host's names, trust
//! anchors, the clock) and the scope's [`Limits`]. Output: [`TlsFacts`] (protocol versions,
//! TLCP, weak cipher suites by class, certificate facts), `Ok(None)` for a port that does not
//! speak TLS or TLCP, or a [`Failure`] when the port gave no usable answer.
//!
//! How: one quick ClientHello first (everything from TLS 1.0 to 1.3 offered); only a port
//! that answers it with TLS records (or a TLCP port that answers a TLCP hello) gets the full
//! enumeration. Then, concurrently, each on its own connection: SSLv3, TLS 1.0, 1.1 and 1.2
//! offered as the maximum with hand-built hellos (accepted only when the ServerHello names
//! exactly that version), TLS 1.3 through `supported_versions` (a HelloRetryRequest counts),
//! the RFC 8998 SM suites, TLCP (GB/T 38636, version 0x0101) with its four SM suites, the weak
//! suites of each accepted version (offer all, remove the chosen one, at most
//! [`MAX_ROUNDS`] rounds), and a rustls handshake for the certificate chain. Every handshake
//! stops at the server's first flight, except the rustls one.
//!
//! Invariants: every connection takes a `Limits` slot and rate attempt (the probe itself holds
//! none while it waits for its handshakes, so nested waits cannot deadlock); every step runs
//! under `spec.timeout` and the whole probe under [`BUDGET_FACTOR`] times it; at most
//! [`wire::MAX_HANDSHAKE`] bytes are buffered per connection; nothing from the network is
//! unwrapped.

mod cert;
pub mod suites;
mod verify;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

pub use cert::{CertFacts, TlsError, Trust, facts as cert_facts, name_matches, signature_name};

use self::wire::{
    Flight, Hello, Parsed, SSL3, ServerHello, TLCP, TLS10, TLS11, TLS12, TLS13, WireError,
};
use super::{Failure, Reason, tcp};
use crate::scope::{Limits, Target};

/// Most handshakes of one remove-the-chosen loop.
pub const MAX_ROUNDS: usize = 24;
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsFacts {
    /// Accepted protocol versions, oldest first: "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2",
    /// "TLSv1.3".
    pub versions: Vec<String>,
    /// The endpoint completes a TLCP (GB/T 38636, 0x0101) ServerHello.
    pub tlcp: bool,
    /// SM suites accepted: TLCP ("ECC_SM4_CBC_SM3", ...) and RFC 8998 ("TLS_SM4_GCM_SM3", ...).
    pub sm_suites: Vec<String>,
    /// IANA names of accepted suites in a suite-level weak class (null, export and single
    /// DES, anon, rc4, 3des), over all versions.
    pub weak_ciphers: Vec<String>,
    /// Per accepted version (SSLv3 to TLS 1.2): its weak classes, from `null`, `export`,
    /// `anon`, `rc4`, `3des` (some accepted suite is of that kind), `cbc_only` (no AEAD suite
    /// accepted) and `no_forward_secrecy` (no ECDHE/DHE suite accepted). Empty = clean.
    pub cipher_classes: BTreeMap<String, Vec<String>>,
    /// The suite the server picked from the full offer, per accepted version.
    pub preferred_suites: BTreeMap<String, String>,
    /// The certificate of TLS (through rustls when it can, else from the plaintext
    /// Certificate message); the TLCP signing certificate for a TLCP-only endpoint.
    pub cert: Option<CertFacts>,
    /// TLCP signing and encryption certificates, in that order.
    pub tlcp_certs: Vec<CertFacts>,
    /// Steps that got no answer ("TLSv1.1: timeout"): the facts above may miss what they
    /// would have found.
    pub incomplete: Vec<String>,
    /// Handshakes this probe made.
    pub handshakes: u32,
    pub elapsed_ms: u64,
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
    };

    // 1. One quick hello: is this TLS at all?
    let detect = ctx.exchange(ctx.detect_hello(), true).await;
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
        if !r.accepted {
            continue;
        }
        let name = suites::version_name(*v).to_string();
        facts.versions.push(name.clone());
        if let Some(p) = r.preferred {
            facts.preferred_suites.insert(name.clone(), suites::name(p));
        }
        facts.cipher_classes.insert(name, r.classes);
        for s in r.weak {
            if !weak.contains(&s) {
                weak.push(s);
            }
        }
        if legacy_certs.is_none() {
            legacy_certs = r.certs;
        }
    }
    if tls13.accepted {
        facts.versions.push("TLSv1.3".into());
        if let Some(p) = tls13.preferred {
            facts
                .preferred_suites
                .insert("TLSv1.3".into(), suites::name(p));
        }
    }
    facts.weak_ciphers = weak.into_iter().map(suites::name).collect();
    facts.tlcp = tlcp.accepted;
    facts.sm_suites = tlcp
        .suites
        .iter()
        .chain(&tls13.sm)
        .map(|&s| suites::name(s))
        .collect();

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
    if facts.cert.is_none() {
        facts.cert = facts.tlcp_certs.first().cloned();
    }
    facts.incomplete =
        std::mem::take(&mut *ctx.incomplete.lock().unwrap_or_else(|e| e.into_inner()));
    facts.handshakes = ctx.handshakes.load(Ordering::Relaxed);
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
    weak: Vec<u16>,
    classes: Vec<String>,
    certs: Option<Vec<Vec<u8>>>,
}

#[derive(Debug, Default)]
struct Tls13Result {
    accepted: bool,
    preferred: Option<u16>,
    sm: Vec<u16>,
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
        wire::client_hello(&Hello {
            record_version,
            client_version,
            suites,
            sni: self.spec.sni.as_deref(),
            extensions: client_version != SSL3 && client_version != TLCP,
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

    /// One connection: send `hello`, read the server's first flight.
    async fn exchange(&self, hello: Vec<u8>, want_certs: bool) -> Result<Answer, Failure> {
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
            .exchange(self.legacy_hello(version, offer), want_certs)
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

    /// Whether the server accepts `version` with one of `offer`.
    async fn accepts(&self, version: u16, offer: Vec<u16>) -> bool {
        if offer.is_empty() {
            return false;
        }
        matches!(self.round(version, &offer, false).await.0, Some(s) if offer.contains(&s))
    }

    async fn version_job(&self, version: u16) -> VersionResult {
        let (chosen, flight) = self.round(version, &suites::offer(version), true).await;
        let Some(preferred) = chosen else {
            return VersionResult::default();
        };
        // What the preferred suite already proves needs no handshake.
        let aead_known = suites::aead(preferred) || version < TLS12;
        let fs_known = suites::forward_secret(preferred);
        let cbc_known = suites::cbc(preferred);
        let (weak, aead_ok, fs_ok, cbc_ok) = tokio::join!(
            self.enumerate(version, suites::weak_offer(version)),
            async {
                if aead_known {
                    version >= TLS12
                } else {
                    self.accepts(
                        version,
                        suites::offer(version)
                            .into_iter()
                            .filter(|&s| suites::aead(s))
                            .collect(),
                    )
                    .await
                }
            },
            async {
                fs_known
                    || self
                        .accepts(
                            version,
                            suites::sound_offer(version, suites::forward_secret),
                        )
                        .await
            },
            async {
                cbc_known
                    || self
                        .accepts(
                            version,
                            suites::offer(version)
                                .into_iter()
                                .filter(|&s| suites::cbc(s))
                                .collect(),
                        )
                        .await
            },
        );
        let mut classes: Vec<&str> = weak.iter().flat_map(|&s| suites::weak_classes(s)).collect();
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
            weak,
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
        match self.exchange(hello, false).await {
            Ok(Answer::Tls(f)) => accepted(&f, TLS13).map(|h| h.cipher_suite),
            Ok(Answer::NotTls) => None,
            Err(e) => {
                self.note("TLSv1.3", &e);
                None
            }
        }
    }

    /// TLS 1.3 support (asked again only when the first hello left it open) and its SM suites.
    async fn tls13_job(&self, maybe: bool, known: bool) -> Tls13Result {
        if !maybe {
            return Tls13Result::default();
        }
        let all = suites::TLS13_SUITES;
        let (preferred, sm) = tokio::join!(self.tls13_round(&all), async {
            let mut offer = suites::TLS13_SM_SUITES.to_vec();
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
            found
        });
        Tls13Result {
            accepted: known || preferred.is_some() || !sm.is_empty(),
            preferred,
            sm,
        }
    }

    async fn tlcp_round(&self, offer: &[u16], want_certs: bool) -> Result<Answer, Failure> {
        self.exchange(self.hello(TLCP, TLCP, offer, &[]), want_certs)
            .await
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
        verify::chain(self.addr, self.spec.sni.as_deref(), deadline).await
    }
}
