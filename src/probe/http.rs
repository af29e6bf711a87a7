//! HTTP probe: what a web service shows an anonymous visitor.
//!
//! Input: a [`Target`], a port, whether it speaks TLS, and an [`HttpSpec`]. Output:
//! [`HttpFacts`] (status, title, `Server`, HSTS, redirect to HTTPS, login form, directory
//! listing, admin consoles that answer), `None` when the port does not speak HTTP, or a
//! [`Failure`] when it could not be reached.
//!
//! Invariants:
//! - Only the target's address is ever contacted: URLs carry the IP literal, or the host name of
//!   `spec.host`, which a private resolver maps to the target's address and nothing else (no
//!   system DNS, no proxy). Redirects are followed by hand, only to the same address or that
//!   host name; a redirect elsewhere is recorded, never followed.
//! - Read-only: `GET` only, no cookies, no credentials, no forms submitted.
//! - Bounded: each body is cut at `spec.max_body` bytes (compressed and decompressed alike, so a
//!   gzip bomb costs at most that much), redirects at `spec.max_redirects`, the page fetch
//!   (redirects included) at `spec.timeout`, and the admin-path checks at another
//!   `spec.timeout`: a server that trickles bytes is cut off, and what arrived is kept.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use reqwest::header::{self, HeaderMap};
use reqwest::{Client, Url};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};

use super::banner::printable;
use super::{Failure, Reason};
use crate::scope::{Limits, Target};

/// What the HTTP probe saw. Field names are part of the scan report (contract §3: `status`,
/// `title`, `server`, `hsts`, `redirects_to_https`; the rest are extensions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFacts {
    /// Status of `GET /`, after the redirects that were followed.
    pub status: u16,
    /// `<title>`, decoded, whitespace collapsed, at most [`TITLE_MAX`] characters.
    pub title: Option<String>,
    /// `Server` header, printable.
    pub server: Option<String>,
    /// `Strict-Transport-Security` was sent over HTTPS.
    pub hsts: bool,
    /// Plain HTTP answered with a redirect to an `https://` URL (on this host or a canonical
    /// name elsewhere; recorded in `redirect_stopped_at`, never followed).
    pub redirects_to_https: bool,
    /// `http` or `https`.
    pub scheme: String,
    /// `Content-Security-Policy` present.
    pub csp: bool,
    /// `X-Frame-Options` present.
    pub x_frame_options: bool,
    /// The page holds an `<input type="password">`.
    pub login_form: bool,
    /// The page is a server-generated file index.
    pub directory_listing: bool,
    /// Admin console paths that answered 200 (or 401, a basic-auth console), distinct from the
    /// site's answer to a path that does not exist.
    pub admin_paths: Vec<String>,
    /// The URL whose answer these facts describe, when redirects were followed.
    pub final_url: Option<String>,
    /// A redirect that was not followed (to another scheme, address or host), printable.
    pub redirect_stopped_at: Option<String>,
    /// `Server` or `X-Powered-By` names a version number ("nginx/1.18.0", "PHP/5.4.16").
    pub version_disclosed: bool,
    /// `X-Powered-By` header, printable.
    pub powered_by: Option<String>,
    /// The encoding the page was decoded with, by its WHATWG name (`UTF-8`, `GBK`, `gb18030`, ...).
    pub charset: Option<String>,
    /// Body bytes kept (after decompression); never more than `max_body`.
    pub body_bytes: usize,
    /// The body was cut: by `max_body`, the deadline, or a broken connection.
    pub body_truncated: bool,
}

/// Longest title kept, in characters.
pub const TITLE_MAX: usize = 200;

/// Admin consoles often left reachable on government sites: Tomcat manager, phpMyAdmin,
/// WebLogic, Nacos, Spring Boot actuator, Druid monitor, Jenkins, Solr, XXL-JOB, Swagger UI,
/// JBoss JMX console.
pub const DEFAULT_ADMIN_PATHS: &[&str] = &[
    "/manager/html",
    "/phpmyadmin/",
    "/admin/",
    "/console/",
    "/nacos/",
    "/actuator",
    "/druid/index.html",
    "/jenkins/",
    "/solr/",
    "/xxl-job-admin/",
    "/swagger-ui.html",
    "/jmx-console/",
];

