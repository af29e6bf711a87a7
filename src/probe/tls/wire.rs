//! The TLS/TLCP wire format, as far as a posture probe needs it: building ClientHellos by hand
//! and reading the server's first flight (ServerHello, Certificate, ServerHelloDone or an
//! alert) out of a byte buffer.
//!
//! Pure functions over byte slices, so the fuzz target and the property test can drive them
//! with arbitrary input. Every length read from the wire is checked before it is used, and the
//! handshake bytes kept are capped at [`MAX_HANDSHAKE`]: a hostile server costs at most that
//! much memory and ends as a partial flight, never as a panic.

/// Largest handshake message (and so Certificate message) the probe buffers.
pub const MAX_HANDSHAKE: usize = 256 * 1024;
/// Largest record fragment allowed by RFC 5246 (2^14 plus expansion room).
pub const MAX_RECORD: usize = 16384 + 2048;
/// Most certificates kept from one Certificate message.
pub const MAX_CERTS: usize = 16;

pub const SSL3: u16 = 0x0300;
pub const TLS10: u16 = 0x0301;
pub const TLS11: u16 = 0x0302;
pub const TLS12: u16 = 0x0303;
pub const TLS13: u16 = 0x0304;
/// GB/T 38636 TLCP.
pub const TLCP: u16 = 0x0101;

const CT_CCS: u8 = 20;
const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPDATA: u8 = 23;

const HS_CLIENT_HELLO: u8 = 1;
const HS_SERVER_HELLO: u8 = 2;
const HS_CERTIFICATE: u8 = 11;
const HS_SERVER_HELLO_DONE: u8 = 14;

const EXT_SNI: u16 = 0x0000;
const EXT_SUPPORTED_GROUPS: u16 = 0x000a;
const EXT_EC_POINT_FORMATS: u16 = 0x000b;
const EXT_SIGNATURE_ALGORITHMS: u16 = 0x000d;
const EXT_EXTENDED_MASTER_SECRET: u16 = 0x0017;
const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
const EXT_PSK_MODES: u16 = 0x002d;
const EXT_KEY_SHARE: u16 = 0x0033;
const EXT_RENEGOTIATION_INFO: u16 = 0xff01;

/// x25519, secp256r1, secp384r1, secp521r1, x448, curveSM2 (RFC 8998), ffdhe2048, ffdhe3072.
const GROUPS: [u16; 8] = [
    0x001d, 0x0017, 0x0018, 0x0019, 0x001e, 0x0029, 0x0100, 0x0101,
];
/// ECDSA, RSA-PSS, RSA PKCS#1, EdDSA, SM2 (sm2sig_sm3), and SHA-1/SHA-224 legacy ones.
const SIGNATURE_SCHEMES: [u16; 18] = [
    0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0809, 0x080a, 0x080b, 0x0401, 0x0501, 0x0601,
    0x0807, 0x0808, 0x0708, 0x0303, 0x0203, 0x0201,
];

/// The random of a HelloRetryRequest (RFC 8446 4.1.3): SHA-256("HelloRetryRequest").
pub const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// What goes into one hand-built ClientHello.
#[derive(Debug, Clone)]
pub struct Hello<'a> {
    /// Version in the record header (0x0301 for TLS, as real clients send; 0x0300; 0x0101).
    pub record_version: u16,
    /// `client_version` / `legacy_version` of the hello.
    pub client_version: u16,
    pub suites: &'a [u16],
    /// Host name for the server_name extension (not sent for IP literals).
    pub sni: Option<&'a str>,
    /// Send the usual TLS extensions (groups, point formats, signature algorithms...).
    pub extensions: bool,
    /// `supported_versions` list; also adds a key_share and psk modes when it holds TLS 1.3.
    pub supported_versions: &'a [u16],
    /// An x25519 public key for key_share (random bytes are fine: the probe stops at the
    /// ServerHello).
    pub key_share: [u8; 32],
    pub random: [u8; 32],
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u24(out: &mut Vec<u8>, v: usize) {
    let v = v as u32;
    out.extend_from_slice(&v.to_be_bytes()[1..]);
}

