//! A real TLCP server: Tongsuo's `openssl s_server -enable_ntls`, with an SM2 root, signing
//! and encryption certificates that Tongsuo itself makes in the test's temp dir.
//!
//! The binary comes from `NETPATROL_TONGSUO` (set by `.ci/run`) or, when unset, from running
//! `.ci/tongsuo.sh` once for the test binary (it builds Tongsuo into
//! `$HOME/.cache/netpatrol/` when missing), so `cargo test` alone works too. A missing or
//! failing build fails the tests that need it: nothing is skipped.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::net::TcpStream;

/// The Tongsuo `openssl` binary.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("NETPATROL_TONGSUO").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "NETPATROL_TONGSUO={} is not a file",
                p.display()
            );
            return p;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/tongsuo.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("bash runs .ci/tongsuo.sh");
        assert!(
            out.status.success(),
            "{} failed: Tongsuo could not be built",
            script.display()
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!path.is_empty(), "{} printed no path", script.display());
        PathBuf::from(path)
    })
    .clone()
}

fn run(args: &[&str], dir: &Path) {
    let out = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("tongsuo runs");
    assert!(
        out.status.success(),
        "tongsuo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Extensions for the root, the signing and the encryption certificate (GB/T 38636 roles).
const EXTENSIONS: &str = "\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[sign]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,nonRepudiation
subjectAltName = DNS:gm.lab.test
[enc]
basicConstraints = CA:FALSE
keyUsage = critical,keyEncipherment,dataEncipherment,keyAgreement
subjectAltName = DNS:gm.lab.test
";

/// An SM2 root and the TLCP pair it issued, as PEM files in a directory.
pub struct SmPki {
    pub root: PathBuf,
    pub sign_cert: PathBuf,
    pub sign_key: PathBuf,
    pub enc_cert: PathBuf,
    pub enc_key: PathBuf,
}

impl SmPki {
    /// Root "Lab SM2 Root"; signing certificate "gm.lab.test sign" (digitalSignature),
    /// encryption certificate "gm.lab.test enc" (keyEncipherment, dataEncipherment,
    /// keyAgreement), both for DNS:gm.lab.test, SM3withSM2, valid for a year from now.
    pub fn new(dir: &Path) -> SmPki {
        std::fs::write(dir.join("ext.cnf"), EXTENSIONS).unwrap();
        run(
            &[
                "ecparam", "-genkey", "-name", "SM2", "-noout", "-out", "root.key",
            ],
            dir,
        );
        run(
            &[
                "req",
                "-config",
                "ext.cnf",
                "-new",
                "-x509",
                "-key",
                "root.key",
                "-sm3",
                "-days",
                "3650",
                "-subj",
                "/CN=Lab SM2 Root",
                "-extensions",
                "ca",
                "-out",
                "root.crt",
            ],
            dir,
        );
        for (role, serial) in [("sign", "0x5101"), ("enc", "0x5102")] {
            let key = format!("{role}.key");
            let csr = format!("{role}.csr");
            let crt = format!("{role}.crt");
            let subj = format!("/CN=gm.lab.test {role}");
            run(
                &["ecparam", "-genkey", "-name", "SM2", "-noout", "-out", &key],
                dir,
            );
            run(
                &[
                    "req", "-config", "ext.cnf", "-new", "-key", &key, "-sm3", "-subj", &subj,
                    "-out", &csr,
                ],
                dir,
            );
            run(
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "root.crt",
                    "-CAkey",
                    "root.key",
                    "-sm3",
                    "-days",
                    "365",
                    "-extfile",
                    "ext.cnf",
                    "-extensions",
                    role,
                    "-set_serial",
                    serial,
                    "-out",
                    &crt,
                ],
                dir,
            );
        }
        SmPki {
            root: dir.join("root.crt"),
            sign_cert: dir.join("sign.crt"),
            sign_key: dir.join("sign.key"),
            enc_cert: dir.join("enc.crt"),
            enc_key: dir.join("enc.key"),
        }
    }

    /// DER of a PEM certificate file of this PKI.
    pub fn der(path: &Path) -> Vec<u8> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_file(path)
            .expect("a PEM certificate")
            .to_vec()
    }
}

/// A running `s_server -enable_ntls`, killed on drop.
pub struct TongsuoServer {
    pub addr: SocketAddr,
    child: Child,
}

impl Drop for TongsuoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TongsuoServer {
    /// TLCP with `pki`'s signing and encryption certificates, plus `args`; waits until it
    /// accepts connections.
    pub async fn start(ip: IpAddr, pki: &SmPki, args: &[&str]) -> TongsuoServer {
        let port = {
            let l = std::net::TcpListener::bind((ip, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = SocketAddr::new(ip, port);
        let child = Command::new(binary())
            .arg("s_server")
            .arg("-accept")
            .arg(addr.to_string())
            .arg("-enable_ntls")
            .arg("-sign_cert")
            .arg(&pki.sign_cert)
            .arg("-sign_key")
            .arg(&pki.sign_key)
            .arg("-enc_cert")
            .arg(&pki.enc_cert)
            .arg("-enc_key")
            .arg(&pki.enc_key)
            .args(["-quiet", "-naccept", "1000000"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tongsuo s_server starts");
        let server = TongsuoServer { addr, child };
        for _ in 0..200 {
            if let Ok(s) = TcpStream::connect(addr).await {
                drop(s);
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("tongsuo s_server did not start on {addr}");
    }
}