/// Most admin paths checked per service, whatever the spec says.
pub const MAX_ADMIN_PATHS: usize = 16;

/// Admin-path requests in flight at once.
const ADMIN_CONCURRENCY: usize = 4;

/// Body kept per admin-path answer: enough to tell a console from the catch-all page.
const ADMIN_BODY_MAX: usize = 64 * 1024;

/// How one HTTP probe behaves.
#[derive(Debug, Clone)]
pub struct HttpSpec {
    /// Deadline of the page fetch (connect, TLS, every redirect, body), and again of the
    /// admin-path checks together.
    pub timeout: Duration,
    /// Body bytes read at most, compressed and decompressed (default 512 KiB).
    pub max_body: usize,
    /// Redirects followed at most (default 5).
    pub max_redirects: usize,
    /// Paths checked for admin consoles (default [`DEFAULT_ADMIN_PATHS`]; at most
    /// [`MAX_ADMIN_PATHS`] are used). Empty: no admin checks.
    pub admin_paths: Vec<String>,
    /// Host name to ask for (`Host` header, TLS SNI), e.g. from a project's assets or the PTR
    /// name; it always resolves to the target's address. `None`: the IP literal.
    pub host: Option<String>,
}

impl Default for HttpSpec {
    fn default() -> HttpSpec {
        HttpSpec {
            timeout: Duration::from_secs(5),
            max_body: 512 * 1024,
            max_redirects: 5,
            admin_paths: DEFAULT_ADMIN_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            host: None,
        }
    }
}

const USER_AGENT: &str = concat!(
    "netpatrol/",
    env!("CARGO_PKG_VERSION"),
    " (network inventory)"
);

/// Probe the web service on `port` of `target`; the caller (the scan's fan-out) holds the
/// concurrency slot. `Ok(None)`: the port answered, but not in HTTP.
pub async fn probe(
    target: &Target,
    port: u16,
    tls: bool,
    spec: &HttpSpec,
    limits: &Limits,
) -> Result<Option<HttpFacts>, Failure> {
    let host = spec.host.as_deref().and_then(valid_host);
    let client = client(target.ip(), host, spec.timeout)?;
    let base = base_url(target.ip(), port, tls, host)?;
    let scope = Origin {
        ip: target.ip(),
        host,
    };

    // The page, following redirects that stay on the target.
    let deadline = Instant::now() + spec.timeout;
    let mut url = base.clone();
    let mut hsts = false;
    let mut redirects_to_https = false;
    let mut redirect_stopped_at = None;
    let mut followed = 0;
    let page = loop {
        limits.attempt().await;
        let page = match fetch(&client, url.clone(), deadline, spec.max_body).await {
            Ok(page) => page,
            Err(Fetch::NotHttp) => return Ok(None),
            Err(Fetch::Failed(failure)) => return Err(failure),
        };
        hsts |= page.url.scheme() == "https"
            && page.headers.contains_key(header::STRICT_TRANSPORT_SECURITY);
        let location = (300..400)
            .contains(&page.status)
            .then(|| page.headers.get(header::LOCATION))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| page.url.join(v.trim()).ok());
        let Some(next) = location else {
            break page;
        };
        let on_target = scope.contains(&next);
        if page.url.scheme() == "http" && next.scheme() == "https" {
            // The HTTPS side is probed on its own port; the redirect is the fact, wherever it
            // points (sites commonly redirect an address to their canonical HTTPS name). It is
            // not followed, so no other host is ever contacted.
            redirects_to_https = true;
            redirect_stopped_at = Some(printable(next.as_str().as_bytes()));
            break page;
        }
        if !on_target || !matches!(next.scheme(), "http" | "https") {
            redirect_stopped_at = Some(printable(next.as_str().as_bytes()));
            break page;
        }
        if followed >= spec.max_redirects {
            redirect_stopped_at = Some(printable(next.as_str().as_bytes()));
            break page;
        }
        followed += 1;
        url = next;
    };

    let body = decompress(&page.body, &page.headers, spec.max_body);
    let (text, charset) = decode(&body.bytes, page.headers.get(header::CONTENT_TYPE));
    let title = title(&text);
    let server = header_text(&page.headers, header::SERVER);
    let powered_by = header_text(&page.headers, "x-powered-by");
    let version_disclosed = [&server, &powered_by]
        .into_iter()
        .flatten()
        .any(|v| names_version(v));

    let admin_paths = if spec.admin_paths.is_empty() {
        Vec::new()
    } else {
        let paths: Vec<String> = spec
            .admin_paths
            .iter()
            .take(MAX_ADMIN_PATHS)
            .cloned()
            .collect();
        admin_paths(&client, &base, &paths, spec.timeout, limits).await
    };

    Ok(Some(HttpFacts {
        status: page.status,
        directory_listing: is_directory_listing(&text, title.as_deref()),
        login_form: LOGIN_FORM.is_match(&text),
        title,
        server,
        hsts,
        redirects_to_https,
        scheme: base.scheme().to_owned(),
        csp: page.headers.contains_key(header::CONTENT_SECURITY_POLICY),
        x_frame_options: page.headers.contains_key(header::X_FRAME_OPTIONS),
        admin_paths,
        final_url: (followed > 0).then(|| printable(page.url.as_str().as_bytes())),
        redirect_stopped_at,
        version_disclosed,
        powered_by,
        charset: Some(charset.to_owned()),
        body_bytes: body.bytes.len(),
        body_truncated: page.truncated || body.truncated,
    }))
}