fn put_ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    put_u16(out, kind);
    put_u16(out, body.len() as u16);
    out.extend_from_slice(body);
}

fn u16_list(items: &[u16], len_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() * 2 + len_bytes);
    let n = items.len() * 2;
    if len_bytes == 1 {
        out.push(n as u8);
    } else {
        put_u16(&mut out, n as u16);
    }
    for &i in items {
        put_u16(&mut out, i);
    }
    out
}

/// Whether `name` can go into SNI: a DNS name, not an IP literal (RFC 6066 3).
fn sni_name(name: &str) -> Option<&str> {
    let name = name.trim_end_matches('.');
    let ok = !name.is_empty()
        && name.len() < 254
        && name.parse::<std::net::IpAddr>().is_err()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then_some(name)
}

/// One ClientHello record, ready to write.
pub fn client_hello(h: &Hello<'_>) -> Vec<u8> {
    let mut body = Vec::with_capacity(256 + h.suites.len() * 2);
    put_u16(&mut body, h.client_version);
    body.extend_from_slice(&h.random);
    body.push(0); // empty session id
    // The cipher_suites vector holds at most 2^15-1 suites; nobody offers that many.
    let suites = &h.suites[..h.suites.len().min(0x7fff)];
    body.extend_from_slice(&u16_list(suites, 2));
    body.extend_from_slice(&[1, 0]); // compression: null only

    let mut ext = Vec::new();
    if let Some(name) = h.sni.and_then(sni_name) {
        let mut sni = Vec::new();
        put_u16(&mut sni, (name.len() + 3) as u16);
        sni.push(0);
        put_u16(&mut sni, name.len() as u16);
        sni.extend_from_slice(name.as_bytes());
        put_ext(&mut ext, EXT_SNI, &sni);
    }
    if h.extensions {
        put_ext(&mut ext, EXT_SUPPORTED_GROUPS, &u16_list(&GROUPS, 2));
        put_ext(&mut ext, EXT_EC_POINT_FORMATS, &[1, 0]);
        put_ext(
            &mut ext,
            EXT_SIGNATURE_ALGORITHMS,
            &u16_list(&SIGNATURE_SCHEMES, 2),
        );
        put_ext(&mut ext, EXT_EXTENDED_MASTER_SECRET, &[]);
        put_ext(&mut ext, EXT_RENEGOTIATION_INFO, &[0]);
    }
    if !h.supported_versions.is_empty() {
        put_ext(
            &mut ext,
            EXT_SUPPORTED_VERSIONS,
            &u16_list(h.supported_versions, 1),
        );
        if h.supported_versions.contains(&TLS13) {
            let mut ks = Vec::with_capacity(38);
            put_u16(&mut ks, 36);
            put_u16(&mut ks, 0x001d);
            put_u16(&mut ks, 32);
            ks.extend_from_slice(&h.key_share);
            put_ext(&mut ext, EXT_KEY_SHARE, &ks);
            put_ext(&mut ext, EXT_PSK_MODES, &[1, 1]);
        }
    }
    if !ext.is_empty() {
        put_u16(&mut body, ext.len() as u16);
        body.extend_from_slice(&ext);
    }

    let mut out = Vec::with_capacity(body.len() + 9);
    out.push(CT_HANDSHAKE);
    put_u16(&mut out, h.record_version);
    put_u16(&mut out, (body.len() + 4) as u16);
    out.push(HS_CLIENT_HELLO);
    put_u24(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// A parsed ServerHello (or HelloRetryRequest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// `server_version` / `legacy_version` field.
    pub legacy_version: u16,
    /// The `supported_versions` extension's choice, when present (TLS 1.3).
    pub selected_version: Option<u16>,
    pub cipher_suite: u16,
    pub compression: u8,
    /// A HelloRetryRequest (TLS 1.3): the server wants another key share, and so speaks 1.3.
    pub retry_request: bool,
}

impl ServerHello {
    /// The version the server chose.
    pub fn version(&self) -> u16 {
        self.selected_version.unwrap_or(self.legacy_version)
    }
}

/// A TLS alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    pub level: u8,
    pub description: u8,
}

