//! Cipher suites: which to offer at each version, their names, and their weakness classes.
//!
//! The IANA table (names, key exchange, authentication, cipher, mode, MAC) comes from
//! tls-parser; the TLCP suites of GB/T 38636 are not in it and are named here.

use std::sync::OnceLock;

use tls_parser::{
    TlsCipherAu, TlsCipherEnc, TlsCipherEncMode, TlsCipherKx, TlsCipherMac, TlsCipherSuite,
};

use super::wire::TLS12;

/// TLCP suites (GB/T 38636): id and name.
pub const TLCP_SUITES: [(u16, &str); 4] = [
    (0xe013, "ECC_SM4_CBC_SM3"),
    (0xe053, "ECC_SM4_GCM_SM3"),
    (0xe011, "ECDHE_SM4_CBC_SM3"),
    (0xe051, "ECDHE_SM4_GCM_SM3"),
];

/// TLS 1.3 suites: the five of RFC 8446 and the two SM suites of RFC 8998.
pub const TLS13_SUITES: [u16; 7] = [0x1301, 0x1302, 0x1303, 0x1304, 0x1305, 0x00c6, 0x00c7];
/// RFC 8998 suites.
pub const TLS13_SM_SUITES: [u16; 2] = [0x00c6, 0x00c7];

/// A weakness class of a suite (suite-level ones) or of a version (`cbc_only`,
/// `no_forward_secrecy`).
pub const NULL: &str = "null";
pub const EXPORT: &str = "export";
pub const ANON: &str = "anon";
pub const RC4: &str = "rc4";
pub const TRIPLE_DES: &str = "3des";
pub const CBC_ONLY: &str = "cbc_only";
pub const NO_FORWARD_SECRECY: &str = "no_forward_secrecy";

/// The name of a suite: IANA for TLS, GB/T 38636 for TLCP, hex for unknown ones.
pub fn name(id: u16) -> String {
    if let Some((_, n)) = TLCP_SUITES.iter().find(|(i, _)| *i == id) {
        return (*n).to_string();
    }
    match id {
        0x00c6 => "TLS_SM4_GCM_SM3".into(),
        0x00c7 => "TLS_SM4_CCM_SM3".into(),
        _ => TlsCipherSuite::from_id(id)
            .map(|s| s.name.to_string())
            .unwrap_or_else(|| format!("0x{id:04X}")),
    }
}

/// The suite-level weak classes `id` falls in (empty for unknown or sound suites).
pub fn weak_classes(id: u16) -> Vec<&'static str> {
    let Some(s) = TlsCipherSuite::from_id(id) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if s.enc == TlsCipherEnc::Null {
        out.push(NULL);
    }
    // EXPORT suites, and single DES (56 bits), which is no stronger.
    if s.name.contains("EXPORT")
        || (s.enc != TlsCipherEnc::Null && s.enc_size > 0 && s.enc_size <= 56)
    {
        out.push(EXPORT);
    }
    if is_anon(s) {
        out.push(ANON);
    }
    if s.enc == TlsCipherEnc::Rc4 {
        out.push(RC4);
    }
    if s.enc == TlsCipherEnc::TripleDes {
        out.push(TRIPLE_DES);
    }
    out
}

fn is_anon(s: &TlsCipherSuite) -> bool {
    s.au == TlsCipherAu::Null && s.kx != TlsCipherKx::Null
}

/// One of the four TLCP suites of GB/T 38636.
pub fn tlcp_suite(id: u16) -> bool {
    TLCP_SUITES.iter().any(|(i, _)| *i == id)
}

/// Forward secrecy: an ephemeral key exchange that also authenticates the server (TLCP's
/// ECDHE suites too).
pub fn forward_secret(id: u16) -> bool {
    if tlcp_suite(id) {
        return matches!(id, 0xe011 | 0xe051);
    }
    TlsCipherSuite::from_id(id)
        .is_some_and(|s| matches!(s.kx, TlsCipherKx::Dhe | TlsCipherKx::Ecdhe) && !is_anon(s))
}

pub fn aead(id: u16) -> bool {
    if tlcp_suite(id) {
        return matches!(id, 0xe051 | 0xe053);
    }
    TlsCipherSuite::from_id(id).is_some_and(|s| s.mac == TlsCipherMac::Aead)
}