/// One `GET` with a capped body, for the service checks (Elasticsearch, Docker, kubelet): no
/// redirects, `cap` body bytes at most, everything within `timeout`. Takes no limits slot (the
/// caller holds one) but waits for a connection attempt. `Ok(None)`: not HTTP.
pub(crate) async fn get(
    target: &Target,
    port: u16,
    tls: bool,
    path: &str,
    timeout: Duration,
    cap: usize,
    limits: &Limits,
) -> Result<Option<Response>, Failure> {
    let client = client(target.ip(), None, timeout)?;
    let url = base_url(target.ip(), port, tls, None)?
        .join(path)
        .map_err(|e| Failure::new(Reason::Other, format!("bad path {path}: {e}")))?;
    limits.attempt().await;
    match fetch(&client, url, Instant::now() + timeout, cap).await {
        Ok(page) => {
            let body = decompress(&page.body, &page.headers, cap);
            Ok(Some(Response {
                status: page.status,
                headers: page.headers,
                body: body.bytes,
            }))
        }
        Err(Fetch::NotHttp) => Ok(None),
        Err(Fetch::Failed(failure)) => Err(failure),
    }
}

/// An answer of [`get`].
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Install the ring crypto provider as the process default, unless one already is. The HTTP
/// probe passes its own ring configuration and does not need it; other rustls users might.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where redirects may go: the target's address, or the host name the spec asked for.
struct Origin<'a> {
    ip: IpAddr,
    host: Option<&'a str>,
}

impl Origin<'_> {
    fn contains(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => ip == self.ip,
            Err(_) => self
                .host
                .is_some_and(|h| host.trim_end_matches('.').eq_ignore_ascii_case(h)),
        }
    }
}

/// A host name usable in a URL (not an IP literal: that would name another address).
fn valid_host(host: &str) -> Option<&str> {
    let host = host.trim().trim_end_matches('.');
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.parse::<IpAddr>().is_err()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some(host)
}

fn base_url(ip: IpAddr, port: u16, tls: bool, host: Option<&str>) -> Result<Url, Failure> {
    let scheme = if tls { "https" } else { "http" };
    let authority = match (host, ip) {
        (Some(h), _) => h.to_owned(),
        (None, IpAddr::V4(a)) => a.to_string(),
        (None, IpAddr::V6(a)) => format!("[{a}]"),
    };
    Url::parse(&format!("{scheme}://{authority}:{port}/"))
        .map_err(|e| Failure::new(Reason::Other, format!("bad url: {e}")))
}

/// Resolves one host name, to the target's address; refuses every other name, so the client
/// can never be led anywhere else and never asks the system's DNS.
struct PinnedResolver {
    host: Option<String>,
    ip: IpAddr,
}

impl reqwest::dns::Resolve for PinnedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let answer: Result<reqwest::dns::Addrs, Box<dyn std::error::Error + Send + Sync>> =
            match &self.host {
                Some(h) if name.as_str().trim_end_matches('.').eq_ignore_ascii_case(h) => {
                    Ok(Box::new(std::iter::once(SocketAddr::new(self.ip, 0))))
                }
                _ => Err(format!("{} is not the probed host", name.as_str()).into()),
            };
        Box::pin(std::future::ready(answer))
    }
}

