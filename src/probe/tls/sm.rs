//! 国密 certificate checks: SM3withSM2 signatures for chain building, and the TLCP
//! certificate roles of GB/T 38636.
//!
//! rustls-webpki builds and checks chains but knows no SM2. [`ALGORITHMS`] plugs SM3withSM2
//! (GB/T 32918 signatures over SM3, with the default distinguishing identifier
//! [`DEFAULT_DISTID`] of GM/T 0009) into it through its `SignatureVerificationAlgorithm`
//! trait, verified with RustCrypto's `sm2` crate; `cert` hands them to webpki next to ring's
//! algorithms, so an SM2 chain is built to an SM2 root of `trust.ca_files` and checked like any
//! other (validity, CA constraints, signatures).
//!
//! TLCP sends two certificates: the signing certificate (its key signs the handshake) must
//! allow `digitalSignature`; the encryption certificate (its key encrypts or agrees the
//! pre-master secret) must allow `keyEncipherment`, `dataEncipherment` or `keyAgreement`.
//! [`tlcp_usage_problems`] says what is wrong with a pair.

use rustls_pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};
use sm2::dsa::signature::Verifier;
use x509_parser::prelude::*;

/// The distinguishing identifier used when a certificate carries none (GM/T 0009).
pub const DEFAULT_DISTID: &str = "1234567812345678";

/// Contents of an AlgorithmIdentifier: OID id-ecPublicKey with the curve OID sm2p256v1, as
/// Tongsuo, GmSSL and OpenSSL write SM2 keys.
const SM2_KEY_EC: AlgorithmIdentifier = AlgorithmIdentifier::from_slice(&[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // 1.2.840.10045.2.1
    0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d, // 1.2.156.10197.1.301
]);
/// Some CAs write the SM2 OID as the key algorithm itself.
const SM2_KEY_SM2: AlgorithmIdentifier = AlgorithmIdentifier::from_slice(&[
    0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d, // 1.2.156.10197.1.301
    0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d,
]);
/// SM3withSM2 (1.2.156.10197.1.501), parameters absent.
const SM3_WITH_SM2: AlgorithmIdentifier =
    AlgorithmIdentifier::from_slice(&[0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x75]);
/// SM3withSM2 with NULL parameters, as some issuers write it.
const SM3_WITH_SM2_NULL: AlgorithmIdentifier = AlgorithmIdentifier::from_slice(&[
    0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x75, 0x05, 0x00,
]);

/// SM3withSM2 for one spelling of the key and signature algorithm identifiers.
#[derive(Debug)]
struct Sm3WithSm2 {
    key: AlgorithmIdentifier,
    signature: AlgorithmIdentifier,
}

impl SignatureVerificationAlgorithm for Sm3WithSm2 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        verify(public_key, message, signature, DEFAULT_DISTID).map_err(|()| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.key
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.signature
    }
}

/// Every spelling of SM3withSM2 webpki may meet.
pub static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    &Sm3WithSm2 {
        key: SM2_KEY_EC,
        signature: SM3_WITH_SM2,
    },
    &Sm3WithSm2 {
        key: SM2_KEY_EC,
        signature: SM3_WITH_SM2_NULL,
    },
    &Sm3WithSm2 {
        key: SM2_KEY_SM2,
        signature: SM3_WITH_SM2,
    },
    &Sm3WithSm2 {
        key: SM2_KEY_SM2,
        signature: SM3_WITH_SM2_NULL,
    },
];

/// Verify a DER SM2 signature (`SEQUENCE { r, s }`) over `message` by the SEC1 point
/// `public_key`, with distinguishing identifier `distid`.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8], distid: &str) -> Result<(), ()> {
    let key = sm2::dsa::VerifyingKey::from_sec1_bytes(distid, public_key).map_err(|_| ())?;
    let der = sm2::dsa::DerSignature::from_bytes(signature).map_err(|_| ())?;
    let sig = sm2::dsa::Signature::try_from(der).map_err(|_| ())?;
    key.verify(message, &sig).map_err(|_| ())
}

