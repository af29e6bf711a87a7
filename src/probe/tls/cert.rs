//! Certificate facts: what an X.509 certificate says (x509-parser), whether its chain reaches a
//! trust anchor (rustls-webpki, with ring's algorithms and SM3withSM2 from `sm`), and whether
//! it names the host.
//!
//! Works on DER bytes from any source (a rustls handshake, a plaintext Certificate message, a
//! TLCP certificate pair); a certificate that does not parse yields no facts, never a panic.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use rustls_pki_types::pem::PemObject;
use std::sync::OnceLock;

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;

use crate::config::TrustSettings;

/// SM2 public key / curve (GM/T 0006).
const OID_SM2: &str = "1.2.156.10197.1.301";

/// Failure to build the trust store.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust.ca_files: cannot read {path}: {source}")]
    CaFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trust.ca_files: {path} is not a PEM certificate file: {reason}")]
    CaFilePem { path: PathBuf, reason: String },
    #[error("trust.ca_files: {path} holds no certificate")]
    CaFileEmpty { path: PathBuf },
    #[error("trust.ca_files: {path}: certificate {index} is not a usable trust anchor: {reason}")]
    CaCert {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

/// Trust anchors: the system store plus the configured `trust.ca_files`.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    anchors: Vec<TrustAnchor<'static>>,
    /// How many anchors came from the system store.
    pub system: usize,
    /// How many came from `trust.ca_files`.
    pub extra: usize,
}

impl Trust {
    /// The system roots (the OpenSSL store, `/etc/ssl/certs` on Debian, as rustls-native-certs
    /// finds it) and every certificate of each `ca_files` PEM. A CA file that cannot be read,
    /// is not PEM, or holds no usable certificate is an error naming it; unreadable system
    /// roots are skipped.
    pub fn load(settings: &TrustSettings) -> Result<Trust, TlsError> {
        let mut trust = Trust::default();
        let native = rustls_native_certs::load_native_certs();
        for der in native.certs {
            if let Ok(anchor) = webpki::anchor_from_trusted_cert(&der) {
                trust.anchors.push(anchor.to_owned());
                trust.system += 1;
            }
        }
        for path in &settings.ca_files {
            trust.add_pem_file(path)?;
        }
        Ok(trust)
    }

    /// Only the anchors of the given PEM files, without the system store (tests, tools).
    pub fn from_pem_files(paths: &[PathBuf]) -> Result<Trust, TlsError> {
        let mut trust = Trust::default();
        for path in paths {
            trust.add_pem_file(path)?;
        }
        Ok(trust)
    }

    fn add_pem_file(&mut self, path: &Path) -> Result<(), TlsError> {
        let anchors = anchors_from_pem_file(path)?;
        self.extra += anchors.len();
        self.anchors.extend(anchors);
        Ok(())
    }

    /// Number of trust anchors.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

/// The trust anchors of one PEM file of `trust.ca_files` (RSA, ECDSA, SM2 roots alike: an
/// anchor is a name and a key, whatever the algorithm). An unreadable file, a PEM error or a
/// file without a certificate is an error naming the file.
pub fn anchors_from_pem_file(path: &Path) -> Result<Vec<TrustAnchor<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::CaFileRead {
        path: path.to_owned(),
        source,
    })?;
    let mut anchors = Vec::new();
    for (index, item) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let der = item.map_err(|e| TlsError::CaFilePem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let anchor = webpki::anchor_from_trusted_cert(&der).map_err(|e| TlsError::CaCert {
            path: path.to_owned(),
            index: index + 1,
            reason: e.to_string(),
        })?;
        anchors.push(anchor.to_owned());
    }
    if anchors.is_empty() {
        return Err(TlsError::CaFileEmpty {
            path: path.to_owned(),
        });
    }
    Ok(anchors)
}

/// What one certificate says, and how it fares against the trust store and the host's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFacts {
    /// Subject distinguished name, RFC 4514 style (`CN=…, O=…`).
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub sans: Vec<String>,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// Whole days from the probe's `now` to `not_after`, rounded down; negative once expired.
    pub days_left: i64,
    pub self_signed: bool,
    /// The chain sent by the server reaches a trust anchor (checked at a time inside the
    /// certificate's validity, so that expiry is reported by `days_left` alone).
    pub trusted: bool,
    /// One of the host's names (or its address) is covered by the certificate; `None` when no
    /// name of the host is known (no PTR, project asset name or SNI) and the address is not
    /// covered either: unknown is not false.
    pub hostname_match: Option<bool>,
    /// "RSA-2048", "EC-P256", "SM2", "Ed25519", "DSA-1024", ...
    pub key: String,
    pub key_bits: u32,
    /// "sha256WithRSAEncryption", "SM3withSM2", ... (the dotted OID when unknown).
    pub signature: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
    /// Number of certificates the server sent with this one (leaf included).
    pub chain_len: usize,
    /// The keyUsage bits ("digitalSignature", "keyEncipherment", ...); `None` when the
    /// certificate has no keyUsage extension.
    pub key_usage: Option<Vec<String>>,
}

