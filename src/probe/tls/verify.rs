//! The certificate chain of a TLS 1.2/1.3 endpoint, through a real rustls handshake.
//!
//! rustls (ring provider) does the handshake, so the chain of a TLS 1.3 server (encrypted on
//! the wire) is read too. Its verifier only records what the server sent and lets the
//! handshake go on: the posture wants the certificate of a broken or untrusted server as much
//! as a good one. Trust is judged afterwards, in `cert`, against the configured anchors.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::time::{Instant, timeout_at};

use crate::probe::tcp;

#[derive(Debug)]
struct Recorder {
    chain: Mutex<Vec<Vec<u8>>>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        *chain = std::iter::once(end_entity)
            .chain(intermediates)
            .take(super::wire::MAX_CERTS)
            .map(|c| c.to_vec())
            .collect();
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// The chain (leaf first) the server presents to a rustls client, or `None` when no
/// handshake got as far as the certificate. The caller holds the `Limits` slot.
pub async fn chain(addr: SocketAddr, sni: Option<&str>, deadline: Instant) -> Option<Vec<Vec<u8>>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder {
        chain: Mutex::new(Vec::new()),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = sni
        .and_then(|s| ServerName::try_from(s.to_string()).ok())
        .filter(|n| matches!(n, ServerName::DnsName(_)))
        .unwrap_or(ServerName::IpAddress(addr.ip().into()));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let remaining = deadline.checked_duration_since(Instant::now())?;
    let stream = tcp::connect(addr, remaining).await.ok()?;
    // The outcome does not matter: the recorder has the chain once the server sent it.
    let _ = timeout_at(deadline, connector.connect(name, stream)).await;
    let chain = std::mem::take(&mut *recorder.chain.lock().unwrap_or_else(|e| e.into_inner()));
    (!chain.is_empty()).then_some(chain)
}