fn client(ip: IpAddr, host: Option<&str>, timeout: Duration) -> Result<Client, Failure> {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .referer(false)
        .http1_only()
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(ADMIN_CONCURRENCY)
        .user_agent(USER_AGENT)
        .dns_resolver(PinnedResolver {
            host: host.map(str::to_owned),
            ip,
        })
        .tls_backend_preconfigured(tls_config())
        .build()
        .map_err(|e| Failure::new(Reason::Other, format!("http client: {e}")))
}

/// rustls with ring, TLS 1.2 and 1.3, any certificate accepted: the TLS probe judges
/// certificates; this probe only wants the page behind them.
fn tls_config() -> rustls::ClientConfig {
    static CONFIG: LazyLock<rustls::ClientConfig> = LazyLock::new(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    });
    CONFIG.clone()
}

/// Accepts every certificate, but still checks that the handshake signatures are sound. An
/// X.509 v1 (or v2) certificate, which webpki refuses to parse (`UnsupportedCertVersion`), has
/// its handshake signature checked here against the key x509-parser reads from it, as the TLS
/// probe reads such certificates: the page behind an old certificate is still fetched.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl AnyCertificate {
    /// The handshake signature of a pre-v3 certificate, verified with the provider's algorithm
    /// for `dss.scheme` whose key algorithm matches the certificate's. `None` when the
    /// certificate is v3 (webpki's verdict stands) or does not parse.
    fn legacy_version_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
        tls13: bool,
    ) -> Option<Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>> {
        use x509_parser::prelude::{FromDer, X509Certificate, X509Version};
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
        if parsed.version() == X509Version::V3 {
            return None;
        }
        let bad = || {
            Some(Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature,
            )))
        };
        // RFC 8446 4.2.3: no PKCS#1 v1.5 or SHA-1 signatures in TLS 1.3 handshakes.
        use rustls::SignatureScheme as S;
        let legacy_scheme = matches!(
            dss.scheme,
            S::RSA_PKCS1_SHA1
                | S::RSA_PKCS1_SHA256
                | S::RSA_PKCS1_SHA384
                | S::RSA_PKCS1_SHA512
                | S::ECDSA_SHA1_Legacy
        );
        if tls13 && legacy_scheme {
            return bad();
        }
        let key_alg = spki_algorithm(parsed.public_key().raw)?;
        let key = &parsed.public_key().subject_public_key.data;
        let algs = self
            .0
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .unwrap_or_default();
        let alg = algs
            .iter()
            .find(|a| a.public_key_alg_id().as_ref() == key_alg)?;
        match alg.verify_signature(key, message, dss.signature()) {
            Ok(()) => Some(Ok(
                rustls::client::danger::HandshakeSignatureValid::assertion(),
            )),
            Err(_) => bad(),
        }
    }
}

/// The contents of the AlgorithmIdentifier of a DER SubjectPublicKeyInfo.
fn spki_algorithm(spki: &[u8]) -> Option<&[u8]> {
    /// Tag 0x30 (SEQUENCE) and a definite length: the contents and what follows.
    fn sequence(b: &[u8]) -> Option<(&[u8], &[u8])> {
        if *b.first()? != 0x30 {
            return None;
        }
        let first = usize::from(*b.get(1)?);
        let (len, start) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 3 {
                return None;
            }
            let len = b
                .get(2..2 + n)?
                .iter()
                .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
            (len, 2 + n)
        };
        let end = start.checked_add(len)?;
        Some((b.get(start..end)?, b.get(end..)?))
    }
    let (outer, _) = sequence(spki)?;
    let (alg, _) = sequence(outer)?;
    Some(alg)
}

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
        .or_else(|e| {
            self.legacy_version_signature(message, cert, dss, false)
                .unwrap_or(Err(e))
        })
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
        .or_else(|e| {
            self.legacy_version_signature(message, cert, dss, true)
                .unwrap_or(Err(e))
        })
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One answer, body capped.
struct Page {
    url: Url,
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    truncated: bool,
}