/// Facts about `chain[0]`, with `chain[1..]` as intermediates. `names` are the host's names
/// (SNI, PTR, project assets); `ip` is its address. `None` when the leaf does not parse.
pub fn facts(
    chain: &[Vec<u8>],
    names: &[String],
    ip: Option<IpAddr>,
    trust: &Trust,
    now: DateTime<Utc>,
) -> Option<CertFacts> {
    let leaf_der = chain.first()?;
    let (_, cert) = X509Certificate::from_der(leaf_der).ok()?;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let sans = sans(&cert);
    let (key, key_bits) = key(&cert);
    let trusted = chain_trusted(chain, trust, not_before, not_after, now);
    Some(CertFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        hostname_match: hostname_match(&cert, &sans, names, ip),
        sans,
        not_before: rfc3339(not_before),
        not_after: rfc3339(not_after),
        days_left: (not_after - now.timestamp()).div_euclid(86_400),
        self_signed: self_signed(&cert),
        trusted,
        key,
        key_bits,
        signature: signature_name(&cert.signature_algorithm.algorithm.to_id_string()),
        serial: cert.raw_serial_as_string(),
        sha256: hex(ring::digest::digest(&ring::digest::SHA256, leaf_der).as_ref()),
        chain_len: chain.len(),
        key_usage: super::sm::key_usage(&cert),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rfc3339(ts: i64) -> String {
    DateTime::<Utc>::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_string()),
            GeneralName::IPAddress(b) => ip_from_bytes(b).map(|ip| ip.to_string()),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

fn key(cert: &X509Certificate<'_>) -> (String, u32) {
    let spki = cert.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    let param = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    if alg == OID_SM2 || param.as_deref() == Some(OID_SM2) {
        return ("SM2".into(), 256);
    }
    match alg.as_str() {
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => {
            let bits = match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => integer_bits(rsa.modulus),
                _ => 0,
            };
            (format!("RSA-{bits}"), bits)
        }
        "1.2.840.10045.2.1" => {
            let (curve, bits) = match param.as_deref() {
                Some("1.2.840.10045.3.1.7") => ("P256", 256),
                Some("1.3.132.0.34") => ("P384", 384),
                Some("1.3.132.0.35") => ("P521", 521),
                Some("1.3.132.0.10") => ("secp256k1", 256),
                Some("1.2.840.10045.3.1.1") => ("P192", 192),
                Some("1.3.132.0.33") => ("P224", 224),
                _ => {
                    let bits = spki.parsed().map(|k| k.key_size()).unwrap_or(0) as u32;
                    return (format!("EC-{bits}"), bits);
                }
            };
            (format!("EC-{curve}"), bits)
        }
        "1.3.101.112" => ("Ed25519".into(), 256),
        "1.3.101.113" => ("Ed448".into(), 456),
        "1.2.840.10040.4.1" => {
            let bits = spki.parsed().map(|k| k.key_size()).unwrap_or(0) as u32;
            (format!("DSA-{bits}"), bits)
        }
        other => (other.to_string(), 0),
    }
}

/// Bits of a big-endian unsigned integer, leading zeros stripped.
fn integer_bits(b: &[u8]) -> u32 {
    let b = match b.iter().position(|&x| x != 0) {
        Some(i) => &b[i..],
        None => return 0,
    };
    (b.len() as u32) * 8 - b[0].leading_zeros()
}

/// The usual (OpenSSL) name of a signature algorithm OID.
pub fn signature_name(oid: &str) -> String {
    match oid {
        "1.2.840.113549.1.1.2" => "md2WithRSAEncryption",
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption",
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "rsassaPss",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.113549.1.1.14" => "sha224WithRSAEncryption",
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1",
        "1.2.840.10045.4.3.1" => "ecdsa-with-SHA224",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.2.840.10040.4.3" => "dsa-with-SHA1",
        "2.16.840.1.101.3.4.3.2" => "dsa-with-SHA256",
        "1.3.101.112" => "ED25519",
        "1.3.101.113" => "ED448",
        "1.2.156.10197.1.501" => "SM3withSM2",
        other => return other.to_string(),
    }
    .to_string()
}

/// Issued by itself: subject equals issuer, and the key identifiers (when both present) agree.
fn self_signed(cert: &X509Certificate<'_>) -> bool {
    if cert.subject().as_raw() != cert.issuer().as_raw() {
        return false;
    }
    let mut ski = None;
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| k.0)
            }
            _ => {}
        }
    }
    match (ski, aki) {
        (Some(s), Some(a)) => s == a,
        _ => true,
    }
}