/// Why a flight could not be read completely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a TLS record")]
    NotTls,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("handshake message of {0} bytes exceeds the cap")]
    TooLarge(usize),
    #[error("unexpected handshake message type {0}")]
    Unexpected(u8),
}

/// What the server sent first, as far as it could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flight {
    /// Version of the first record header.
    pub record_version: Option<u16>,
    pub hello: Option<ServerHello>,
    /// DER certificates of the Certificate message (TLS ≤ 1.2 and TLCP), in sent order.
    pub certs: Option<Vec<Vec<u8>>>,
    pub alert: Option<Alert>,
    /// What stopped the reading early, if anything did.
    pub problem: Option<WireError>,
}

/// Progress of reading a flight out of the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes are not TLS at all (a banner, an HTTP answer, noise).
    NotTls,
    /// A valid prefix; more bytes are needed.
    NeedMore(Flight),
    /// Everything the probe wanted, or as much as could be read before a problem.
    Done(Flight),
}

fn valid_content_type(b: u8) -> bool {
    (CT_CCS..=CT_APPDATA).contains(&b)
}

fn valid_record_version(v: u16) -> bool {
    (SSL3..=TLS13).contains(&v) || v == TLCP
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// Read the server's first flight out of `data`. With `want_certs`, reading goes on past a
/// TLS ≤ 1.2 / TLCP ServerHello to the Certificate message; otherwise it stops at the
/// ServerHello.
pub fn parse_flight(data: &[u8], want_certs: bool) -> Parsed {
    let mut flight = Flight::default();
    let mut pos = 0;
    let mut hs: Vec<u8> = Vec::new();
    let mut hs_pos = 0;
    loop {
        let rest = &data[pos..];
        // Reject non-TLS input as early as its first bytes allow.
        if pos == 0 {
            if let Some(&b) = rest.first()
                && !valid_content_type(b)
            {
                return Parsed::NotTls;
            }
            if rest.len() >= 3 && !valid_record_version(be16(&rest[1..3])) {
                return Parsed::NotTls;
            }
        }
        if rest.len() < 5 {
            return Parsed::NeedMore(flight);
        }
        let (ct, version, len) = (rest[0], be16(&rest[1..3]), usize::from(be16(&rest[3..5])));
        if !valid_content_type(ct) || !valid_record_version(version) || len > MAX_RECORD {
            if pos == 0 {
                return Parsed::NotTls;
            }
            flight.problem = Some(WireError::Malformed("record header"));
            return Parsed::Done(flight);
        }
        if rest.len() < 5 + len {
            return Parsed::NeedMore(flight);
        }
        flight.record_version.get_or_insert(version);
        let fragment = &rest[5..5 + len];
        pos += 5 + len;
        match ct {
            CT_ALERT => {
                if fragment.len() >= 2 {
                    flight.alert = Some(Alert {
                        level: fragment[0],
                        description: fragment[1],
                    });
                } else {
                    flight.problem = Some(WireError::Malformed("alert"));
                }
                return Parsed::Done(flight);
            }
            CT_HANDSHAKE => {
                hs.extend_from_slice(fragment);
                // Each complete handshake message in the buffer, in order.
                while hs.len() - hs_pos >= 4 {
                    let m = &hs[hs_pos..];
                    let (kind, mlen) = (m[0], be24(&m[1..4]));
                    if mlen > MAX_HANDSHAKE {
                        flight.problem = Some(WireError::TooLarge(mlen));
                        return Parsed::Done(flight);
                    }
                    if m.len() < 4 + mlen {
                        break;
                    }
                    let body = &m[4..4 + mlen];
                    hs_pos += 4 + mlen;
                    if flight.hello.is_none() && kind != HS_SERVER_HELLO {
                        flight.problem = Some(WireError::Unexpected(kind));
                        return Parsed::Done(flight);
                    }
                    match kind {
                        HS_SERVER_HELLO => {
                            if flight.hello.is_some() {
                                flight.problem = Some(WireError::Unexpected(kind));
                                return Parsed::Done(flight);
                            }
                            match parse_server_hello(body) {
                                Ok(h) => {
                                    let stop =
                                        !want_certs || h.retry_request || h.version() >= TLS13;
                                    flight.hello = Some(h);
                                    if stop {
                                        return Parsed::Done(flight);
                                    }
                                }
                                Err(e) => {
                                    flight.problem = Some(e);
                                    return Parsed::Done(flight);
                                }
                            }
                        }
                        HS_CERTIFICATE => {
                            match parse_certificate_list(body) {
                                Ok(certs) => flight.certs = Some(certs),
                                Err(e) => flight.problem = Some(e),
                            }
                            return Parsed::Done(flight);
                        }
                        // Anonymous suites send no Certificate: the flight ends here.
                        HS_SERVER_HELLO_DONE => return Parsed::Done(flight),
                        // ServerKeyExchange, CertificateRequest, status, ...: not needed.
                        _ => {}
                    }
                }
                // Drop what was consumed so the buffer holds only a partial message.
                if hs_pos > 0 {
                    hs.drain(..hs_pos);
                    hs_pos = 0;
                }
            }
            // A change_cipher_spec or application data ends the plaintext part.
            _ => {
                if flight.hello.is_none() {
                    flight.problem = Some(WireError::Unexpected(ct));
                }
                return Parsed::Done(flight);
            }
        }
    }
}

/// Parse a ServerHello body (after the 4-byte handshake header).
pub fn parse_server_hello(body: &[u8]) -> Result<ServerHello, WireError> {
    let bad = WireError::Malformed("server hello");
    if body.len() < 2 + 32 + 1 {
        return Err(bad);
    }
    let legacy_version = be16(body);
    let random = &body[2..34];
    let sid_len = usize::from(body[34]);
    if sid_len > 32 {
        return Err(bad);
    }
    let mut p = 35 + sid_len;
    if body.len() < p + 3 {
        return Err(bad);
    }
    let cipher_suite = be16(&body[p..]);
    let compression = body[p + 2];
    p += 3;
    let mut selected_version = None;
    if body.len() >= p + 2 {
        let ext_len = usize::from(be16(&body[p..]));
        p += 2;
        let exts = body.get(p..p + ext_len).ok_or(bad)?;
        let mut q = 0;
        while q + 4 <= exts.len() {
            let kind = be16(&exts[q..]);
            let len = usize::from(be16(&exts[q + 2..]));
            let data = exts.get(q + 4..q + 4 + len).ok_or(bad)?;
            if kind == EXT_SUPPORTED_VERSIONS {
                if data.len() != 2 {
                    return Err(bad);
                }
                selected_version = Some(be16(data));
            }
            q += 4 + len;
        }
        if q != exts.len() {
            return Err(bad);
        }
    }
    Ok(ServerHello {
        legacy_version,
        selected_version,
        cipher_suite,
        compression,
        retry_request: random == HRR_RANDOM,
    })
}

/// Parse a TLS ≤ 1.2 / TLCP Certificate message body into DER certificates (at most
/// [`MAX_CERTS`]). TLCP sends the signing certificate, then the encryption certificate, then
/// the chain, in this same format.
pub fn parse_certificate_list(body: &[u8]) -> Result<Vec<Vec<u8>>, WireError> {
    let bad = WireError::Malformed("certificate message");
    if body.len() < 3 {
        return Err(bad);
    }
    let total = be24(body);
    let list = body.get(3..3 + total).ok_or(bad)?;
    let mut certs = Vec::new();
    let mut p = 0;
    while p < list.len() && certs.len() < MAX_CERTS {
        if list.len() < p + 3 {
            return Err(bad);
        }
        let len = be24(&list[p..]);
        let der = list.get(p + 3..p + 3 + len).ok_or(bad)?;
        if !der.is_empty() {
            certs.push(der.to_vec());
        }
        p += 3 + len;
    }
    Ok(certs)
}

/// Build a ServerHello record (for tests and canned responders).
pub fn server_hello_record(
    record_version: u16,
    version: u16,
    suite: u16,
    selected_version: Option<u16>,
) -> Vec<u8> {
    let mut body = Vec::new();
    put_u16(&mut body, version);
    body.extend_from_slice(&[0x5a; 32]);
    body.push(0);
    put_u16(&mut body, suite);
    body.push(0);
    if let Some(v) = selected_version {
        let mut ext = Vec::new();
        put_ext(&mut ext, EXT_SUPPORTED_VERSIONS, &v.to_be_bytes());
        put_u16(&mut body, ext.len() as u16);
        body.extend_from_slice(&ext);
    }
    handshake_record(record_version, HS_SERVER_HELLO, &body)
}

/// Build a Certificate message record holding `certs` (for tests and canned responders).
pub fn certificate_record(record_version: u16, certs: &[&[u8]]) -> Vec<u8> {
    let total: usize = certs.iter().map(|c| c.len() + 3).sum();
    let mut body = Vec::with_capacity(total + 3);
    put_u24(&mut body, total);
    for c in certs {
        put_u24(&mut body, c.len());
        body.extend_from_slice(c);
    }
    handshake_record(record_version, HS_CERTIFICATE, &body)
}

/// One handshake message in one or more records (fragmented at 16 KiB).
pub fn handshake_record(record_version: u16, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(body.len() + 4);
    msg.push(kind);
    put_u24(&mut msg, body.len());
    msg.extend_from_slice(body);
    let mut out = Vec::with_capacity(msg.len() + 5 * (msg.len() / 16384 + 1));
    for chunk in msg.chunks(16384) {
        out.push(CT_HANDSHAKE);
        put_u16(&mut out, record_version);
        put_u16(&mut out, chunk.len() as u16);
        out.extend_from_slice(chunk);
    }
    out
}

/// A ServerHelloDone record.
pub fn server_hello_done_record(record_version: u16) -> Vec<u8> {
    handshake_record(record_version, HS_SERVER_HELLO_DONE, &[])
}

/// An alert record.
pub fn alert_record(record_version: u16, description: u8) -> Vec<u8> {
    let mut out = vec![CT_ALERT];
    put_u16(&mut out, record_version);
    out.extend_from_slice(&[0, 2, 2, description]);
    out
}

/// The fields of a ClientHello a canned responder needs: versions and offered suites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHelloInfo {
    pub record_version: u16,
    pub client_version: u16,
    pub suites: Vec<u16>,
    pub supported_versions: Vec<u16>,
    /// Extension types in sent order.
    pub extensions: Vec<u16>,
}

