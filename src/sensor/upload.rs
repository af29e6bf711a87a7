//! The sensor's side of the wire: an HTTPS client to its hub (trust anchors of `hub.ca_file`,
//! a client certificate when configured, the sensor's bearer token) and the uploader that
//! empties the outbox, oldest batch first.
//!
//! The uploader sends one batch at a time and marks it sent only once the hub answered 200
//! (stored, or a duplicate), so a batch is never lost between the outbox and the hub; a batch
//! the hub refuses for what it is (400, 413, 422) is marked refused and logged at ERROR (one
//! broken batch must not hold the queue); any other failure (unreachable, 5xx, 401/403) waits
//! and tries the same batch again, the wait doubling from 1 s up to `hub.retry_max_seconds`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::batch::Assignment;
use crate::config::HubSettings;
use crate::store::Store;

/// Time one request to the hub may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong talking to the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot reach the hub: {0}")]
    Unreachable(String),
    /// The hub answered, but not 200.
    #[error("the hub answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the hub's answer does not read: {0}")]
    Answer(String),
}

impl HubError {
    /// A refusal of the batch itself, which sending again cannot change.
    fn is_refusal(&self) -> bool {
        matches!(self, HubError::Status { status, .. } if matches!(status, 400 | 413 | 422))
    }
}

/// The rustls client config for the hub: `ca_file` (or the system roots), and the client
/// certificate and key when given. An error names the file and what is wrong with it.
pub fn client_tls(hub: &HubSettings) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &hub.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("hub.ca_file {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("hub.ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "hub.ca_file {}: no PEM certificate in it",
                    path.display()
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("hub.ca_file {}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let mut config = match (&hub.cert_file, &hub.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = CertificateDer::pem_file_iter(cert_path)
                .map_err(|e| format!("hub.cert_file {}: {e}", cert_path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("hub.cert_file {}: {e}", cert_path.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "hub.cert_file {}: no PEM certificate in it",
                    cert_path.display()
                ));
            }
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| format!("hub.key_file {}: {e}", key_path.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("hub.cert_file/key_file: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An HTTPS client to one hub, as one sensor.
#[derive(Debug, Clone)]
pub struct HubClient {
    http: reqwest::Client,
    base: String,
    sensor: String,
    token: String,
}

impl HubClient {
    pub fn new(hub: &HubSettings, token: String) -> Result<HubClient, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .http1_only()
            .connect_timeout(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("netpatrol-sensor/", env!("CARGO_PKG_VERSION")))
            .tls_backend_preconfigured(client_tls(hub)?)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(HubClient {
            http,
            base: hub.url.clone(),
            sensor: hub.sensor.clone(),
            token,
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/api/v1/sensors/{}/{tail}", self.base, self.sensor)
    }

    async fn answer(response: reqwest::Response) -> Result<String, HubError> {
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| HubError::Unreachable(e.to_string()))?;
        if status.is_success() {
            return Ok(text);
        }
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(200).collect());
        Err(HubError::Status {
            status: status.as_u16(),
            message,
        })
    }

    /// Fetch the assignment: it and its JSON text (to cache).
    pub async fn assignment(&self, backlog: u64) -> Result<(Assignment, String), HubError> {
        let response = self
            .http
            .get(format!("{}?backlog={backlog}", self.url("assignment")))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| HubError::Unreachable(error_chain(&e)))?;
        let text = HubClient::answer(response).await?;
        let assignment =
            serde_json::from_str(&text).map_err(|e| HubError::Answer(e.to_string()))?;
        Ok((assignment, text))
    }

    /// Post one batch (its JSON); the hub's `status` (`accepted` or `duplicate`).
    pub async fn post(&self, payload: String) -> Result<String, HubError> {
        let response = self
            .http
            .post(self.url("batches"))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload)
            .send()
            .await
            .map_err(|e| HubError::Unreachable(error_chain(&e)))?;
        let text = HubClient::answer(response).await?;
        let answer: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| HubError::Answer(e.to_string()))?;
        Ok(answer["status"].as_str().unwrap_or("accepted").to_string())
    }
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Send the outbox to the hub, oldest batch first, until `stop`; `wake` says a batch was
/// queued. Unsent batches stay in the store for the next start.
pub async fn upload(
    store: Store,
    client: HubClient,
    retry_max: Duration,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut wait = Duration::from_secs(1);
    let mut unreachable_since: Option<chrono::DateTime<Utc>> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let next = match store.outbox_next().await {
            Ok(n) => n,
            Err(error) => {
                tracing::error!(%error, "cannot read the outbox");
                None
            }
        };
        let Some(batch) = next else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        };
        let backlog = store.outbox_backlog().await.unwrap_or(1);
        let payload = with_backlog(&batch.payload, backlog);
        let sent = tokio::select! {
            _ = stop.cancelled() => return,
            sent = client.post(payload) => sent,
        };
        let outcome = match sent {
            Ok(status) => {
                if let Some(since) = unreachable_since.take() {
                    tracing::info!(since = %since, "the hub is reachable again");
                }
                wait = Duration::from_secs(1);
                status
            }
            Err(error) if error.is_refusal() => {
                tracing::error!(%error, batch = %batch.batch, scan = %batch.scan_id, "the hub refused the batch; it is dropped");
                match &error {
                    HubError::Status { status, .. } => format!("refused: {status}"),
                    _ => "refused".to_string(),
                }
            }
            Err(error) => {
                if unreachable_since.is_none() {
                    unreachable_since = Some(Utc::now());
                    tracing::warn!(%error, backlog, "cannot deliver to the hub; batches wait in the outbox");
                } else {
                    tracing::debug!(%error, backlog, "hub still unreachable");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(retry_max);
                continue;
            }
        };
        tracing::debug!(batch = %batch.batch, scan = %batch.scan_id, seq = batch.seq, %outcome, "batch sent");
        if let Err(error) = store.outbox_sent(&batch.batch, Utc::now(), &outcome).await {
            // Sent again at the next turn: the hub answers it as a duplicate.
            tracing::error!(%error, "cannot mark the batch sent");
            tokio::time::sleep(wait).await;
        }
    }
}

/// The batch's JSON with its `backlog` set to `backlog`.
fn with_backlog(payload: &str, backlog: u64) -> String {
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(mut v) => {
            v["backlog"] = serde_json::json!(backlog);
            v.to_string()
        }
        Err(_) => payload.to_string(),
    }
}
