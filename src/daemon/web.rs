//! The web configuration file (`daemon.web_config`): TLS and basic auth for the daemon's HTTP
//! face, in Prometheus exporter-toolkit's format, so operators reuse what they know.
//!
//! Input: the file's path. Output: [`WebConfig`], checked whole at load ([`WebConfig::load`]
//! collects every problem, one a line, `PATH: message`): certificate and key files read and
//! parsed into a rustls server config (ring provider), the client CA read when client
//! certificates are verified, every bcrypt hash well formed. A reload reads the files again,
//! which is how renewed certificates take effect (SIGHUP).
//!
//! Supported keys (others are refused by name):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # PEM chain, leaf first
//!   key_file: server.key           # PEM private key (PKCS#8, PKCS#1 or SEC1)
//!   client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default) | VerifyClientCertIfGiven | RequireAndVerifyClientCert
//!   client_ca_file: clients-ca.crt # required by the two Verify types
//!   min_version: TLS12             # TLS12 (default) | TLS13
//! basic_auth_users:                # user: bcrypt hash ($2a$, $2b$ or $2y$)
//!   prometheus: $2b$10$...
//! ```
//!
//! Paths are relative to the web config file. When `basic_auth_users` is not empty, `/metrics`
//! asks for credentials too (basic auth, or a bearer token); basic-auth users may read (GET)
//! but never start scans.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// A bcrypt hash compared against when the user is unknown, so a wrong user costs the same
/// time as a wrong password (cost 10, the usual).
const DUMMY_HASH: &str = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    /// Default: none, plain HTTP.
    #[serde(default)]
    tls_server_config: Option<TlsServerConfigFile>,
    /// Default: none (no basic auth; `/metrics` open).
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfigFile {
    /// Required.
    cert_file: String,
    /// Required.
    key_file: String,
    /// Default NoClientCert.
    #[serde(default)]
    client_auth_type: Option<String>,
    /// Required with VerifyClientCertIfGiven and RequireAndVerifyClientCert.
    #[serde(default)]
    client_ca_file: Option<String>,
    /// Default TLS12.
    #[serde(default)]
    min_version: Option<String>,
}

/// Whether and how client certificates are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

/// A loaded web config: the TLS server config ready for the accept loop, and the users.
#[derive(Clone)]
pub struct WebConfig {
    pub source: PathBuf,
    /// `None`: plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    pub client_auth: ClientAuth,
    /// user -> bcrypt hash.
    users: BTreeMap<String, String>,
    /// SHA-256 of `user:password` pairs bcrypt accepted: a scraper presenting the same
    /// credentials every few seconds costs one bcrypt check per reload, not one per scrape.
    accepted: Arc<std::sync::Mutex<std::collections::HashSet<[u8; 32]>>>,
}