enum Fetch {
    /// Bytes came back, but not an HTTP response.
    NotHttp,
    Failed(Failure),
}

/// `GET url`: the head before `deadline`, then body bytes until the end, `max_body`, the
/// deadline or an error, whichever comes first. A cut body is kept and marked.
async fn fetch(
    client: &Client,
    url: Url,
    deadline: Instant,
    max_body: usize,
) -> Result<Page, Fetch> {
    let request = client
        .get(url)
        .header(header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")
        .header(header::ACCEPT_LANGUAGE, "zh-CN,zh;q=0.9,en;q=0.5")
        // Decompressed here, under the body cap; never brotli or zstd.
        .header(header::ACCEPT_ENCODING, "gzip, deflate");
    let mut response = match timeout_at(deadline, request.send()).await {
        Err(_) => return Err(Fetch::Failed(Failure::timeout())),
        Ok(Err(error)) => return Err(classify(&error)),
        Ok(Ok(response)) => response,
    };
    let url = response.url().clone();
    let status = response.status().as_u16();
    let headers = std::mem::take(response.headers_mut());
    let mut body = Vec::new();
    let mut truncated = false;
    loop {
        match timeout_at(deadline, response.chunk()).await {
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => {
                let room = max_body - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() >= room {
                    truncated = chunk.len() > room || body.len() == max_body;
                    break;
                }
            }
            // Deadline, or the connection broke mid-body: keep what came.
            Err(_) | Ok(Err(_)) => {
                truncated = true;
                break;
            }
        }
    }
    // Dropping an unfinished response closes its connection.
    drop(response);
    Ok(Page {
        url,
        status,
        headers,
        body,
        truncated,
    })
}

/// Sort a client error into "not HTTP" and a bounded failure reason.
fn classify(error: &reqwest::Error) -> Fetch {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            // "Unexpected message": the peer spoke before the request was sent, as SSH, FTP,
            // SMTP or MySQL do. hyper has no predicate for that kind; its message is stable.
            if h.is_parse()
                || h.is_parse_status()
                || h.is_incomplete_message()
                || (std::error::Error::source(h).is_none()
                    && h.to_string().contains("unexpected message"))
            {
                return Fetch::NotHttp;
            }
        }
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Fetch::Failed(Failure::new(Reason::Protocol, format!("tls: {t}")));
        }
        if let Some(mut io) = e.downcast_ref::<std::io::Error>() {
            // The TLS connector wraps a rustls error in an io::Error, sometimes in two; an
            // io::Error's `source` skips what it wraps, so unwrap by hand.
            while let Some(inner) = io.get_ref() {
                if let Some(t) = inner.downcast_ref::<rustls::Error>() {
                    return Fetch::Failed(Failure::new(Reason::Protocol, format!("tls: {t}")));
                }
                match inner.downcast_ref::<std::io::Error>() {
                    Some(i) => io = i,
                    None => break,
                }
            }
            return Fetch::Failed(Failure::io(io));
        }
        source = e.source();
    }
    if error.is_timeout() {
        return Fetch::Failed(Failure::timeout());
    }
    Fetch::Failed(Failure::new(Reason::Other, error.to_string()))
}

struct Body {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Undo `Content-Encoding: gzip`/`deflate`, keeping at most `max` bytes (a gzip bomb stops
/// there). Other encodings are kept as they came (the title will not be found).
fn decompress(raw: &[u8], headers: &HeaderMap, max: usize) -> Body {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    fn capped(reader: impl Read, max: usize) -> Body {
        let mut out = Vec::new();
        // Errors (a cut stream) keep what was decoded before them.
        let _ = reader.take(max as u64 + 1).read_to_end(&mut out);
        let truncated = out.len() > max;
        out.truncate(max);
        Body {
            bytes: out,
            truncated,
        }
    }
    match encoding.as_str() {
        "gzip" | "x-gzip" => capped(flate2::read::MultiGzDecoder::new(raw), max),
        "deflate" => {
            // RFC 9110 says zlib; some servers send raw deflate.
            let zlib = capped(flate2::read::ZlibDecoder::new(raw), max);
            if zlib.bytes.is_empty() && !raw.is_empty() {
                capped(flate2::read::DeflateDecoder::new(raw), max)
            } else {
                zlib
            }
        }
        _ => Body {
            bytes: raw[..raw.len().min(max)].to_vec(),
            truncated: false,
        },
    }
}

static META_CHARSET: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
    regex::bytes::Regex::new(r#"(?i)<meta\b[^>]*?\bcharset\s*=\s*["']?\s*([a-z0-9_:.\-]+)"#)
        .expect("valid regex")
});

static LOGIN_FORM: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r#"(?i)<input\b[^>]*?\btype\s*=\s*["']?password\b"#).expect("valid regex")
});