/// What a certificate's keyUsage allows, as OpenSSL names the bits; `None` when the
/// certificate has no keyUsage extension (every use allowed) or it does not parse.
pub fn key_usage(cert: &X509Certificate<'_>) -> Option<Vec<String>> {
    let ku = cert.key_usage().ok()??.value;
    let bits = [
        (ku.digital_signature(), "digitalSignature"),
        (ku.non_repudiation(), "nonRepudiation"),
        (ku.key_encipherment(), "keyEncipherment"),
        (ku.data_encipherment(), "dataEncipherment"),
        (ku.key_agreement(), "keyAgreement"),
        (ku.key_cert_sign(), "keyCertSign"),
        (ku.crl_sign(), "cRLSign"),
        (ku.encipher_only(), "encipherOnly"),
        (ku.decipher_only(), "decipherOnly"),
    ];
    Some(
        bits.iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n.to_string())
            .collect(),
    )
}

/// Whether a key usage list (`None`: no extension) allows signing.
fn signs(usage: Option<&[String]>) -> bool {
    usage.is_none_or(|u| u.iter().any(|b| b == "digitalSignature"))
}

/// Whether a key usage list (`None`: no extension) allows key exchange.
fn encrypts(usage: Option<&[String]>) -> bool {
    usage.is_none_or(|u| {
        u.iter().any(|b| {
            matches!(
                b.as_str(),
                "keyEncipherment" | "dataEncipherment" | "keyAgreement"
            )
        })
    })
}

/// What is wrong with a TLCP certificate pair, given the keyUsage of the signing and the
/// encryption certificate (`None` inside: no extension; outer `None`: certificate missing or
/// unparsable). Empty when both fit their roles. Each item is a short English tag:
/// `signing_certificate_missing`, `encryption_certificate_missing`,
/// `signing_certificate_cannot_sign`, `encryption_certificate_cannot_encrypt`, `swapped`.
pub fn tlcp_usage_problems(
    sign: Option<Option<&[String]>>,
    enc: Option<Option<&[String]>>,
) -> Vec<String> {
    let mut out = Vec::new();
    match sign {
        None => out.push("signing_certificate_missing"),
        Some(u) if !signs(u) => out.push("signing_certificate_cannot_sign"),
        Some(_) => {}
    }
    match enc {
        None => out.push("encryption_certificate_missing"),
        Some(u) if !encrypts(u) => out.push("encryption_certificate_cannot_encrypt"),
        Some(_) => {}
    }
    if let (Some(s), Some(e)) = (sign, enc)
        && !signs(s)
        && !encrypts(e)
        && encrypts(s)
        && signs(e)
    {
        out.push("swapped");
    }
    out.into_iter().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn usage_roles() {
        let sign = l(&["digitalSignature", "nonRepudiation"]);
        let enc = l(&["keyEncipherment", "dataEncipherment"]);
        assert!(tlcp_usage_problems(Some(Some(&sign)), Some(Some(&enc))).is_empty());
        assert!(tlcp_usage_problems(Some(None), Some(None)).is_empty());
        assert_eq!(
            tlcp_usage_problems(Some(Some(&enc)), Some(Some(&sign))),
            [
                "signing_certificate_cannot_sign",
                "encryption_certificate_cannot_encrypt",
                "swapped"
            ]
        );
        assert_eq!(
            tlcp_usage_problems(Some(Some(&sign)), None),
            ["encryption_certificate_missing"]
        );
        let agree = l(&["keyAgreement"]);
        assert!(tlcp_usage_problems(Some(Some(&sign)), Some(Some(&agree))).is_empty());
    }

    #[test]
    fn garbage_signatures_do_not_verify() {
        assert!(verify(&[4; 65], b"m", &[0x30, 0], DEFAULT_DISTID).is_err());
        assert!(verify(&[], b"m", &[], DEFAULT_DISTID).is_err());
    }
}