fn chain_trusted(
    chain: &[Vec<u8>],
    trust: &Trust,
    not_before: i64,
    not_after: i64,
    now: DateTime<Utc>,
) -> bool {
    if trust.anchors.is_empty() {
        return false;
    }
    let Ok(ee_der) = chain
        .first()
        .map(|d| CertificateDer::from(d.as_slice()))
        .ok_or(())
    else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(&ee_der) else {
        return false;
    };
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    // Judge the chain at a moment the leaf is valid: expiry is days_left's business.
    let at = now
        .timestamp()
        .clamp(not_before.saturating_add(1), not_after.saturating_sub(1));
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at.max(0) as u64));
    ee.verify_for_usage(
        algorithms(),
        &trust.anchors,
        &intermediates,
        time,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .is_ok()
}

/// ring's signature algorithms and SM3withSM2.
fn algorithms() -> &'static [&'static dyn SignatureVerificationAlgorithm] {
    static ALL: OnceLock<Vec<&'static dyn SignatureVerificationAlgorithm>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut v = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all
            .to_vec();
        v.extend_from_slice(super::sm::ALGORITHMS);
        v
    })
}

/// Whether the certificate covers one of `names` or `ip`: subjectAltName DNS names (with a
/// left-most `*` label) and addresses; the subject CN only when there is no SAN at all.
/// `None` when nothing covers the address and there is no name to judge.
fn hostname_match(
    cert: &X509Certificate<'_>,
    sans: &[String],
    names: &[String],
    ip: Option<IpAddr>,
) -> Option<bool> {
    let mut presented: Vec<String> = sans.to_vec();
    if presented.is_empty() {
        presented.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_string)),
        );
    }
    let ip_hit = ip.is_some_and(|ip| {
        presented
            .iter()
            .any(|p| p.parse::<IpAddr>().ok() == Some(ip))
    });
    if ip_hit {
        return Some(true);
    }
    if names.is_empty() {
        return None;
    }
    Some(
        names
            .iter()
            .any(|n| presented.iter().any(|p| name_matches(p, n))),
    )
}

/// RFC 6125 matching of a presented name against a reference name.
pub fn name_matches(presented: &str, reference: &str) -> bool {
    let p = presented.trim_end_matches('.').to_ascii_lowercase();
    let r = reference.trim_end_matches('.').to_ascii_lowercase();
    if p.is_empty() || r.is_empty() {
        return false;
    }
    if let (Ok(a), Ok(b)) = (p.parse::<IpAddr>(), r.parse::<IpAddr>()) {
        return a == b;
    }
    match p.strip_prefix("*.") {
        Some(suffix) => match r.split_once('.') {
            // The wildcard stands for exactly one non-empty label, never a public suffix alone.
            Some((label, rest)) => !label.is_empty() && rest == suffix && suffix.contains('.'),
            None => false,
        },
        None => p == r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(name_matches("*.example.gov.cn", "www.example.gov.cn"));
        assert!(!name_matches("*.example.gov.cn", "a.b.example.gov.cn"));
        assert!(!name_matches("*.cn", "example.cn"));
        assert!(name_matches("WWW.Example.com.", "www.example.com"));
        assert!(name_matches("192.0.2.1", "192.0.2.1"));
    }

    #[test]
    fn garbage_is_no_facts() {
        let t = Trust::default();
        assert!(facts(&[vec![0x30, 0x03, 1, 2, 3]], &[], None, &t, Utc::now()).is_none());
        assert!(facts(&[], &[], None, &t, Utc::now()).is_none());
    }

    #[test]
    fn bits() {
        assert_eq!(integer_bits(&[0, 0x80, 0]), 16);
        assert_eq!(integer_bits(&[0x01, 0]), 9);
        assert_eq!(signature_name("1.2.156.10197.1.501"), "SM3withSM2");
    }
}
