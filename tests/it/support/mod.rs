//! Builders for real loopback servers used by the tests.

#![allow(dead_code)]

pub mod dns;
pub mod fakes;
pub mod smtp;
pub mod sniffer;
pub mod store;
pub mod tls;
pub mod tongsuo;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use netpatrol::config::{self, Config};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// The demo lab, started once for the whole test binary on a runtime of its own (tests each
/// have their own runtime, and listeners die with the runtime that spawned them). Returns the
/// port shift the lab chose.
pub fn lab() -> u16 {
    static SHIFT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *SHIFT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("lab runtime");
            rt.block_on(async move {
                let lab = netpatrol::lab::Lab::start().await.expect("lab starts");
                tx.send(lab.shift).expect("report the shift");
                // Keep the lab (and this runtime) alive until the test binary exits.
                std::future::pending::<()>().await;
                drop(lab);
            });
        });
        rx.recv().expect("lab thread started")
    })
}

/// A config from YAML text, as if read from `dir/netpatrol.yaml` (so its store lands in `dir`).
pub fn config(dir: &Path, yaml: &str) -> Config {
    match config::load_str(yaml, &dir.join("netpatrol.yaml")) {
        Ok(c) => c,
        Err(errors) => panic!("test config does not load:\n{errors}"),
    }
}

/// A listener that counts the connections it accepted and how many were open at once, and
/// holds each connection (silently) until the peer closes.
pub struct CountingListener {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub peak: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingListener {
    pub async fn bind(ip: IpAddr, port: u16) -> CountingListener {
        Self::bind_shared(ip, port, Arc::default(), Arc::default()).await
    }

    /// Like `bind`, with the open-connection counter and its peak shared between listeners, so
    /// a peak across all of them can be read.
    pub async fn bind_shared(
        ip: IpAddr,
        port: u16,
        open: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
    ) -> CountingListener {
        let listener = TcpListener::bind((ip, port))
            .await
            .expect("bind test listener");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (a, p) = (accepted.clone(), peak.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                let open = open.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CountingListener {
            addr,
            accepted,
            peak,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Drop for CountingListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
