//! Capability links of the rectification loop (通报—整改—反馈—复测): a department's notice
//! carries a link to its own page on the daemon; the link is its only credential.
//!
//! Input: the link key (`daemon.link_key_env`, read by the compile step, else a random key
//! kept in the store), a department, a period and an expiry. Output: the token of
//! `GET /r/{token}`, and on the way back the [`Link`] it names or why it is refused.
//!
//! A token is `BASE64URL(payload).BASE64URL(HMAC-SHA256(key, payload))`, the payload being
//! `v1\n{department}\n{period}\n{expiry, unix seconds}`. The tag is checked (in constant time,
//! ring's `hmac::verify`) before anything in the payload is believed; then the expiry. A page's
//! CSRF token is the HMAC of the link's token under a key derived for that purpose, so it is
//! bound to the link and needs no server state; the form posts it in a hidden field.
//!
//! The operator page's session (`/operator`, [`crate::daemon`]) is signed the same way under
//! a third derived key: `BASE64URL("s1\n{actor}\n{expiry}").BASE64URL(tag)`, kept in an
//! HttpOnly, SameSite=Strict cookie for [`SESSION_HOURS`]; its forms' CSRF token is the CSRF
//! HMAC of the session token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ring::hmac;

/// Days a notice's link stays valid from its issue.
pub const LINK_VALID_DAYS: i64 = 45;

/// Longest token accepted (a department id and a period are short).
const MAX_TOKEN: usize = 512;

/// Hours an operator's page session lasts after the login.
pub const SESSION_HOURS: i64 = 8;

/// Fewest bytes of a configured link key.
pub const MIN_KEY_BYTES: usize = 32;

/// What a link grants: one department's page for one period, until `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub department: String,
    pub period: String,
    pub expires: DateTime<Utc>,
}

/// Why a token is refused (each answers 403 and is audited with its reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("malformed link")]
    Malformed,
    #[error("tampered link (bad signature)")]
    Tampered,
    #[error("expired link")]
    Expired,
    #[error("a department or period cannot hold a line break")]
    Unsignable,
}

/// The signing keys: one for links, one (derived) for CSRF tokens.
#[derive(Clone)]
pub struct LinkKey {
    link: hmac::Key,
    csrf: hmac::Key,
    session: hmac::Key,
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

impl LinkKey {
    /// The keys made from `secret`.
    pub fn new(secret: &[u8]) -> LinkKey {
        let link = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derived = hmac::sign(&link, b"netpatrol rectification csrf v1");
        let session = hmac::sign(&link, b"netpatrol operator session v1");
        LinkKey {
            link,
            csrf: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            session: hmac::Key::new(hmac::HMAC_SHA256, session.as_ref()),
        }
    }

    /// A fresh random key, hex (what the store keeps when the config names none).
    pub fn random_hex() -> Result<String, ring::error::Unspecified> {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The token of `link`.
    pub fn sign(&self, link: &Link) -> Result<String, LinkError> {
        if link.department.contains('\n') || link.period.contains('\n') {
            return Err(LinkError::Unsignable);
        }
        let payload = format!(
            "v1\n{}\n{}\n{}",
            link.department,
            link.period,
            link.expires.timestamp()
        );
        Ok(seal(&self.link, &payload))
    }

    /// The link `token` names, if its signature holds and it has not expired at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Link, LinkError> {
        let text = open(&self.link, token)?;
        let mut parts = text.split('\n');
        let (Some("v1"), Some(department), Some(period), Some(expiry), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(LinkError::Malformed);
        };
        let expires = unexpired(expiry, now)?;
        Ok(Link {
            department: department.to_string(),
            period: period.to_string(),
            expires,
        })
    }

    /// An operator session for `actor` (as the audit names them), until `expires`.
    pub fn sign_session(&self, actor: &str, expires: DateTime<Utc>) -> Result<String, LinkError> {
        if actor.contains('\n') {
            return Err(LinkError::Unsignable);
        }
        let payload = format!("s1\n{actor}\n{}", expires.timestamp());
        Ok(seal(&self.session, &payload))
    }

    /// The actor of session `token`, if its signature holds and it has not expired at `now`.
    pub fn verify_session(&self, token: &str, now: DateTime<Utc>) -> Result<String, LinkError> {
        let text = open(&self.session, token)?;
        let mut parts = text.split('\n');
        let (Some("s1"), Some(actor), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LinkError::Malformed);
        };
        unexpired(expiry, now)?;
        Ok(actor.to_string())
    }

    /// The CSRF token of the page `token` opens.
    pub fn csrf(&self, token: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.csrf, token.as_bytes()).as_ref())
    }

    /// Whether `given` is the CSRF token of the page `token` opens (constant time).
    pub fn csrf_ok(&self, token: &str, given: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(given)
            .is_ok_and(|tag| hmac::verify(&self.csrf, token.as_bytes(), &tag).is_ok())
    }
}

/// The operator page's address: `{public_url}/operator`.
pub fn operator_url(public_url: &str) -> String {
    format!("{}/operator", public_url.trim_end_matches('/'))
}

/// The page's address: `{public_url}/r/{token}` (one slash between them).
pub fn page_url(public_url: &str, token: &str) -> String {
    format!("{}/r/{token}", public_url.trim_end_matches('/'))
}

/// Why the store's link key cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or keep the link key: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("no randomness for a new link key")]
    Random,
    #[error("the link key kept in the store is empty")]
    Empty,
}

/// The key kept in `store` (made and kept the first time): the link key when the config
/// names none. Every process sharing the store signs and checks with the same key.
pub async fn stored_key(store: &crate::store::Store) -> Result<LinkKey, KeyError> {
    let fresh = LinkKey::random_hex().map_err(|_| KeyError::Random)?;
    let hex = store.link_key_or_create(fresh).await?;
    if hex.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(LinkKey::new(hex.as_bytes()))
}

/// `payload` and its HMAC-SHA256 tag under `key`, as `PAYLOAD.TAG` (base64url each).
fn seal(key: &hmac::Key, payload: &str) -> String {
    let tag = hmac::sign(key, payload.as_bytes());
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

/// The payload of a [`seal`]ed `token`, once its tag is checked (constant time) under `key`.
/// Signed by us: a payload that then does not parse is still refused, never trusted.
fn open(key: &hmac::Key, token: &str) -> Result<String, LinkError> {
    if token.len() > MAX_TOKEN {
        return Err(LinkError::Malformed);
    }
    let (payload, tag) = token.split_once('.').ok_or(LinkError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| LinkError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| LinkError::Malformed)?;
    hmac::verify(key, &payload, &tag).map_err(|_| LinkError::Tampered)?;
    String::from_utf8(payload).map_err(|_| LinkError::Malformed)
}

/// The expiry `seconds` (Unix time) of a token, if it is still ahead of `now`.
fn unexpired(seconds: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, LinkError> {
    let expires = seconds
        .parse::<i64>()
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .ok_or(LinkError::Malformed)?;
    if now >= expires {
        return Err(LinkError::Expired);
    }
    Ok(expires)
}
