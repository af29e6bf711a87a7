//! The protocol versions the TLS probe tells apart, as one type.
//!
//! Serialised as the contract's strings (`SSLv3`, `TLSv1.0`, `TLSv1.1`, `TLSv1.2`, `TLSv1.3`,
//! `TLCP`), which are also its `Display`; ordered oldest first, TLCP last. The wire value
//! (`0x0303`, `0x0101`, ...) is [`TlsVersion::wire`].

use std::fmt;

use serde::{Deserialize, Serialize};

use super::wire;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "SSLv3")]
    Ssl3,
    #[serde(rename = "TLSv1.0")]
    Tls10,
    #[serde(rename = "TLSv1.1")]
    Tls11,
    #[serde(rename = "TLSv1.2")]
    Tls12,
    #[serde(rename = "TLSv1.3")]
    Tls13,
    /// GB/T 38636 TLCP (wire version 0x0101).
    #[serde(rename = "TLCP")]
    Tlcp,
}

impl TlsVersion {
    /// Every version, oldest first, TLCP last.
    pub const ALL: [TlsVersion; 6] = [
        TlsVersion::Ssl3,
        TlsVersion::Tls10,
        TlsVersion::Tls11,
        TlsVersion::Tls12,
        TlsVersion::Tls13,
        TlsVersion::Tlcp,
    ];

    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Ssl3 => "SSLv3",
            TlsVersion::Tls10 => "TLSv1.0",
            TlsVersion::Tls11 => "TLSv1.1",
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
            TlsVersion::Tlcp => "TLCP",
        }
    }

    /// The version from its contract name.
    pub fn parse(s: &str) -> Option<TlsVersion> {
        TlsVersion::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The version field on the wire.
    pub fn wire(self) -> u16 {
        match self {
            TlsVersion::Ssl3 => wire::SSL3,
            TlsVersion::Tls10 => wire::TLS10,
            TlsVersion::Tls11 => wire::TLS11,
            TlsVersion::Tls12 => wire::TLS12,
            TlsVersion::Tls13 => wire::TLS13,
            TlsVersion::Tlcp => wire::TLCP,
        }
    }

    /// The version of a wire value, if it is one of these.
    pub fn from_wire(v: u16) -> Option<TlsVersion> {
        TlsVersion::ALL.into_iter().find(|t| t.wire() == v)
    }

    /// SSLv3, TLS 1.0 and TLS 1.1: deprecated (RFC 8996).
    pub fn legacy(self) -> bool {
        matches!(
            self,
            TlsVersion::Ssl3 | TlsVersion::Tls10 | TlsVersion::Tls11
        )
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for TlsVersion {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for TlsVersion {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<TlsVersion> for String {
    fn from(v: TlsVersion) -> String {
        v.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for v in TlsVersion::ALL {
            assert_eq!(TlsVersion::parse(v.as_str()), Some(v));
            assert_eq!(TlsVersion::from_wire(v.wire()), Some(v));
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{v}\""));
        }
        assert!(TlsVersion::Tls11.legacy() && !TlsVersion::Tls12.legacy());
        assert!(TlsVersion::Tls13 == "TLSv1.3");
    }
}