pub fn cbc(id: u16) -> bool {
    if tlcp_suite(id) {
        return matches!(id, 0xe011 | 0xe013);
    }
    TlsCipherSuite::from_id(id).is_some_and(|s| s.enc_mode == TlsCipherEncMode::Cbc)
}

/// Every TLS ≤ 1.2 suite worth offering: the IANA table less signalling values, TLS 1.3
/// suites, PSK/SRP/Kerberos ones (they need a shared secret the probe does not have) and the
/// null-null suite.
fn legacy_universe() -> &'static [u16] {
    static ALL: OnceLock<Vec<u16>> = OnceLock::new();
    ALL.get_or_init(|| {
        (1..=0xfeffu16)
            .filter(|&id| id != 0x00ff && id != 0x5600)
            .filter_map(|id| TlsCipherSuite::from_id(id).map(|s| (id, s)))
            .filter(|(_, s)| {
                !matches!(
                    s.kx,
                    TlsCipherKx::Tls13 | TlsCipherKx::Psk | TlsCipherKx::Srp | TlsCipherKx::Krb5
                ) && !matches!(
                    s.au,
                    TlsCipherAu::Psk
                        | TlsCipherAu::Krb5
                        | TlsCipherAu::Srp
                        | TlsCipherAu::Srp_Dss
                        | TlsCipherAu::Srp_Rsa
                ) && s.kx != TlsCipherKx::Eccpwd
            })
            .map(|(id, _)| id)
            .collect()
    })
}

/// Whether a suite exists before TLS 1.2 (no AEAD, no SHA-2 MAC or PRF).
fn pre_tls12(id: u16) -> bool {
    TlsCipherSuite::from_id(id).is_some_and(|s| {
        !matches!(
            s.mac,
            TlsCipherMac::Aead
                | TlsCipherMac::HmacSha256
                | TlsCipherMac::HmacSha384
                | TlsCipherMac::HmacSha512
        )
    })
}

/// Suites to offer at `version` (SSLv3 to TLS 1.2), sound ones first so that a server that
/// follows the client's order picks a modern one.
pub fn offer(version: u16) -> Vec<u16> {
    let mut v: Vec<u16> = legacy_universe()
        .iter()
        .copied()
        .filter(|&id| version >= TLS12 || pre_tls12(id))
        .collect();
    v.sort_by_key(|&id| (!weak_classes(id).is_empty(), !forward_secret(id), !aead(id)));
    v
}

/// The suite-level weak suites at `version`.
pub fn weak_offer(version: u16) -> Vec<u16> {
    offer(version)
        .into_iter()
        .filter(|&id| !weak_classes(id).is_empty())
        .collect()
}

/// Sound (not weak) suites at `version` matching `keep`.
pub fn sound_offer(version: u16, keep: impl Fn(u16) -> bool) -> Vec<u16> {
    offer(version)
        .into_iter()
        .filter(|&id| weak_classes(id).is_empty() && keep(id))
        .collect()
}

/// A version's contract name ("unknown" for other wire values).
pub fn version_name(v: u16) -> &'static str {
    super::TlsVersion::from_wire(v).map_or("unknown", super::TlsVersion::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(weak_classes(0x0002), vec![NULL]); // RSA_WITH_NULL_SHA
        assert_eq!(weak_classes(0x0003), vec![EXPORT, RC4]);
        assert_eq!(weak_classes(0x000a), vec![TRIPLE_DES]);
        assert_eq!(weak_classes(0x0034), vec![ANON]); // DH_anon_WITH_AES_128_CBC_SHA
        assert_eq!(weak_classes(0x0005), vec![RC4]);
        assert!(weak_classes(0xc02f).is_empty());
        assert!(forward_secret(0xc02f) && aead(0xc02f));
        assert!(!forward_secret(0x002f) && cbc(0x002f));
        assert!(!forward_secret(0x0034));
        assert_eq!(name(0xe013), "ECC_SM4_CBC_SM3");
        assert_eq!(name(0xc02f), "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
    }

    #[test]
    fn offers() {
        let tls10 = offer(0x0301);
        assert!(tls10.contains(&0x002f) && !tls10.contains(&0xc02f));
        assert!(offer(TLS12).contains(&0xc02f));
        assert!(!offer(TLS12).contains(&0x1301));
        assert!(weak_offer(TLS12).contains(&0x000a));
        assert!(offer(TLS12).len() < 400);
    }
}