/// Parse a ClientHello record (one record, as this module writes them).
pub fn parse_client_hello(data: &[u8]) -> Option<ClientHelloInfo> {
    if data.len() < 9 || data[0] != CT_HANDSHAKE || data[5] != HS_CLIENT_HELLO {
        return None;
    }
    let record_version = be16(&data[1..]);
    let body = data.get(9..9 + be24(&data[6..]))?;
    let client_version = be16(body.get(..2)?);
    let sid = usize::from(*body.get(34)?);
    let mut p = 35 + sid;
    let n = usize::from(be16(body.get(p..p + 2)?));
    let suites = body
        .get(p + 2..p + 2 + n)?
        .chunks_exact(2)
        .map(be16)
        .collect();
    p += 2 + n;
    let comp = usize::from(*body.get(p)?);
    p += 1 + comp;
    let mut supported_versions = Vec::new();
    let mut extensions = Vec::new();
    if let Some(len) = body.get(p..p + 2).map(be16) {
        let exts = body.get(p + 2..p + 2 + usize::from(len))?;
        let mut q = 0;
        while q + 4 <= exts.len() {
            let kind = be16(&exts[q..]);
            let l = usize::from(be16(&exts[q + 2..]));
            let d = exts.get(q + 4..q + 4 + l)?;
            extensions.push(kind);
            if kind == EXT_SUPPORTED_VERSIONS && !d.is_empty() {
                supported_versions = d[1..].chunks_exact(2).map(be16).collect();
            }
            q += 4 + l;
        }
    }
    Some(ClientHelloInfo {
        record_version,
        client_version,
        suites,
        supported_versions,
        extensions,
    })
}