/// Accepted credentials remembered, at most (then the memory starts afresh).
const ACCEPTED_KEPT: usize = 64;

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("source", &self.source)
            .field("tls", &self.tls.is_some())
            .field("client_auth", &self.client_auth)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebConfig {
    /// Read and check the web config at `path`; every problem found, one a line.
    pub fn load(path: &Path) -> Result<WebConfig, Vec<String>> {
        let at = |m: String| format!("{}: {m}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![at(format!("cannot read the web config: {e}"))])?;
        let file: WebConfigFile = if text.trim().is_empty() {
            WebConfigFile {
                tls_server_config: None,
                basic_auth_users: BTreeMap::new(),
            }
        } else {
            serde_saphyr::from_str(&text).map_err(|e| {
                vec![at(format!(
                    "invalid web config: {e} (keys: tls_server_config, basic_auth_users)"
                ))]
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut problems = Vec::new();
        for (user, hash) in &file.basic_auth_users {
            if !is_bcrypt(hash) {
                problems.push(at(format!(
                    "basic_auth_users.{user}: not a bcrypt hash (expected $2a$, $2b$ or $2y$, as `htpasswd -nBC 10` writes)"
                )));
            }
        }
        let mut client_auth = ClientAuth::NoClientCert;
        let tls = match &file.tls_server_config {
            None => None,
            Some(t) => {
                client_auth = match t.client_auth_type.as_deref() {
                    None | Some("NoClientCert") => ClientAuth::NoClientCert,
                    Some("VerifyClientCertIfGiven") => ClientAuth::VerifyClientCertIfGiven,
                    Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerifyClientCert,
                    Some(other) => {
                        problems.push(at(format!(
                            "tls_server_config.client_auth_type: `{other}` is not supported (NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
                        )));
                        ClientAuth::NoClientCert
                    }
                };
                match server_config(t, base, client_auth) {
                    Ok(c) => Some(Arc::new(c)),
                    Err(p) => {
                        problems.extend(p.into_iter().map(at));
                        None
                    }
                }
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(WebConfig {
            source: path.to_path_buf(),
            tls,
            client_auth,
            users: file.basic_auth_users,
            accepted: Arc::default(),
        })
    }

    /// Whether basic auth is configured (then `/metrics` asks for credentials).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether `password` is `user`'s. Slow by design (bcrypt): call it off the async
    /// threads. An unknown user costs as much as a wrong password.
    pub fn check_user(&self, user: &str, password: &str) -> bool {
        let mut pair = ring::digest::Context::new(&ring::digest::SHA256);
        pair.update(user.as_bytes());
        pair.update(b":");
        pair.update(password.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(pair.finish().as_ref());
        let remembered = |k: &[u8; 32]| {
            self.accepted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(k)
        };
        if remembered(&key) {
            return true;
        }
        let ok = match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, DUMMY_HASH);
                false
            }
        };
        if ok {
            let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
            if accepted.len() >= ACCEPTED_KEPT {
                accepted.clear();
            }
            accepted.insert(key);
        }
        ok
    }
}

fn is_bcrypt(hash: &str) -> bool {
    let ok_prefix = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
    ok_prefix && hash.len() == 60 && hash[4..6].bytes().all(|b| b.is_ascii_digit())
}

fn server_config(
    t: &TlsServerConfigFile,
    base: &Path,
    client_auth: ClientAuth,
) -> Result<ServerConfig, Vec<String>> {
    let mut problems = Vec::new();
    let cert_path = base.join(&t.cert_file);
    let key_path = base.join(&t.key_file);
    let certs: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(&cert_path) {
        Ok(iter) => match iter.collect::<Result<Vec<_>, _>>() {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                problems.push(format!(
                    "tls_server_config.cert_file {}: no certificate in it",
                    cert_path.display()
                ));
                Vec::new()
            }
            Err(e) => {
                problems.push(format!(
                    "tls_server_config.cert_file {}: {e}",
                    cert_path.display()
                ));
                Vec::new()
            }
        },
        Err(e) => {
            problems.push(format!(
                "tls_server_config.cert_file {}: {e}",
                cert_path.display()
            ));
            Vec::new()
        }
    };
    let key = match PrivateKeyDer::from_pem_file(&key_path) {
        Ok(k) => Some(k),
        Err(e) => {
            problems.push(format!(
                "tls_server_config.key_file {}: {e}",
                key_path.display()
            ));
            None
        }
    };
    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version.as_deref() {
        None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some("TLS13") => &[&rustls::version::TLS13],
        Some(other) => {
            problems.push(format!(
                "tls_server_config.min_version: `{other}` is not supported (TLS12 or TLS13)"
            ));
            &[&rustls::version::TLS13]
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match (client_auth, &t.client_ca_file) {
        (ClientAuth::NoClientCert, _) => None,
        (_, None) => {
            problems.push(
                "tls_server_config.client_ca_file is required to verify client certificates"
                    .to_string(),
            );
            None
        }
        (_, Some(ca)) => {
            let ca_path = base.join(ca);
            let mut roots = rustls::RootCertStore::empty();
            match CertificateDer::pem_file_iter(&ca_path)
                .map_err(|e| e.to_string())
                .and_then(|i| i.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string()))
            {
                Ok(list) => {
                    for c in list {
                        if let Err(e) = roots.add(c) {
                            problems.push(format!(
                                "tls_server_config.client_ca_file {}: {e}",
                                ca_path.display()
                            ));
                        }
                    }
                }
                Err(e) => problems.push(format!(
                    "tls_server_config.client_ca_file {}: {e}",
                    ca_path.display()
                )),
            }
            if roots.is_empty() {
                problems.push(format!(
                    "tls_server_config.client_ca_file {}: no CA certificate in it",
                    ca_path.display()
                ));
                None
            } else {
                let builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let builder = if client_auth == ClientAuth::VerifyClientCertIfGiven {
                    builder.allow_unauthenticated()
                } else {
                    builder
                };
                match builder.build() {
                    Ok(v) => Some(v),
                    Err(e) => {
                        problems.push(format!("tls_server_config.client_ca_file: {e}"));
                        None
                    }
                }
            }
        }
    };
    let Some(key) = key else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| vec![format!("tls_server_config: {e}")])?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        vec![format!(
            "tls_server_config: certificate {} and key {} do not make a server: {e}",
            cert_path.display(),
            key_path.display()
        )]
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
