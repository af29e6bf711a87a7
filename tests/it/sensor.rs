//! Sensors and a hub: the real `netpatrol daemon` as the hub, real `netpatrol sensor`
//! processes, the batch tables of the store on both backends.
//!
//! The two-sensor test puts each sensor in a network namespace of its own (`ip netns`, created
//! and removed by the test, a veth pair to the root namespace where the hub listens on an
//! address of 198.18.0.0/15, RFC 2544's benchmarking range), with TCP listeners on 127.121.x
//! addresses inside that namespace only; the hub serves HTTPS and asks for client
//! certificates (mTLS). The fault tests run hub and sensor on loopback (127.121.x, plain HTTP,
//! which a loopback hub URL allows). Nothing here is a mock.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netpatrol::observation::{RunState, ScanRun};
use netpatrol::probe::Coverage;
use netpatrol::sensor::batch::{self, Batch};
use netpatrol::store::{IncomingBatch, OutboxBatch, Received};

use crate::daemon::dechunk;
use crate::support;
use crate::support::store::{TestStore, for_each_backend, for_each_backend_blocking};
use crate::support::tls::write_leaf;

const BIN: &str = env!("CARGO_BIN_EXE_netpatrol");
const API_ENV: &str = "NETPATROL_TEST_API_TOKEN";
const API_TOKEN: &str = "operator-token-for-sensor-tests";
const A_ENV: &str = "NETPATROL_TEST_SENSOR_A";
const A_TOKEN: &str = "token-of-sensor-a";
const B_ENV: &str = "NETPATROL_TEST_SENSOR_B";
const B_TOKEN: &str = "token-of-sensor-b";

// ---------------------------------------------------------------------------------------------
// Helpers: processes, namespaces, listeners, waiting.

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace of this test, with a veth pair to the root namespace: `root_addr` on
/// the root end, `ns_addr` inside (a /30), the root end as default route, loopback up.
/// Removed (with the pair) when dropped.
struct Netns {
    name: String,
    root_if: String,
}

impl Netns {
    fn new(n: u32, root_addr: &str, ns_addr: &str) -> Netns {
        let name = format!("np-{}-{n}", std::process::id());
        let root_if = format!("np{}r{n}", std::process::id());
        let ns_if = format!("np{}s{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            root_if: root_if.clone(),
        };
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{root_addr}/30"), "dev", &root_if]);
        ip(&["link", "set", &root_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{ns_addr}/30"), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", root_addr]);
        ns
    }

    /// A TCP listener bound inside this namespace, accepting (and closing) in a thread.
    fn listen(&self, addr: &str) -> Served {
        let path = format!("/var/run/netns/{}", self.name);
        let addr: SocketAddr = addr.parse().unwrap();
        let listener = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("namespace file");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpListener::bind(addr).expect("bind inside the namespace")
        })
        .join()
        .expect("listener thread");
        Served::on(listener)
    }

    /// A command run inside this namespace.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.root_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A listener served in a thread of its own: each connection is accepted and closed.
struct Served {
    accepted: std::sync::Arc<AtomicUsize>,
    port: u16,
}

impl Served {
    fn on(listener: TcpListener) -> Served {
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let port = listener.local_addr().expect("bound").port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                count.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        Served { accepted, port }
    }

    /// On loopback in the root namespace (`IP:0`: a free port; another run of these tests
    /// at the same time then does not collide).
    fn loopback(addr: &str) -> Served {
        Served::on(TcpListener::bind(addr).expect("bind a loopback listener"))
    }
}

/// A `netpatrol` process (daemon or sensor), killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, args: &[&str], log: PathBuf, env: &[(&str, &str)]) -> Proc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.args(args)
            .env("RUST_LOG", "netpatrol=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        for var in [API_ENV, A_ENV, B_ENV] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().expect("start netpatrol"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGTERM, and the exit code.
    fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("did not stop on SIGTERM:\n{}", self.log());
    }

    /// SIGKILL, waited for.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on `ip` right now.
fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One plain HTTP/1.1 exchange on loopback: status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    assert!(addr.ip().is_loopback());
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

/// A count from a store another process writes, read without migrating or marking anything
/// (`None` while it cannot be read yet).
fn peek(store: &TestStore, sql: &'static str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store.peek_count(sql)).unwrap_or(-1)
}

/// A count from a sensor's SQLite store, read-only.
fn peek_sqlite(path: &Path, sql: &'static str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .read_only(true);
        let Ok(pool) = sqlx::SqlitePool::connect_with(options).await else {
            return -1;
        };
        let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap_or(-1);
        pool.close().await;
        n
    })
}