/// The name of an extension type (hex when this module does not send it).
pub fn extension_name(kind: u16) -> String {
    match kind {
        EXT_SNI => "server_name",
        EXT_SUPPORTED_GROUPS => "supported_groups",
        EXT_EC_POINT_FORMATS => "ec_point_formats",
        EXT_SIGNATURE_ALGORITHMS => "signature_algorithms",
        EXT_EXTENDED_MASTER_SECRET => "extended_master_secret",
        EXT_SUPPORTED_VERSIONS => "supported_versions",
        EXT_PSK_MODES => "psk_key_exchange_modes",
        EXT_KEY_SHARE => "key_share",
        EXT_RENEGOTIATION_INFO => "renegotiation_info",
        other => return format!("0x{other:04x}"),
    }
    .to_string()
}

/// The RFC 8446 name of an alert description.
pub fn alert_name(description: u8) -> &'static str {
    match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        120 => "no_application_protocol",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(v: u16, suites: &[u16], sv: &[u16]) -> Vec<u8> {
        client_hello(&Hello {
            record_version: TLS10,
            client_version: v,
            suites,
            sni: Some("www.example.com"),
            extensions: true,
            supported_versions: sv,
            key_share: [9; 32],
            random: [7; 32],
        })
    }

    #[test]
    fn client_hello_round_trips() {
        let h = hello(TLS12, &[0x1301, 0xc02f], &[TLS13, TLS12]);
        let info = parse_client_hello(&h).unwrap();
        assert_eq!(info.client_version, TLS12);
        assert_eq!(info.suites, vec![0x1301, 0xc02f]);
        assert_eq!(info.supported_versions, vec![TLS13, TLS12]);
    }

    #[test]
    fn flight_with_hello_and_certificate() {
        let mut data = server_hello_record(TLS12, TLS12, 0xc02f, None);
        data.extend(certificate_record(TLS12, &[b"abc", b"de"]));
        data.extend(server_hello_done_record(TLS12));
        let Parsed::Done(f) = parse_flight(&data, true) else {
            panic!()
        };
        assert_eq!(f.hello.unwrap().cipher_suite, 0xc02f);
        assert_eq!(f.certs.unwrap(), vec![b"abc".to_vec(), b"de".to_vec()]);
        // Every prefix is a valid partial flight.
        for i in 0..data.len() - 1 {
            assert!(
                !matches!(parse_flight(&data[..i], true), Parsed::NotTls),
                "{i}"
            );
        }
    }

    #[test]
    fn tls13_hello_and_retry() {
        let data = server_hello_record(TLS12, TLS12, 0x1301, Some(TLS13));
        let Parsed::Done(f) = parse_flight(&data, true) else {
            panic!()
        };
        assert_eq!(f.hello.unwrap().version(), TLS13);
    }

    #[test]
    fn banners_are_not_tls() {
        assert_eq!(parse_flight(b"SSH-2.0-OpenSSH\r\n", true), Parsed::NotTls);
        assert_eq!(parse_flight(b"HTTP/1.1 400", true), Parsed::NotTls);
        assert_eq!(parse_flight(&[0x16, 0x09, 0x09], true), Parsed::NotTls);
    }

    #[test]
    fn oversized_certificate_is_a_partial_flight() {
        let mut data = server_hello_record(TLS12, TLS12, 0x002f, None);
        data.extend_from_slice(&[22, 3, 3, 0x40, 0, 11, 0xff, 0xff, 0xf0]);
        data.resize(data.len() + 0x4000 - 4, 0x41);
        let Parsed::Done(f) = parse_flight(&data, true) else {
            panic!()
        };
        assert!(f.hello.is_some());
        assert!(matches!(f.problem, Some(WireError::TooLarge(_))));
    }

    #[test]
    fn tlcp_hello() {
        let data = server_hello_record(TLCP, TLCP, 0xe013, None);
        let Parsed::NeedMore(f) = parse_flight(&data, true) else {
            panic!()
        };
        assert_eq!(f.hello.unwrap().version(), TLCP);
        assert!(matches!(parse_flight(&data, false), Parsed::Done(_)));
    }
}
