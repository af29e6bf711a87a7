//! TLS test servers on loopback: rustls (tokio-rustls) with rcgen certificates, `openssl
//! s_server` child processes, canned-handshake responders for what no packaged server speaks
//! here (3DES, RC4, EXPORT, TLCP), and hostile or non-TLS peers.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use netpatrol::probe::tls::wire::{self, ClientHelloInfo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A test CA and the leaf certificates it issues.
pub struct Pki {
    pub ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate with its chain and key.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Leaf {
    pub fn clone_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "netpatrol test");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// Write the CA PEM to `dir/name` and return its path.
    pub fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.ca_pem()).unwrap();
        path
    }

    /// A leaf for `names`, valid from `from` to `to` (years), issued by this CA.
    pub fn leaf(&self, names: &[&str], from: (i32, u8, u8), to: (i32, u8, u8)) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.not_before = date_time_ymd(from.0, from.1, from.2);
        params.not_after = date_time_ymd(to.0, to.1, to.2);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            chain: vec![cert.der().clone(), self.ca.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A self-signed leaf (its own issuer).
pub fn self_signed(names: &[&str], from: (i32, u8, u8), to: (i32, u8, u8)) -> Leaf {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("self"));
    params.not_before = date_time_ymd(from.0, from.1, from.2);
    params.not_after = date_time_ymd(to.0, to.1, to.2);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Leaf {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// A task serving connections on a loopback listener; aborted on drop.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Serve each accepted connection with `handle`.
    pub async fn start<F, Fut>(ip: IpAddr, handle: F) -> Server
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind((ip, 0))
            .await
            .expect("bind test listener");
        let addr = listener.local_addr().unwrap();
        let handle = Arc::new(handle);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let h = handle.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(20), h(stream)).await;
                });
            }
        });
        Server { addr, task }
    }

    /// A rustls server (ring provider) with `leaf`, speaking the given versions.
    pub async fn rustls(
        ip: IpAddr,
        leaf: &Leaf,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Server {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(leaf.chain.clone(), leaf.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Server::start(ip, move |stream| {
            let acceptor = acceptor.clone();
            async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let mut buf = [0u8; 64];
                    let _ = tls.read(&mut buf).await;
                }
            }
        })
        .await
    }

    /// A responder that reads one ClientHello record and answers with `respond(hello)`
    /// (canned handshake bytes), then waits for the peer to close.
    pub async fn canned<R>(ip: IpAddr, respond: R) -> Server
    where
        R: Fn(&ClientHelloInfo) -> Vec<u8> + Send + Sync + 'static,
    {
        let respond = Arc::new(respond);
        Server::start(ip, move |mut stream| {
            let respond = respond.clone();
            async move {
                let Some(record) = read_record(&mut stream).await else {
                    return;
                };
                let Some(hello) = wire::parse_client_hello(&record) else {
                    return;
                };
                let answer = respond(&hello);
                if answer.is_empty() {
                    return;
                }
                let _ = stream.write_all(&answer).await;
                let mut buf = [0u8; 256];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }
        })
        .await
    }

    /// A server that writes `bytes` as soon as a client connects (a greeting), then reads
    /// until the peer closes.
    pub async fn greeting(ip: IpAddr, bytes: &'static [u8]) -> Server {
        Server::start(ip, move |mut stream| async move {
            let _ = stream.write_all(bytes).await;
            let mut buf = [0u8; 256];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await
    }

    /// A server that reads what the client sends, then answers `bytes` and closes (as an HTTP
    /// server answers a request it cannot parse).
    pub async fn answer(ip: IpAddr, bytes: &'static [u8]) -> Server {
        Server::start(ip, move |mut stream| async move {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(bytes).await;
        })
        .await
    }

    /// A server that accepts and never says anything.
    pub async fn stall(ip: IpAddr) -> Server {
        Server::start(ip, |mut stream| async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await
    }

    /// A server that answers every hello with a TLS 1.2 ServerHello, then announces a 16 MB
    /// Certificate message and streams it for as long as the client reads.
    pub async fn huge_certificate(ip: IpAddr) -> Server {
        Server::start(ip, |mut stream| async move {
            if read_record(&mut stream).await.is_none() {
                return;
            }
            let mut out = wire::server_hello_record(0x0303, 0x0303, 0x002f, None);
            let total = 16 * 1024 * 1024 - 1;
            // First record: handshake header of a 16 MB Certificate message.
            out.extend_from_slice(&[22, 3, 3, 0x40, 0x00, 11]);
            out.extend_from_slice(&(total as u32).to_be_bytes()[1..]);
            out.extend(std::iter::repeat_n(0x41u8, 0x4000 - 4));
            if stream.write_all(&out).await.is_err() {
                return;
            }
            let mut record = vec![22, 3, 3, 0x40, 0x00];
            record.extend(std::iter::repeat_n(0x41u8, 0x4000));
            for _ in 0..1024 {
                if stream.write_all(&record).await.is_err() {
                    return;
                }
            }
        })
        .await
    }
}

/// Read one TLS record (header and fragment) from `stream`.
pub async fn read_record(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await.ok()?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let mut record = header.to_vec();
    record.resize(5 + len, 0);
    stream.read_exact(&mut record[5..]).await.ok()?;
    Some(record)
}

/// A canned "legacy server": accepts the client's offered version when it is in `versions`,
/// and picks the first suite of `suites` that the client offers (server preference); else a
/// handshake_failure / protocol_version alert. Sends a Certificate message with `certs` and a
/// ServerHelloDone.
pub fn legacy_responder(
    versions: &'static [u16],
    suites: &'static [u16],
    certs: Vec<Vec<u8>>,
) -> impl Fn(&ClientHelloInfo) -> Vec<u8> + Send + Sync + 'static {
    move |hello| {
        // A server that knows only these versions ignores supported_versions.
        let version = hello.client_version;
        let chosen = versions
            .iter()
            .copied()
            .filter(|&v| v <= version && (v >= 0x0300 || v == version))
            .max();
        let Some(v) = chosen else {
            return wire::alert_record(hello.record_version, 70);
        };
        let record_version = if v == 0x0101 { 0x0101 } else { v.min(0x0303) };
        let Some(&suite) = suites.iter().find(|s| hello.suites.contains(s)) else {
            return wire::alert_record(record_version, 40);
        };
        let mut out = wire::server_hello_record(record_version, v, suite, None);
        let refs: Vec<&[u8]> = certs.iter().map(|c| c.as_slice()).collect();
        out.extend(wire::certificate_record(record_version, &refs));
        out.extend(wire::server_hello_done_record(record_version));
        out
    }
}

/// A running `openssl s_server`, killed on drop.
pub struct OpensslServer {
    pub addr: SocketAddr,
    child: Child,
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Make an RSA certificate with the openssl command line: `bits`, digest (`sha1`,
/// `sha256`), subject CN, validity `days` (negative: not supported, use 1). Returns (cert,
/// key) paths in `dir`.
pub fn openssl_cert(
    dir: &Path,
    name: &str,
    bits: u32,
    digest: &str,
    cn: &str,
) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey"])
        .arg(format!("rsa:{bits}"))
        .arg(format!("-{digest}"))
        .args(["-nodes", "-days", "365", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

impl OpensslServer {
    /// `openssl s_server -accept IP:PORT -cert CERT -key KEY ARGS...`, waiting until it
    /// accepts connections.
    pub async fn start(ip: IpAddr, cert: &Path, key: &Path, args: &[&str]) -> OpensslServer {
        // A free port on this address: bind, read it, let go.
        let port = {
            let l = std::net::TcpListener::bind((ip, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = SocketAddr::new(ip, port);
        let child = Command::new("openssl")
            .arg("s_server")
            .arg("-accept")
            .arg(addr.to_string())
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .args(["-quiet", "-naccept", "1000000"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl is installed");
        let server = OpensslServer { addr, child };
        for _ in 0..200 {
            if let Ok(s) = TcpStream::connect(addr).await {
                drop(s);
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("openssl s_server did not start on {addr}");
    }
}

/// PEM text of `label` blocks.
pub fn pem(label: &str, ders: &[&[u8]]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in ders {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str(&format!("-----BEGIN {label}-----\n"));
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
    }
    out
}

/// Write `leaf`'s chain and key as `dir/name.pem` and `dir/name.key`.
pub fn write_leaf(dir: &std::path::Path, name: &str, leaf: &Leaf) {
    let chain: Vec<&[u8]> = leaf.chain.iter().map(|c| c.as_ref()).collect();
    std::fs::write(dir.join(format!("{name}.pem")), pem("CERTIFICATE", &chain)).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        pem("PRIVATE KEY", &[leaf.key.secret_der()]),
    )
    .unwrap();
}