/// Rows of a hub's store (every column text or NULL, as `sql` casts them), read once the
/// processes writing it stopped.
fn rows(store: &TestStore, sql: &'static str) -> Vec<Vec<String>> {
    use sqlx::Row;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let url = match &store.settings.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", store.settings.path.display()),
        };
        let pool = sqlx::AnyPool::connect(&url)
            .await
            .expect("open the hub's store");
        let found = sqlx::query(sql).fetch_all(&pool).await.expect(sql);
        pool.close().await;
        found
            .iter()
            .map(|r| {
                (0..r.columns().len())
                    .map(|i| {
                        r.try_get::<Option<String>, _>(i)
                            .unwrap_or_else(|e| panic!("{sql}: column {i}: {e}"))
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .collect()
    })
}

fn hub_yaml(store: &TestStore, listen: &str, extra: &str) -> String {
    format!(
        "organisation: {{name: 测试中心, timezone: Asia/Shanghai}}\n{}\
         scan: {{ports: [18080], icmp: false, dns: {{enabled: false}}}}\n\
         segments:\n\
         \x20 - {{name: seg-a, network: extranet, cidrs: [127.121.1.0/29]}}\n\
         \x20 - {{name: seg-b, network: metro, cidrs: [127.121.2.0/29]}}\n\
         \x20 - {{name: seg-x, network: other, cidrs: [127.121.3.0/29]}}\n\
         daemon:\n  listen: {listen}\n  api_token_env: {API_ENV}\n  scans: [{{cron: \"*/2 * * * * *\"}}]\n{extra}\
         sensors:\n\
         \x20 - {{id: sensor-a, segments: [seg-a, seg-x], token_env: {A_ENV}}}\n\
         \x20 - {{id: sensor-b, segments: [seg-b], token_env: {B_ENV}}}\n",
        store.yaml()
    )
}

/// A sensor's config: its own segments, its hub.
fn sensor_yaml(segments: &str, hub: &str, scan: &str) -> String {
    format!(
        "store: {{path: sensor.db}}\n\
         scan: {{ports: [18080], icmp: false, timeout_ms: 300, retries: 0, dns: {{enabled: false}}{scan}}}\n\
         segments:\n{segments}\
         hub: {hub}\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Store level, both backends.

fn run(id: &str, segments: &[&str]) -> ScanRun {
    ScanRun {
        id: id.to_string(),
        started_at: chrono::Utc::now(),
        finished_at: None,
        segments: segments.iter().map(|s| s.to_string()).collect(),
        addresses: 8,
        probes: 0,
        probe_kinds: vec![netpatrol::probe::ProbeKind::Tcp],
        state: RunState::Running,
        coverage: Coverage::default(),
    }
}

#[tokio::test]
async fn batches_are_stored_once_and_sensor_runs_survive_a_restart() {
    for_each_backend(|ts| async move {
        let store = ts.open().await;
        let r = run("sensor-a-20261201T000000.000Z-0001", &["seg-a"]);
        let id = batch::new_id();
        assert!(batch::is_uuid(&id), "{id}");
        let incoming = IncomingBatch {
            batch: &id,
            sensor: "sensor-a",
            run: &r,
            seq: 0,
            is_final: false,
            hosts: 0,
            refused: 0,
            backlog: 3,
            payload: "{}",
        };
        let at = chrono::Utc::now();
        assert_eq!(
            store.receive_batch(&incoming, at).await.unwrap(),
            Received::New
        );
        assert_eq!(
            store.receive_batch(&incoming, at).await.unwrap(),
            Received::Duplicate
        );
        assert_eq!(store.scan_batches(&r.id).await.unwrap().len(), 1);
        assert_eq!(
            store.run_state(&r.id).await.unwrap().as_deref(),
            Some("running")
        );
        let contacts = store.sensor_contacts().await.unwrap();
        assert_eq!(contacts.len(), 1);
        assert_eq!(contacts[0].backlog, 3);
        // The hub's own run cut off by a restart is closed; the sensor's is not.
        let own = run("20261201T000000.000Z-0002", &["seg-b"]);
        store.begin_run(&own).await.unwrap();
        store.close().await;
        let store = ts.open().await;
        assert_eq!(
            store.run_state(&r.id).await.unwrap().as_deref(),
            Some("running")
        );
        assert_eq!(
            store.run_state(&own.id).await.unwrap().as_deref(),
            Some("incomplete")
        );
        // Recorded exactly once: the second recording finds the run recorded.
        let mut done = r.clone();
        done.state = RunState::Complete;
        done.finished_at = Some(chrono::Utc::now());
        let obs = netpatrol::observation::ScanObservations {
            run: done,
            hosts: Vec::new(),
            errors: Default::default(),
        };
        let json = serde_json::json!({});
        assert!(
            store
                .record_once(&obs, &|_| None, &[], &[], &json)
                .await
                .unwrap()
        );
        assert!(
            !store
                .record_once(&obs, &|_| None, &[], &[], &json)
                .await
                .unwrap()
        );
        assert_eq!(
            store.run_state(&r.id).await.unwrap().as_deref(),
            Some("complete")
        );
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn the_outbox_gives_batches_oldest_first_and_finds_scans_left_open() {
    for_each_backend(|ts| async move {
        let store = ts.open().await;
        let make = |scan: &str, seq: u64, is_final: bool| OutboxBatch {
            batch: batch::new_id(),
            scan_id: scan.to_string(),
            seq,
            is_final,
            request: (scan == "s-2").then(|| "req-1".to_string()),
            created_at: netpatrol::store::timestamp(chrono::Utc::now()),
            payload: serde_json::to_string(&Batch {
                batch: "x".into(),
                sensor: "s".into(),
                scan: run(scan, &["seg-a"]),
                seq,
                is_final,
                hosts: Vec::new(),
                probe_errors: Vec::new(),
                backlog: 0,
                request: None,
            })
            .unwrap(),
        };
        let batches = [
            make("s-1", 0, false),
            make("s-1", 1, false),
            make("s-1", 2, true),
            make("s-2", 0, false),
            make("s-2", 1, false),
        ];
        for b in &batches {
            store.outbox_push(b).await.unwrap();
        }
        assert_eq!(store.outbox_backlog().await.unwrap(), 5);
        for b in &batches[..3] {
            let next = store.outbox_next().await.unwrap().expect("a batch");
            assert_eq!(next.batch, b.batch, "oldest first");
            store
                .outbox_sent(&next.batch, chrono::Utc::now(), "accepted")
                .await
                .unwrap();
        }
        assert_eq!(store.outbox_backlog().await.unwrap(), 2);
        // s-1 is done (its final batch sent): gone; s-2 has no final batch: open.
        let open = store.outbox_open_scans().await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].0.scan_id, "s-2");
        assert_eq!(open[0].1, 2, "next sequence number");
        assert_eq!(
            store.outbox_requests().await.unwrap(),
            vec!["req-1".to_string()]
        );
        netpatrol::sensor::close_open_scans(&store, "s")
            .await
            .unwrap();
        assert!(store.outbox_open_scans().await.unwrap().is_empty());
        let mut last = None;
        while let Some(b) = store.outbox_next().await.unwrap() {
            store
                .outbox_sent(&b.batch, chrono::Utc::now(), "accepted")
                .await
                .unwrap();
            last = Some(b);
        }
        let last = last.expect("the closing batch");
        let closing: Batch = serde_json::from_str(&last.payload).unwrap();
        assert!(closing.is_final);
        assert_eq!(closing.seq, 2);
        assert_eq!(closing.scan.state, RunState::Incomplete);
        assert_eq!(closing.request.as_deref(), Some("req-1"));
        // Dropping old batches: everything made before now.
        store.outbox_push(&make("s-3", 0, false)).await.unwrap();
        assert_eq!(
            store
                .outbox_prune(chrono::Utc::now() + chrono::Duration::seconds(1))
                .await
                .unwrap(),
            1
        );
        store.close().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Config.

fn check_config(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netpatrol.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(&path)
        .env_remove("NETPATROL_TEST_UNSET_TOKEN")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{text}");
    text
}

#[test]
fn check_config_refuses_a_shared_segment_plain_http_a_short_keep_and_a_missing_token() {
    let text = check_config(
        "segments:\n  - {name: a, network: other, cidrs: [127.121.50.0/30]}\n\
         sensors:\n  - {id: s1, segments: [a]}\n  - {id: s2, segments: [a, nope]}\n\
         hub: {url: \"http://hub.example.gov.cn:9750\", sensor: s1, keep_hours: 24}\n",
    );
    for expected in [
        "segment `a` is assigned to sensor `s1` already: a segment has at most one sensor",
        "unknown segment `nope`",
        "plain http to a host that is not loopback: use https",
        "hub.keep_hours must be at least 72, not 24",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // A valid config: the token must be set and the files readable.
    let text = check_config(
        "segments:\n  - {name: a, network: other, cidrs: [127.121.50.0/30]}\n\
         hub: {url: \"https://hub.example.gov.cn:9750\", sensor: s1, token_env: NETPATROL_TEST_UNSET_TOKEN, ca_file: missing.pem}\n",
    );
    for expected in [
        "hub.token_env: neither NETPATROL_TEST_UNSET_TOKEN nor NETPATROL_TEST_UNSET_TOKEN_FILE is set",
        "hub.ca_file",
        "missing.pem",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn the_example_hub_and_sensor_configs_load() {
    for name in ["config/hub.example.yaml", "config/sensor.example.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        let config =
            netpatrol::config::load(&path).unwrap_or_else(|e| panic!("{name} does not load:\n{e}"));
        if name.contains("hub") {
            assert_eq!(config.sensors.len(), 3);
            assert!(config.hub.is_none());
        } else {
            let hub = config.hub.expect("hub:");
            assert_eq!(hub.sensor, "extranet-1");
            assert!(config.sensors.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Two sensors in two namespaces, one hub with mTLS.

#[test]
fn two_sensors_in_two_namespaces_each_report_only_their_own_segments_over_mtls() {
    // Addresses of this run (two runs of these tests at once must not share them).
    let third = (std::process::id() % 120) * 2;
    let hub_ip = format!("198.18.{third}.1");
    let ns_a = Netns::new(1, &hub_ip, &format!("198.18.{third}.2"));
    let ns_b = Netns::new(
        2,
        &format!("198.18.{}.1", third + 1),
        &format!("198.18.{}.2", third + 1),
    );
    // seg-a's service in A; in A also an address of seg-b (A declares seg-b but is not
    // assigned it) and one of seg-x (assigned to A, which does not declare it): neither may
    // reach the hub. seg-b's service in B only.
    let a_own = ns_a.listen("127.121.1.3:18080");
    let a_in_b = ns_a.listen("127.121.2.5:18080");
    let a_in_x = ns_a.listen("127.121.3.3:18080");
    let b_own = ns_b.listen("127.121.2.4:18080");

    let pki = support::tls::Pki::new("netpatrol hub test CA");
    let hub_dir = tempfile::tempdir().unwrap();
    let server = pki.leaf(&[hub_ip.as_str()], (2025, 1, 1), (2035, 1, 1));
    write_leaf(hub_dir.path(), "server", &server);
    pki.write_ca(hub_dir.path(), "ca.pem");
    std::fs::write(
        hub_dir.path().join("web.yml"),
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n",
    )
    .unwrap();
    let port = free_port(&hub_ip);
    let listen = format!("{hub_ip}:{port}");
    let hub_store = hub_store_sqlite(hub_dir.path());
    std::fs::write(
        hub_dir.path().join("hub.yaml"),
        hub_yaml(&hub_store, &listen, "  web_config: web.yml\n"),
    )
    .unwrap();
    let hub = Proc::spawn(
        Command::new(BIN),
        &[
            "daemon",
            "-c",
            hub_dir.path().join("hub.yaml").to_str().unwrap(),
        ],
        hub_dir.path().join("hub.log"),
        &[(API_ENV, API_TOKEN), (A_ENV, A_TOKEN), (B_ENV, B_TOKEN)],
    );

    let sensor = |ns: &Netns, id: &str, env: &'static str, token: &'static str, segments: &str| {
        let dir = tempfile::tempdir().unwrap();
        let client = pki.leaf(&[id], (2025, 1, 1), (2035, 1, 1));
        write_leaf(dir.path(), "client", &client);
        pki.write_ca(dir.path(), "ca.pem");
        let hub = format!(
            "{{url: \"https://{listen}\", sensor: {id}, token_env: {env}, ca_file: ca.pem, cert_file: client.pem, key_file: client.key, poll_seconds: 1, retry_max_seconds: 1}}"
        );
        std::fs::write(
            dir.path().join("sensor.yaml"),
            sensor_yaml(segments, &hub, ""),
        )
        .unwrap();
        let p = Proc::spawn(
            ns.command(BIN),
            &[
                "sensor",
                "-c",
                dir.path().join("sensor.yaml").to_str().unwrap(),
            ],
            dir.path().join("sensor.log"),
            &[(env, token)],
        );
        (p, dir)
    };
    let (mut sa, _da) = sensor(
        &ns_a,
        "sensor-a",
        A_ENV,
        A_TOKEN,
        "  - {name: seg-a, network: extranet, cidrs: [127.121.1.0/29]}\n  - {name: seg-b, network: metro, cidrs: [127.121.2.0/29]}\n",
    );
    let (mut sb, _db) = sensor(
        &ns_b,
        "sensor-b",
        B_ENV,
        B_TOKEN,
        "  - {name: seg-b, network: metro, cidrs: [127.121.2.0/29]}\n",
    );
    wait_for(
        "a complete run of each sensor at the hub",
        Duration::from_secs(120),
        || {
            assert!(sa.alive(), "sensor A exited:\n{}", sa.log());
            assert!(sb.alive(), "sensor B exited:\n{}", sb.log());
            let n = peek(
                &hub_store,
                "SELECT COUNT(DISTINCT sensor) FROM scan_runs WHERE sensor IS NOT NULL AND state = 'complete'",
            );
            (n == 2).then_some(())
        },
    );
    let a_log = sa.log();
    assert_eq!(sa.stop(), Some(0));
    assert_eq!(sb.stop(), Some(0));
    assert_eq!(hub.stop(), Some(0));

    assert!(
        a_log.contains("not scanned") && a_log.contains("seg-x"),
        "sensor A says it refused seg-x:\n{a_log}"
    );
    assert!(
        a_own.accepted.load(Ordering::SeqCst) > 0,
        "A scanned its own segment"
    );
    assert!(
        b_own.accepted.load(Ordering::SeqCst) > 0,
        "B scanned its own segment"
    );
    assert_eq!(
        a_in_b.accepted.load(Ordering::SeqCst),
        0,
        "A never scans seg-b"
    );
    assert_eq!(
        a_in_x.accepted.load(Ordering::SeqCst),
        0,
        "A never scans seg-x"
    );
    let hosts = rows(&hub_store, "SELECT ip, segment FROM hosts ORDER BY ip");
    assert_eq!(
        hosts,
        vec![
            vec!["127.121.1.3".to_string(), "seg-a".to_string()],
            vec!["127.121.2.4".to_string(), "seg-b".to_string()],
        ]
    );
    let services = rows(
        &hub_store,
        "SELECT ip, CAST(port AS TEXT) FROM services ORDER BY ip",
    );
    assert_eq!(services.len(), 2, "{services:?}");
    let runs = rows(
        &hub_store,
        "SELECT DISTINCT sensor, segments FROM scan_runs WHERE sensor IS NOT NULL ORDER BY sensor",
    );
    assert_eq!(
        runs,
        vec![
            vec!["sensor-a".to_string(), "[\"seg-a\"]".to_string()],
            vec!["sensor-b".to_string(), "[\"seg-b\"]".to_string()],
        ]
    );
    // Every segment is a sensor's: the hub never scanned any itself.
    let own = rows(&hub_store, "SELECT id FROM scan_runs WHERE sensor IS NULL");
    assert!(
        own.is_empty(),
        "the hub scanned a sensor's segment: {own:?}"
    );
    // Every sensor scan was assessed like the hub's own: the unapproved host has its finding.
    let findings = rows(
        &hub_store,
        "SELECT ip FROM findings WHERE rule = 'access.unapproved_host' ORDER BY ip",
    );
    assert_eq!(findings.len(), 2, "{findings:?}");
}

fn hub_store_sqlite(dir: &Path) -> TestStore {
    TestStore::sqlite_at(dir.join("hub.db"))
}

// ---------------------------------------------------------------------------------------------
// Tokens, routes and metrics (loopback).

#[test]
fn sensor_routes_take_only_their_own_token_and_metrics_show_each_sensor() {
    let dir = tempfile::tempdir().unwrap();
    let store = hub_store_sqlite(dir.path());
    let port = free_port("127.121.9.1");
    let addr: SocketAddr = format!("127.121.9.1:{port}").parse().unwrap();
    std::fs::write(
        dir.path().join("hub.yaml"),
        hub_yaml(&store, &addr.to_string(), ""),
    )
    .unwrap();
    let mut hub = Proc::spawn(
        Command::new(BIN),
        &[
            "daemon",
            "-c",
            dir.path().join("hub.yaml").to_str().unwrap(),
        ],
        dir.path().join("hub.log"),
        &[(API_ENV, API_TOKEN), (A_ENV, A_TOKEN), (B_ENV, B_TOKEN)],
    );
    wait_for("the hub", Duration::from_secs(60), || {
        assert!(hub.alive(), "{}", hub.log());
        TcpStream::connect(addr).ok()
    });
    let route = "/api/v1/sensors/sensor-a/assignment";
    assert_eq!(http(addr, "GET", route, None, "").0, 401);
    assert_eq!(http(addr, "GET", route, Some("wrong"), "").0, 401);
    assert_eq!(http(addr, "GET", route, Some(B_TOKEN), "").0, 403);
    assert_eq!(http(addr, "GET", route, Some(API_TOKEN), "").0, 403);
    // A sensor's token is no credential elsewhere.
    assert_eq!(
        http(addr, "GET", "/api/v1/findings", Some(A_TOKEN), "").0,
        401
    );
    let (status, body) = http(
        addr,
        "GET",
        &format!("{route}?backlog=7"),
        Some(A_TOKEN),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let a: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(a["segments"], serde_json::json!(["seg-a", "seg-x"]));
    assert_eq!(a["timezone"], "Asia/Shanghai");
    assert_eq!(
        a["schedules"][0]["segments"],
        serde_json::json!(["seg-a", "seg-x"])
    );
    let metrics = http(addr, "GET", "/metrics", None, "").1;
    assert!(
        metrics.contains("netpatrol_sensor_backlog_batches{sensor=\"sensor-a\"} 7"),
        "the backlog the assignment request reported: {metrics}"
    );
    // An on-demand scan of seg-b goes to sensor B's assignment, not to the hub's queue.
    let (status, body) = http(
        addr,
        "POST",
        "/api/v1/scans",
        Some(API_TOKEN),
        r#"{"segments": ["seg-b"]}"#,
    );
    assert_eq!(status, 202, "{body}");
    let (_, body) = http(
        addr,
        "GET",
        "/api/v1/sensors/sensor-b/assignment",
        Some(B_TOKEN),
        "",
    );
    let b: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        b["requests"][0]["segments"],
        serde_json::json!(["seg-b"]),
        "{b}"
    );
    let request = b["requests"][0]["id"]
        .as_str()
        .expect("request id")
        .to_string();
    let state = |id: &str| {
        let (status, body) = http(
            addr,
            "GET",
            &format!("/api/v1/scans/{id}"),
            Some(API_TOKEN),
            "",
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    assert_eq!(state(&request)["state"], "queued");
    assert_eq!(state(&request)["sensor"], "sensor-b");
    // Sensor B answers it: its batches carry the request id; the request leaves the
    // assignment and its state follows the run.
    let b_run = run("sensor-b-20261201T000000.000Z-00cc", &["seg-b"]);
    let b_begin = serde_json::json!({
        "batch": batch::new_id(), "sensor": "sensor-b", "scan": serde_json::to_value(&b_run).unwrap(),
        "seq": 0, "final": false, "request": request,
    });
    let (status, body) = http(
        addr,
        "POST",
        "/api/v1/sensors/sensor-b/batches",
        Some(B_TOKEN),
        &b_begin.to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(state(&request)["state"], "running");
    let (_, body) = http(
        addr,
        "GET",
        "/api/v1/sensors/sensor-b/assignment",
        Some(B_TOKEN),
        "",
    );
    assert!(body.contains("\"requests\":[]"), "{body}");
    let mut b_done = b_run.clone();
    b_done.state = RunState::Complete;
    b_done.finished_at = Some(chrono::Utc::now());
    let b_final = serde_json::json!({
        "batch": batch::new_id(), "sensor": "sensor-b", "scan": serde_json::to_value(&b_done).unwrap(),
        "seq": 1, "final": true, "request": request,
    });
    let (status, body) = http(
        addr,
        "POST",
        "/api/v1/sensors/sensor-b/batches",
        Some(B_TOKEN),
        &b_final.to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let done = state(&request);
    assert_eq!(done["state"], "complete", "{done}");
    assert_eq!(
        done["report"]["scan"]["segments"],
        serde_json::json!(["seg-b"]),
        "{done}"
    );
    // A bad body is refused; so is another sensor's batch.
    let (status, _) = http(
        addr,
        "POST",
        "/api/v1/sensors/sensor-a/batches",
        Some(A_TOKEN),
        "{",
    );
    assert_eq!(status, 400);
    let host = |ip: &str| {
        serde_json::json!({"ip": ip, "segment": "seg-a", "network": "extranet", "icmp_rtt": null,
            "alive_by": ["open_port"], "ptr": null, "services": []})
    };
    // The run claims seg-b too, which is sensor B's: it will cover seg-a only.
    let claimed = run("sensor-a-20261201T000000.000Z-00aa", &["seg-a", "seg-b"]);
    let mut begin = serde_json::json!({
        "batch": batch::new_id(), "sensor": "sensor-b",
        "scan": serde_json::to_value(&claimed).unwrap(),
        "seq": 0, "final": false,
        "hosts": [host("127.121.1.2"), host("127.121.2.2")],
    });
    let post_batch = |b: &serde_json::Value| {
        let (status, body) = http(
            addr,
            "POST",
            "/api/v1/sensors/sensor-a/batches",
            Some(A_TOKEN),
            &b.to_string(),
        );
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    assert_eq!(
        post_batch(&begin).0,
        400,
        "sensor-b's batch on sensor-a's route"
    );
    // A host of seg-b (sensor B's) in sensor A's batch is dropped and counted; sent again,
    // the batch is a duplicate.
    begin["sensor"] = serde_json::json!("sensor-a");
    let (status, answer) = post_batch(&begin);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["hosts"], 1);
    assert_eq!(answer["refused"], 1);
    assert_eq!(post_batch(&begin).1["status"], "duplicate");
    let metrics = http(addr, "GET", "/metrics", None, "").1;
    assert!(
        metrics.contains("netpatrol_sensor_backlog_batches{sensor=\"sensor-a\"} 0"),
        "the backlog the batch reported (none): {metrics}"
    );
    let mut done = claimed.clone();
    done.state = RunState::Complete;
    done.finished_at = Some(chrono::Utc::now());
    let last = serde_json::json!({
        "batch": batch::new_id(), "sensor": "sensor-a",
        "scan": serde_json::to_value(&done).unwrap(), "seq": 1, "final": true, "backlog": 2,
    });
    let (status, answer) = post_batch(&last);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["recorded"], true);
    // Sent again: nothing recorded twice.
    let again = post_batch(&last).1;
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["recorded"], false);
    let metrics = http(addr, "GET", "/metrics", None, "").1;
    assert!(
        metrics.contains("netpatrol_sensor_backlog_batches{sensor=\"sensor-a\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("netpatrol_sensor_last_contact_timestamp_seconds{sensor=\"sensor-b\"}")
    );
    assert_eq!(hub.stop(), Some(0));
    let recorded = rows(
        &store,
        "SELECT state, segments FROM scan_runs WHERE id = 'sensor-a-20261201T000000.000Z-00aa'",
    );
    assert_eq!(
        recorded,
        vec![vec!["complete".to_string(), "[\"seg-a\"]".to_string()]]
    );
    let hosts = rows(&store, "SELECT ip, segment FROM hosts");
    assert_eq!(
        hosts,
        vec![vec!["127.121.1.2".to_string(), "seg-a".to_string()]],
        "the host of seg-b was refused"
    );
    // Every sensor request is audited, with its principal.
    let audit = rows(
        &store,
        "SELECT principal, CAST(status AS TEXT) FROM audit WHERE route LIKE '/api/v1/sensors/%' ORDER BY at",
    );
    assert!(
        audit.contains(&vec!["sensor:sensor-a".to_string(), "200".to_string()]),
        "{audit:?}"
    );
    assert!(
        audit.contains(&vec!["sensor:sensor-b".to_string(), "403".to_string()]),
        "{audit:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Faults (loopback).

/// A hub on loopback (plain HTTP) over `store`, one sensor `sensor-a` scanning seg-a
/// (127.121.1.0/29 moved to `block`); scans every `cron`.
struct Pair {
    hub_dir: tempfile::TempDir,
    sensor_dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Pair {
    fn new(store: &TestStore, hub_ip: &str, block: &str, cron: &str, service: u16) -> Pair {
        let hub_dir = tempfile::tempdir().unwrap();
        let sensor_dir = tempfile::tempdir().unwrap();
        let port = free_port(hub_ip);
        let addr: SocketAddr = format!("{hub_ip}:{port}").parse().unwrap();
        let yaml = hub_yaml(store, &addr.to_string(), "")
            .replace("127.121.1.0/29", block)
            .replace("*/2 * * * * *", cron)
            .replace("[18080]", &format!("[{service}]"));
        std::fs::write(hub_dir.path().join("hub.yaml"), yaml).unwrap();
        let hub = format!(
            "{{url: \"http://{addr}\", sensor: sensor-a, token_env: {A_ENV}, poll_seconds: 1, retry_max_seconds: 1}}"
        );
        std::fs::write(
            sensor_dir.path().join("sensor.yaml"),
            sensor_yaml(
                &format!("  - {{name: seg-a, network: extranet, cidrs: [{block}]}}\n"),
                &hub,
                "",
            )
            .replace("[18080]", &format!("[{service}]")),
        )
        .unwrap();
        Pair {
            hub_dir,
            sensor_dir,
            addr,
        }
    }

    fn hub(&self) -> Proc {
        let hub = Proc::spawn(
            Command::new(BIN),
            &[
                "daemon",
                "-c",
                self.hub_dir.path().join("hub.yaml").to_str().unwrap(),
            ],
            self.hub_dir.path().join("hub.log"),
            &[(API_ENV, API_TOKEN), (A_ENV, A_TOKEN), (B_ENV, B_TOKEN)],
        );
        let addr = self.addr;
        let mut hub = hub;
        wait_for("the hub to listen", Duration::from_secs(60), || {
            assert!(hub.alive(), "{}", hub.log());
            TcpStream::connect(addr).ok()
        });
        hub
    }

    fn sensor(&self) -> Proc {
        Proc::spawn(
            Command::new(BIN),
            &[
                "sensor",
                "-c",
                self.sensor_dir.path().join("sensor.yaml").to_str().unwrap(),
            ],
            self.sensor_dir.path().join("sensor.log"),
            &[(A_ENV, A_TOKEN)],
        )
    }

    fn outbox(&self, sql: &'static str) -> i64 {
        peek_sqlite(&self.sensor_dir.path().join("sensor.db"), sql)
    }
}

#[test]
fn a_sensor_cut_off_for_three_scans_delivers_all_three_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let store = hub_store_sqlite(tmp.path());
    let svc = Served::loopback("127.121.11.3:0");
    let pair = Pair::new(
        &store,
        "127.121.10.1",
        "127.121.11.0/29",
        "*/2 * * * * *",
        svc.port,
    );
    let hub = pair.hub();
    let mut sensor = pair.sensor();
    wait_for("a first run recorded", Duration::from_secs(60), || {
        assert!(sensor.alive(), "{}", sensor.log());
        (peek(
            &store,
            "SELECT COUNT(*) FROM scan_runs WHERE state = 'complete'",
        ) >= 1)
            .then_some(())
    });
    hub.kill();
    let before = peek(&store, "SELECT COUNT(*) FROM scan_runs");
    // Three scans' final batches wait in the outbox while the hub is away.
    wait_for("three scans queued", Duration::from_secs(60), || {
        (pair.outbox("SELECT COUNT(*) FROM sensor_outbox WHERE is_final = 1 AND sent_at IS NULL")
            >= 3)
            .then_some(())
    });
    let queued =
        pair.outbox("SELECT COUNT(DISTINCT scan_id) FROM sensor_outbox WHERE sent_at IS NULL");
    let hub = pair.hub();
    wait_for("the backlog delivered", Duration::from_secs(60), || {
        (peek(
            &store,
            "SELECT COUNT(*) FROM scan_runs WHERE state = 'complete'",
        ) >= before + queued)
            .then_some(())
    });
    assert_eq!(sensor.stop(), Some(0));
    assert_eq!(hub.stop(), Some(0));
    // In order: the runs reached the hub in the order they started, each batch once.
    let received = rows(
        &store,
        "SELECT scan_id FROM sensor_batches WHERE is_final = 1 ORDER BY received_at, scan_id",
    );
    let mut sorted = received.clone();
    sorted.sort();
    assert_eq!(received, sorted, "final batches arrived in scan order");
    let dup = rows(
        &store,
        "SELECT scan_id FROM sensor_batches GROUP BY scan_id, seq HAVING COUNT(*) > 1",
    );
    assert!(dup.is_empty(), "{dup:?}");
    let opened = rows(
        &store,
        "SELECT fingerprint FROM finding_events WHERE event = 'opened' GROUP BY fingerprint HAVING COUNT(*) > 1",
    );
    assert!(opened.is_empty(), "a finding opened twice: {opened:?}");
}

#[test]
fn a_hub_killed_mid_batch_loses_nothing_and_counts_nothing_twice() {
    for_each_backend_blocking(|store| {
        // Four batches' worth of addresses with a service in each, so batches keep coming
        // (other addresses for the second backend: the first one's listeners live on).
        let base = match store.backend {
            netpatrol::store::Backend::Sqlite => 20,
            netpatrol::store::Backend::Postgres => 24,
        };
        let first = Served::loopback(&format!("127.121.{base}.7:0"));
        let port = first.port;
        let _svcs: Vec<Served> = std::iter::once(first)
            .chain((1..4).map(|i| Served::loopback(&format!("127.121.{}.7:{port}", base + i))))
            .collect();
        let pair = Pair::new(
            &store,
            "127.121.19.1",
            &format!("127.121.{base}.0/22"),
            "*/3 * * * * *",
            port,
        );
        let mut hub = pair.hub();
        let mut sensor = pair.sensor();
        // Kill the hub again and again while batches arrive, restart it each time.
        for round in 0..4 {
            wait_for("batches arriving", Duration::from_secs(60), || {
                assert!(sensor.alive(), "{}", sensor.log());
                (peek(&store, "SELECT COUNT(*) FROM sensor_batches") > round * 3).then_some(())
            });
            hub.kill();
            std::thread::sleep(Duration::from_millis(300));
            hub = pair.hub();
        }
        wait_for("two complete runs", Duration::from_secs(90), || {
            (peek(
                &store,
                "SELECT COUNT(*) FROM scan_runs WHERE state = 'complete'",
            ) >= 2)
                .then_some(())
        });
        assert_eq!(sensor.stop(), Some(0));
        // Let the hub take what the sensor sent before stopping.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(hub.stop(), Some(0));
        let dup = rows(
            &store,
            "SELECT scan_id FROM sensor_batches GROUP BY scan_id, seq HAVING COUNT(*) > 1",
        );
        assert!(dup.is_empty(), "{dup:?}");
        // Every complete run holds the four services: nothing lost.
        let per_run = rows(
            &store,
            "SELECT r.id, CAST(COUNT(o.ip) AS TEXT) FROM scan_runs r LEFT JOIN observations o
             ON o.scan_id = r.id AND o.kind = 'service' WHERE r.state = 'complete' GROUP BY r.id",
        );
        assert!(per_run.len() >= 2);
        for r in &per_run {
            assert_eq!(r[1], "4", "run {} lost services: {per_run:?}", r[0]);
        }
        // Nothing counted twice: each finding opened once, one event per finding per run.
        let twice = rows(
            &store,
            "SELECT fingerprint FROM finding_events GROUP BY fingerprint, scan_id, event HAVING COUNT(*) > 1",
        );
        assert!(twice.is_empty(), "{twice:?}");
        let opened = rows(
            &store,
            "SELECT fingerprint FROM finding_events WHERE event = 'opened' GROUP BY fingerprint HAVING COUNT(*) > 1",
        );
        assert!(opened.is_empty(), "{opened:?}");
    });
}

#[test]
fn a_sensor_killed_mid_scan_leaves_an_incomplete_run_that_resolves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = hub_store_sqlite(tmp.path());
    let svc = TcpListener::bind("127.121.31.3:0").unwrap();
    let port = svc.local_addr().unwrap().port();
    let served = Served::on(svc.try_clone().unwrap());
    let pair = Pair::new(
        &store,
        "127.121.30.1",
        "127.121.31.0/29",
        "*/2 * * * * *",
        port,
    );
    let hub = pair.hub();
    let mut sensor = pair.sensor();
    wait_for(
        "a complete run with the finding",
        Duration::from_secs(60),
        || {
            assert!(sensor.alive(), "{}", sensor.log());
            (peek(&store, "SELECT COUNT(*) FROM findings WHERE rule = 'access.unapproved_host' AND state = 'open'") == 1)
            .then_some(())
        },
    );
    assert_eq!(sensor.stop(), Some(0));
    drop(served);
    drop(svc);
    let runs_before = peek(&store, "SELECT COUNT(*) FROM scan_runs");
    // Now a slow scan (a rate of 2 probes a second over 8 addresses), killed after it began.
    let slow = std::fs::read_to_string(pair.sensor_dir.path().join("sensor.yaml"))
        .unwrap()
        .replace("dns: {enabled: false}", "dns: {enabled: false}, rate: 2");
    std::fs::write(pair.sensor_dir.path().join("sensor.yaml"), slow).unwrap();
    let mut sensor = pair.sensor();
    wait_for(
        "the slow scan begun at the hub",
        Duration::from_secs(60),
        || {
            assert!(sensor.alive(), "{}", sensor.log());
            (peek(
                &store,
                "SELECT COUNT(*) FROM scan_runs WHERE state = 'running'",
            ) >= 1)
                .then_some(())
        },
    );
    sensor.kill();
    // Restarted: it closes the cut-off scan as incomplete before anything else.
    let mut sensor = pair.sensor();
    wait_for(
        "the incomplete run recorded",
        Duration::from_secs(60),
        || {
            assert!(sensor.alive(), "{}", sensor.log());
            (peek(
                &store,
                "SELECT COUNT(*) FROM scan_runs WHERE state = 'incomplete'",
            ) >= 1)
                .then_some(())
        },
    );
    sensor.kill();
    assert_eq!(hub.stop(), Some(0));
    assert!(peek_count_rows(&store) > runs_before);
    let finding = rows(
        &store,
        "SELECT state, CAST(absent_scans AS TEXT) FROM findings WHERE rule = 'access.unapproved_host'",
    );
    assert_eq!(
        finding,
        vec![vec!["open".to_string(), "0".to_string()]],
        "the incomplete run resolved nothing"
    );
    let resolved = rows(
        &store,
        "SELECT fingerprint FROM finding_events WHERE event = 'resolved'",
    );
    assert!(resolved.is_empty(), "{resolved:?}");
}

fn peek_count_rows(store: &TestStore) -> i64 {
    rows(store, "SELECT CAST(COUNT(*) AS TEXT) FROM scan_runs")[0][0]
        .parse()
        .unwrap()
}

#[test]
fn a_hub_stopped_between_storing_the_final_batch_and_recording_records_it_at_start() {
    for_each_backend_blocking(|store| {
        // The state a hub leaves when it dies right after committing a scan's final batch:
        // both batches stored, the run still `running`.
        let scan = run("sensor-a-20261201T010000.000Z-00bb", &["seg-a"]);
        let host = serde_json::from_value(serde_json::json!({
            "ip": "127.121.1.6", "segment": "seg-a", "network": "extranet", "icmp_rtt": null,
            "alive_by": ["open_port"], "ptr": null, "services": [{
                "port": 18080, "protocol": "tcp", "service": "unknown", "product": null,
                "version": null, "banner": null, "connect_time": {"secs": 0, "nanos": 1000},
                "tls": null, "http": null, "unauthenticated": null, "exposure_evidence": null,
                "failures": []}]
        }))
        .expect("a host observation reads");
        let mut done = scan.clone();
        done.state = RunState::Complete;
        done.finished_at = Some(chrono::Utc::now());
        let batches = [
            Batch {
                batch: batch::new_id(),
                sensor: "sensor-a".into(),
                scan: scan.clone(),
                seq: 0,
                is_final: false,
                hosts: Vec::new(),
                probe_errors: Vec::new(),
                backlog: 0,
                request: None,
            },
            Batch {
                batch: batch::new_id(),
                sensor: "sensor-a".into(),
                scan: scan.clone(),
                seq: 1,
                is_final: false,
                hosts: vec![host],
                probe_errors: Vec::new(),
                backlog: 0,
                request: None,
            },
            Batch {
                batch: batch::new_id(),
                sensor: "sensor-a".into(),
                scan: done,
                seq: 2,
                is_final: true,
                hosts: Vec::new(),
                probe_errors: Vec::new(),
                backlog: 0,
                request: None,
            },
        ];
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = store.open().await;
            for b in &batches {
                let payload = serde_json::to_string(b).unwrap();
                let incoming = IncomingBatch {
                    batch: &b.batch,
                    sensor: "sensor-a",
                    run: &b.scan,
                    seq: b.seq,
                    is_final: b.is_final,
                    hosts: b.hosts.len() as u64,
                    refused: 0,
                    backlog: 0,
                    payload: &payload,
                };
                s.receive_batch(&incoming, chrono::Utc::now())
                    .await
                    .unwrap();
            }
            s.close().await;
        });
        let pair = Pair::new(&store, "127.121.40.1", "127.121.1.0/29", "0 0 1 1 *", 18080);
        let hub = pair.hub();
        wait_for("the stored scan recorded", Duration::from_secs(60), || {
            (peek(
                &store,
                "SELECT COUNT(*) FROM scan_runs WHERE state = 'complete'",
            ) == 1)
                .then_some(())
        });
        // The final batch sent again (the sensor never got its answer): nothing twice.
        let (status, body) = http(
            pair.addr,
            "POST",
            "/api/v1/sensors/sensor-a/batches",
            Some(A_TOKEN),
            &serde_json::to_string(&batches[2]).unwrap(),
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"duplicate\""), "{body}");
        assert_eq!(hub.stop(), Some(0));
        let services = rows(
            &store,
            "SELECT ip FROM observations WHERE kind = 'service' AND scan_id = 'sensor-a-20261201T010000.000Z-00bb'",
        );
        assert_eq!(services, vec![vec!["127.121.1.6".to_string()]]);
        let opened = rows(
            &store,
            "SELECT fingerprint FROM finding_events WHERE event = 'opened' GROUP BY fingerprint HAVING COUNT(*) > 1",
        );
        assert!(opened.is_empty(), "{opened:?}");
    });
}