/// Decode the body: a BOM first, then the `Content-Type` charset, then a `<meta>` charset in
/// the first 8 KiB, else UTF-8 — or GB18030 when the bytes are not UTF-8 and nothing was
/// declared, as older Chinese sites send GBK without saying so.
fn decode(body: &[u8], content_type: Option<&header::HeaderValue>) -> (String, &'static str) {
    use encoding_rs::Encoding;
    let declared = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(charset_param)
        .and_then(|l| Encoding::for_label(l.as_bytes()))
        .or_else(|| {
            let head = &body[..body.len().min(8192)];
            META_CHARSET
                .captures(head)
                .and_then(|c| Encoding::for_label(&c[1]))
        });
    let encoding = match Encoding::for_bom(body) {
        Some((bom, _)) => bom,
        None => match declared {
            // A page that says UTF-16 in ASCII is not UTF-16 (HTML standard).
            Some(e) if e == encoding_rs::UTF_16LE || e == encoding_rs::UTF_16BE => {
                encoding_rs::UTF_8
            }
            Some(e) => e,
            None if std::str::from_utf8(body).is_err() && !cut_utf8(body) => encoding_rs::GB18030,
            None => encoding_rs::UTF_8,
        },
    };
    let (text, used, _) = encoding.decode(body);
    (text.into_owned(), used.name())
}

/// The body is UTF-8 apart from a sequence cut at the end (a capped body).
fn cut_utf8(body: &[u8]) -> bool {
    match std::str::from_utf8(body) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// `charset` parameter of a `Content-Type` value.
fn charset_param(value: &str) -> Option<&str> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches(['"', '\'']))
    })
}

/// The `<title>` text, entities decoded, whitespace collapsed, bounded.
fn title(text: &str) -> Option<String> {
    // ASCII lowering keeps byte offsets.
    let lower = text.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = lower[start..]
        .find("</title")
        .map_or(text.len().min(start + 4 * TITLE_MAX), |e| start + e);
    let raw = text.get(start..end).or_else(|| {
        // The cap may fall inside a character.
        let mut end = end;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.get(start..end)
    })?;
    let decoded = decode_entities(raw);
    let collapsed = decoded.split_whitespace().collect::<Vec<_>>().join(" ");
    let clean: String = collapsed
        .chars()
        .filter(|c| !c.is_control())
        .take(TITLE_MAX)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest[..floor_char_boundary(rest, 12)].find(';');
        let decoded = end.and_then(|end| {
            let name = &rest[1..end];
            let c = match name {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" | "#39" => '\'',
                "nbsp" => ' ',
                "middot" => '·',
                "mdash" => '—',
                "ndash" => '–',
                "copy" => '©',
                _ => {
                    let n = name.strip_prefix('#')?;
                    let code = match n.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => n.parse().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Autoindex pages of Apache, nginx, lighttpd ("Index of /"), Python's http.server
/// ("Directory listing for"), IIS ("[To Parent Directory]").
fn is_directory_listing(text: &str, title: Option<&str>) -> bool {
    let head = &text[..floor_char_boundary(text, 64 * 1024)];
    title.is_some_and(|t| t.starts_with("Index of /") || t.starts_with("Directory listing for"))
        || head.contains("<h1>Index of /")
        || head.contains("[To Parent Directory]")
}

fn floor_char_boundary(s: &str, mut at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    let value = headers.get(name)?;
    let text = printable(value.as_bytes());
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(128).collect())
}

/// "nginx/1.18.0", "Apache/2.4.6 (CentOS) PHP/5.4.16", "PHP/7.4.3", "Microsoft-IIS/10.0".
fn names_version(value: &str) -> bool {
    value
        .split('/')
        .skip(1)
        .any(|after| after.as_bytes().first().is_some_and(u8::is_ascii_digit))
}

/// What an admin-path request got back, enough to compare it with the catch-all answer.
#[derive(Debug, Clone)]
struct Probe {
    status: u16,
    location: Option<String>,
    title: Option<String>,
    body: Vec<u8>,
}

/// Check admin paths, at most [`ADMIN_CONCURRENCY`] at once, all within `timeout`. A path
/// counts when it answers 200 or 401 (a basic-auth console), or redirects deeper into itself
/// (`/console/` → `/console/login/LoginForm.jsp`), unless a path that cannot exist gets the
/// same answer (a catch-all page, a site-wide login, an SPA).
async fn admin_paths(
    client: &Client,
    base: &Url,
    paths: &[String],
    timeout: Duration,
    limits: &Limits,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let canary_path = format!("/netpatrol-{:016x}-absent/", canary_token());
    let mut jobs: Vec<String> = vec![canary_path.clone()];
    jobs.extend(
        paths
            .iter()
            .filter(|p| p.starts_with('/') && p.len() <= 256)
            .cloned(),
    );
    let gate = Arc::new(tokio::sync::Semaphore::new(ADMIN_CONCURRENCY));
    let mut set = JoinSet::new();
    for path in jobs {
        let Ok(url) = base.join(&path) else { continue };
        let (client, gate) = (client.clone(), gate.clone());
        // Concurrency first, then the process-wide rate, then the request.
        let Ok(Ok(permit)) = timeout_at(deadline, gate.acquire_owned()).await else {
            break;
        };
        if timeout_at(deadline, limits.attempt()).await.is_err() {
            break;
        }
        set.spawn(async move {
            let _permit = permit;
            let page = fetch(&client, url, deadline, ADMIN_BODY_MAX).await.ok()?;
            let body = decompress(&page.body, &page.headers, ADMIN_BODY_MAX);
            let (text, _) = decode(&body.bytes, page.headers.get(header::CONTENT_TYPE));
            let location = page
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| page.url.join(v.trim()).ok())
                .filter(|l| l.host() == page.url.host())
                .map(|l| l.path().to_owned());
            Some((
                path,
                Probe {
                    status: page.status,
                    location,
                    title: title(&text),
                    body: body.bytes,
                },
            ))
        });
    }
    let mut answers = Vec::new();
    while let Ok(Some(joined)) = timeout_at(deadline, set.join_next()).await {
        if let Ok(Some(answer)) = joined {
            answers.push(answer);
        }
    }
    set.abort_all();
    let canary = answers
        .iter()
        .find(|(p, _)| *p == canary_path)
        .map(|(_, a)| a.clone());
    let mut found: Vec<String> = answers
        .into_iter()
        .filter(|(p, _)| *p != canary_path)
        .filter(|(p, a)| admin_answer(p, a, canary.as_ref()))
        .map(|(p, _)| p)
        .collect();
    // Report in the order of the spec.
    found.sort_by_key(|p| paths.iter().position(|q| q == p));
    found
}

fn admin_answer(path: &str, answer: &Probe, canary: Option<&Probe>) -> bool {
    let like_canary = canary.is_some_and(|c| c.status == answer.status && similar(c, answer));
    match answer.status {
        200 => !like_canary,
        401 => canary.is_none_or(|c| c.status != 401),
        301 | 302 | 303 | 307 | 308 => {
            let stem = path.trim_end_matches('/');
            let deeper = answer
                .location
                .as_deref()
                .is_some_and(|l| l.starts_with(stem) && l.len() > path.len());
            // A server that sends every path deeper into itself proves nothing.
            let canary_deeper = canary.is_some_and(|c| {
                (300..400).contains(&c.status)
                    && c.location.as_deref().is_some_and(|l| {
                        l.starts_with("/netpatrol-") && l.len() > "/netpatrol-".len() + 24
                    })
            });
            deeper && !canary_deeper
        }
        _ => false,
    }
}

/// Two answers look like the same page: same bytes, or same title and nearly the same size
/// (a not-found page that echoes the path).
fn similar(a: &Probe, b: &Probe) -> bool {
    if a.body == b.body {
        return true;
    }
    let (la, lb) = (a.body.len(), b.body.len());
    let slack = 64 + la.max(lb) / 20;
    a.title == b.title && la.abs_diff(lb) <= slack
}

/// A path component no site has: the clock's nanoseconds mixed with a per-process counter.
fn canary_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64
    let mut z = nanos ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_decoded_and_bounded() {
        assert_eq!(
            title("<html><HEAD><Title lang=zh>\n  海陵区 &amp; 政务\t服务 </TITLE>").as_deref(),
            Some("海陵区 & 政务 服务")
        );
        assert_eq!(title("<title></title>"), None);
        assert_eq!(title("<p>no title</p>"), None);
        assert_eq!(
            title("<title>&#x4e2d;&#25991;&bogus;").as_deref(),
            Some("中文&bogus;")
        );
        // An ampersand before multi-byte text is not cut inside a character.
        assert_eq!(
            title("<title>A&中文标题很长很长</title>").as_deref(),
            Some("A&中文标题很长很长")
        );
        let long = format!("<title>{}", "长".repeat(10_000));
        assert_eq!(title(&long).unwrap().chars().count(), TITLE_MAX);
    }

    #[test]
    fn charsets_from_header_meta_and_guess() {
        let (gbk, _, _) = encoding_rs::GBK.encode("<title>海陵区人民政府</title>");
        let ct = header::HeaderValue::from_static("text/html; charset=GB2312");
        assert_eq!(
            decode(&gbk, Some(&ct)),
            ("<title>海陵区人民政府</title>".into(), "GBK")
        );
        let mut meta =
            b"<meta http-equiv=\"Content-Type\" content=\"text/html; charset=gbk\">".to_vec();
        meta.extend_from_slice(&gbk);
        assert_eq!(decode(&meta, None).1, "GBK");
        assert!(decode(&meta, None).0.contains("海陵区人民政府"));
        assert_eq!(decode(&gbk, None).1, "gb18030");
        assert_eq!(decode("<title>中文</title>".as_bytes(), None).1, "UTF-8");
        // A UTF-8 body cut inside a character is still UTF-8.
        let cut = &"中文".as_bytes()[..4];
        assert_eq!(decode(cut, None).1, "UTF-8");
    }

    #[test]
    fn login_forms_and_listings() {
        assert!(LOGIN_FORM.is_match(r#"<form><INPUT class="x" type='password' name=p></form>"#));
        assert!(LOGIN_FORM.is_match("<input name=p type=password>"));
        assert!(!LOGIN_FORM.is_match("<input type=text name=password>"));
        assert!(is_directory_listing("", Some("Index of /files")));
        assert!(is_directory_listing("", Some("Directory listing for /")));
        assert!(is_directory_listing(
            "<A HREF=\"/\">[To Parent Directory]</A>",
            None
        ));
        assert!(!is_directory_listing("<title>Home</title>", Some("Home")));
    }

    #[test]
    fn versions_in_headers() {
        assert!(names_version("nginx/1.18.0"));
        assert!(names_version("Apache/2.4.6 (CentOS) PHP/5.4.16"));
        assert!(!names_version("nginx"));
        assert!(!names_version("Microsoft-IIS/"));
        assert!(!names_version("BWS/BFE"));
    }

    #[test]
    fn hosts_must_be_names() {
        assert_eq!(
            valid_host("portal.hailing.example."),
            Some("portal.hailing.example")
        );
        assert_eq!(valid_host("192.0.2.1"), None);
        assert_eq!(valid_host("evil.example/@192.0.2.1"), None);
        assert_eq!(valid_host(""), None);
    }

    #[test]
    fn redirect_scope() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let origin = Origin {
            ip,
            host: Some("portal.hailing.example"),
        };
        for (url, inside) in [
            ("http://127.0.0.1:8080/x", true),
            ("https://PORTAL.hailing.example/", true),
            ("http://127.0.0.2/", false),
            ("http://other.example/", false),
            ("http://[::1]/", false),
        ] {
            assert_eq!(origin.contains(&Url::parse(url).unwrap()), inside, "{url}");
        }
    }

    #[test]
    fn gzip_bomb_is_capped() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..16 {
            enc.write_all(&zeros).unwrap();
        }
        let gz = enc.finish().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let body = decompress(&gz, &headers, 1000);
        assert_eq!(body.bytes.len(), 1000);
        assert!(body.truncated);
    }
}
