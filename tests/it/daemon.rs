//! The daemon as operators run it: the real binary on the demo network (loopback), its HTTP API,
//! its metrics scraped by a real Prometheus that then runs every dashboard and alert query,
//! promtool on the alert rules, SIGHUP and SIGTERM.
//!
//! Prometheus and promtool come from Debian's `prometheus` package, which `.ci/run` installs;
//! when they are missing these tests fail (they never skip). Grafana cannot be installed here,
//! so the dashboards are checked structurally (unique uids, the datasource variable, a PromQL
//! `expr` on every panel target) and every expression is run by Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use crate::support::store::for_each_backend_blocking;
use crate::support::tls::write_leaf;

pub(crate) const TOKEN: &str = "s3cret-test-token";
pub(crate) const TOKEN_ENV: &str = "NETPATROL_TEST_API_TOKEN";
const READ_TOKEN: &str = "read-only-test-token";
pub(crate) const READ_ENV: &str = "NETPATROL_TEST_READ_TOKEN";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A loopback port free right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Where a Debian-packaged tool lives; a clear failure when it is missing.
fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: install Debian's `prometheus` package (apt-get install prometheus), as .ci/run does",
        path.display()
    );
    path
}

/// A response: status and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 exchange over a fresh connection (loopback only).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    assert!(addr.ip().is_loopback());
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    // The server may answer (413) before reading the whole body and close: ignore a reset here.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response to {method} {path}: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Reply { status, body }
}

/// The body of a chunked HTTP/1.1 response.
pub(crate) fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A GET with the operator token (every daemon route but `/healthz` needs a credential; the
/// token is harmless to Prometheus's own API, which these tests query too).
pub(crate) fn get(addr: SocketAddr, path: &str) -> Reply {
    get_as(addr, path, Some(&format!("Bearer {TOKEN}")))
}

/// A GET with `authorization` as the `Authorization` header (none when `None`).
pub(crate) fn get_as(addr: SocketAddr, path: &str, authorization: Option<&str>) -> Reply {
    match authorization {
        Some(a) => http(addr, "GET", path, &[("Authorization", a)], b""),
        None => http(addr, "GET", path, &[], b""),
    }
}

pub(crate) fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http(addr, "POST", path, &headers, body.as_bytes())
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub(crate) fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{name} failed");
}

/// The demo network's config (ports moved by the lab's shift) plus daemon settings, written to
/// `dir/netpatrol.yaml` (the store lands beside it).
fn demo_yaml(dir: &Path, shift: u16, listen: SocketAddr, extra: &str) -> String {
    let ports = netpatrol::lab::demo_config(dir, shift)
        .expect("demo config")
        .scan
        .ports;
    let text = netpatrol::lab::DEMO_CONFIG;
    let start = text.find("  ports: [").expect("demo ports");
    let end = start + text[start..].find(']').expect("end of ports") + 1;
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "{}  ports: [{}]{}\ndaemon:\n  listen: {listen}\n  api_token_env: {TOKEN_ENV}\n  read_token_env: {READ_ENV}\n  scans:\n    - {{cron: \"0 3 * * *\"}}\n    - {{cron: \"30 */4 * * *\", segments: [extranet-a]}}\n{extra}",
        &text[..start],
        list.join(", "),
        &text[end..],
    )
}

/// A config with one small loopback segment (never scanned by these tests) and the daemon
/// settings; `extra` goes in the `daemon` section.
fn small_yaml(listen: SocketAddr, extra: &str) -> String {
    format!(
        "segments:\n  - {{name: lab, network: other, cidrs: [127.112.9.0/30]}}\ndaemon:\n  listen: {listen}\n  api_token_env: {TOKEN_ENV}\n  read_token_env: {READ_ENV}\n{extra}"
    )
}

/// A running `netpatrol daemon`, killed when dropped.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) dir: tempfile::TempDir,
}

impl Daemon {
    fn start(yaml: impl Fn(&Path, SocketAddr) -> String, token: Option<&str>) -> Daemon {
        let env: Vec<(&str, &str)> = token.map(|t| (TOKEN_ENV, t)).into_iter().collect();
        Daemon::start_with("127.0.0.1", yaml, &env)
    }

    /// Listen on `ip` (a free port); `env` sets variables (the token ones are removed first).
    pub(crate) fn start_with(
        ip: &str,
        yaml: impl Fn(&Path, SocketAddr) -> String,
        env: &[(&str, &str)],
    ) -> Daemon {
        let d = Daemon::spawn(ip, yaml, env);
        wait_for("the daemon's /healthz", Duration::from_secs(60), || {
            d.check_alive();
            TcpStream::connect(d.addr)
                .ok()
                .map(|_| get(d.addr, "/healthz"))
                .filter(|r| r.status == 200)
        });
        d
    }

    /// Panic with the log when the daemon has exited.
    fn check_alive(&self) {
        // `try_wait` needs `&mut`; a zero-signal `kill` tells whether the process is there.
        let alive = Command::new("kill")
            .arg("-0")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(alive, "daemon exited early:\n{}", self.log());
    }

    /// Start without waiting for it to serve.
    fn spawn(ip: &str, yaml: impl Fn(&Path, SocketAddr) -> String, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        std::fs::write(dir.path().join("netpatrol.yaml"), yaml(dir.path(), addr)).unwrap();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_netpatrol"));
        cmd.arg("daemon")
            .arg("-c")
            .arg(dir.path().join("netpatrol.yaml"))
            .env("RUST_LOG", "netpatrol=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for var in [TOKEN_ENV, READ_ENV] {
            cmd.env_remove(var).env_remove(format!("{var}_FILE"));
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the daemon");
        Daemon { child, addr, dir }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("netpatrol.yaml")
    }

    /// Submit a scan and wait until it is done; its final state document.
    fn scan(&self, body: &str) -> Value {
        let r = post(self.addr, "/api/v1/scans", Some(TOKEN), body);
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.json()["id"].as_str().expect("scan id").to_string();
        self.wait_scan(&id)
    }

    pub(crate) fn wait_scan(&self, id: &str) -> Value {
        wait_for("the scan to finish", Duration::from_secs(180), || {
            let v = get(self.addr, &format!("/api/v1/scans/{id}")).json();
            let state = v["state"].as_str().unwrap_or("").to_string();
            ["complete", "incomplete", "failed"]
                .contains(&state.as_str())
                .then_some(v)
        })
    }

    pub(crate) fn metric(&self, name: &str) -> Option<f64> {
        get(self.addr, "/metrics").body.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = rest.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus server scraping `target` every second, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let bin = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(repo("dashboards/alerts.yml"), dir.path().join("alerts.yml")).unwrap();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [alerts.yml]\n\
                 scrape_configs:\n  - job_name: netpatrol\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            TcpStream::connect(addr)
                .ok()
                .map(|_| get(addr, "/-/ready"))
                .filter(|r| r.status == 200)
        });
        p
    }

    /// An instant query; panics when it does not parse or fails.
    fn query(&self, expr: &str) -> Vec<Value> {
        let r = get(self.addr, &format!("/api/v1/query?query={}", encode(expr)));
        let v = r.json();
        assert_eq!(v["status"], "success", "query {expr:?} failed: {}", r.body);
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn label_values(&self, label: &str, matcher: &str) -> Vec<String> {
        let r = get(
            self.addr,
            &format!("/api/v1/label/{label}/values?match[]={}", encode(matcher)),
        );
        r.json()["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dashboards: (file, parsed JSON).
fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            out.push((
                path.file_name().unwrap().to_string_lossy().to_string(),
                json,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel `expr` of a dashboard, with the panel's title.
fn panel_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// Structure Grafana's provisioning relies on (Grafana itself is not installable here).
#[test]
fn dashboards_are_provisioning_ready() {
    let boards = dashboards();
    let names: BTreeSet<&str> = boards.iter().map(|(f, _)| f.as_str()).collect();
    for want in [
        "overview.json",
        "department.json",
        "tls.json",
        "projects.json",
        "scanner.json",
    ] {
        assert!(names.contains(want), "dashboards/{want} missing");
    }
    let mut uids = BTreeSet::new();
    for (file, d) in &boards {
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(uids.insert(uid.to_string()), "{file}: uid {uid} used twice");
        assert!(
            d["id"].is_null(),
            "{file}: provisioned dashboards carry no numeric id"
        );
        assert!(
            d["schemaVersion"].as_u64().unwrap() >= 36,
            "{file}: schemaVersion"
        );
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["type"] == "datasource"
                && v["query"] == "prometheus"
                && v["name"] == "datasource"),
            "{file}: no `datasource` variable of type datasource/prometheus"
        );
        let panels = d["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{file}: no panels");
        let mut ids = BTreeSet::new();
        for p in panels {
            let title = p["title"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: panel without title"));
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{file}: panel id twice"
            );
            assert!(
                title
                    .chars()
                    .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)),
                "{file}: panel {title:?} has no Chinese title"
            );
            assert!(
                !p["description"].as_str().unwrap_or("").is_empty(),
                "{file}: panel {title:?} has no English description"
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: {title}");
            let targets = p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: {title}: no targets"));
            assert!(!targets.is_empty(), "{file}: {title}: no targets");
            for t in targets {
                assert!(
                    !t["expr"].as_str().unwrap_or("").is_empty(),
                    "{file}: {title}: a target without expr"
                );
            }
        }
    }
    let dept = boards.iter().find(|(f, _)| f == "department.json").unwrap();
    assert!(
        dept.1["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "department"
                && v["query"]["query"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("label_values(")),
        "department.json: no department variable from label_values"
    );
    for f in [
        "provisioning/dashboards.yaml",
        "provisioning/datasources.yaml",
    ] {
        assert!(
            repo("dashboards").join(f).exists(),
            "dashboards/{f} missing"
        );
    }
}

#[test]
fn alert_rules_pass_promtool() {
    let promtool = tool("promtool");
    for args in [
        ["check", "rules", "dashboards/alerts.yml"],
        ["test", "rules", "dashboards/alerts_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The metric names and labels of CONTRACT.md §5.
const CONTRACT_METRICS: &[(&str, &[&str])] = &[
    ("netpatrol_build_info", &["version"]),
    ("netpatrol_hosts", &["segment", "network", "department"]),
    ("netpatrol_services", &["segment", "network", "department"]),
    ("netpatrol_findings", &["severity", "rule", "department"]),
    ("netpatrol_findings_overdue", &["severity", "department"]),
    ("netpatrol_unapproved_hosts", &["segment", "department"]),
    (
        "netpatrol_tls_cert_not_after_seconds",
        &["ip", "port", "segment", "department"],
    ),
    (
        "netpatrol_tls_protocol_accepted",
        &["ip", "port", "version"],
    ),
    (
        "netpatrol_project_assessment_due_seconds",
        &["project", "department", "kind"],
    ),
    ("netpatrol_scan_duration_seconds_bucket", &["le"]),
    (
        "netpatrol_scan_last_success_timestamp_seconds",
        &["segment"],
    ),
    ("netpatrol_probe_errors_total", &["probe", "reason"]),
    ("netpatrol_outbox_messages", &["state"]),
];

/// `promtool check metrics` on a scrape: HELP and TYPE for every family, names by the rules.
fn promtool_check_metrics(text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn daemon_api_metrics_and_every_dashboard_query_on_prometheus() {
    for_each_backend_blocking(|db| {
        let prometheus_bin = tool("prometheus");
        let shift = support::lab();
        // Waive the legacy endpoint's weak-crypto findings, to see them marked in the API.
        let waiver = "exceptions:\n  - {rule: \"tls.weak_*\", ip: 127.20.2.8, reason: 改造中, approver: 张伟, expires_on: 2099-12-31}\n";
        let extra = format!("{waiver}{}", db.yaml());
        let daemon = Daemon::start(|dir, addr| demo_yaml(dir, shift, addr, &extra), Some(TOKEN));
        let addr = daemon.addr;

        // Authentication and request checks, before anything runs.
        let r = post(addr, "/api/v1/scans", None, "{}");
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.json()["error"].is_string());
        let r = post(addr, "/api/v1/scans", Some("wrong-token"), "{}");
        assert_eq!(r.status, 401);
        let r = post(
            addr,
            "/api/v1/scans",
            Some(TOKEN),
            "{\"segments\": [\"nowhere\"]}",
        );
        assert_eq!(r.status, 400);
        assert!(r.json()["error"].as_str().unwrap().contains("nowhere"));
        let r = post(addr, "/api/v1/scans", Some(TOKEN), "{\"segments\": ");
        assert_eq!(r.status, 400);
        assert!(r.json()["error"].as_str().unwrap().contains("JSON"));
        let r = post(addr, "/api/v1/scans", Some(TOKEN), "{\"segmentz\": []}");
        assert_eq!(r.status, 400, "unknown keys are refused");
        let big = format!("{{\"segments\": [\"{}\"]}}", "x".repeat(20 * 1024));
        let r = post(addr, "/api/v1/scans", Some(TOKEN), &big);
        assert_eq!(r.status, 413, "{}", r.body);
        assert!(r.json()["error"].is_string());
        let r = get(addr, "/api/v1/scans/no-such-scan");
        assert_eq!(r.status, 404);
        assert!(r.json()["error"].is_string());
        let r = get(addr, "/nowhere");
        assert_eq!(r.status, 404);
        assert!(r.json()["error"].is_string());

        // Prometheus starts scraping before the scan, so the histogram has a before and after.
        let prometheus = Prometheus::start(addr);
        let _ = prometheus_bin;

        // Two scans at once over a common segment: the second waits for the first.
        let first = post(addr, "/api/v1/scans", Some(TOKEN), "{}");
        assert_eq!(first.status, 202, "{}", first.body);
        let first_id = first.json()["id"].as_str().unwrap().to_string();
        let second = post(
            addr,
            "/api/v1/scans",
            Some(TOKEN),
            "{\"segments\": [\"extranet-a\"]}",
        );
        assert_eq!(second.status, 202);
        let second_id = second.json()["id"].as_str().unwrap().to_string();
        assert_ne!(first_id, second_id);
        let early = get(addr, &format!("/api/v1/scans/{second_id}")).json();
        assert!(
            ["queued", "running", "complete"].contains(&early["state"].as_str().unwrap()),
            "{early}"
        );
        let a = daemon.wait_scan(&first_id);
        let b = daemon.wait_scan(&second_id);
        assert_eq!(a["state"], "complete", "{a}\n{}", daemon.log());
        assert_eq!(b["state"], "complete", "{b}");
        let report = &a["report"];
        assert_eq!(report["scan"]["id"], a["scan_id"]);
        assert!(!report["hosts"].as_array().unwrap().is_empty());
        assert!(!report["findings"].as_array().unwrap().is_empty());
        let finished = |v: &Value| {
            chrono::DateTime::parse_from_rfc3339(
                v["report"]["scan"]["finished_at"].as_str().unwrap(),
            )
            .unwrap()
        };
        let started = |v: &Value| {
            chrono::DateTime::parse_from_rfc3339(
                v["report"]["scan"]["started_at"].as_str().unwrap(),
            )
            .unwrap()
        };
        // Report times have whole seconds: the second began no earlier than the first ended.
        assert!(
            started(&b) >= finished(&a) - chrono::Duration::seconds(1),
            "scans of extranet-a overlapped: {} vs {}",
            started(&b),
            finished(&a)
        );
        // A run id the store recorded is answered too.
        let by_run = get(
            addr,
            &format!("/api/v1/scans/{}", a["scan_id"].as_str().unwrap()),
        );
        assert_eq!(by_run.status, 200);
        assert_eq!(by_run.json()["state"], "complete");

        // Findings and their filters.
        let all = get(addr, "/api/v1/findings").json();
        let list = all["findings"].as_array().unwrap();
        assert!(!list.is_empty());
        assert_eq!(all["count"].as_u64().unwrap() as usize, list.len());
        for (query, key, want) in [
            ("severity=high", "severity", "high"),
            ("department=fgw", "department", "fgw"),
            (
                "rule=access.unapproved_host",
                "rule",
                "access.unapproved_host",
            ),
        ] {
            let got = get(addr, &format!("/api/v1/findings?{query}")).json();
            let got = got["findings"].as_array().unwrap();
            assert!(!got.is_empty(), "{query}: nothing");
            assert!(got.len() < list.len(), "{query}: no filtering");
            assert!(got.iter().all(|f| f[key] == want), "{query}: {got:?}");
        }
        let weak = get(addr, "/api/v1/findings?rule=tls.weak_key").json();
        let weak = &weak["findings"][0];
        assert_eq!(weak["state"], "waived", "{weak}");
        assert_eq!(weak["waiver"]["approver"], "张伟");
        let r = get(addr, "/api/v1/findings?severity=bogus");
        assert_eq!(r.status, 400);

        // Every contract metric, with its labels, in the exposition.
        let text = get(addr, "/metrics").body;
        for (name, labels) in CONTRACT_METRICS {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name}{{")))
                .unwrap_or_else(|| panic!("no {name} series in /metrics:\n{text}"));
            for label in *labels {
                assert!(
                    line.contains(&format!("{label}=\"")),
                    "{name} lacks {label}: {line}"
                );
            }
        }
        for name in [
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_cpu_seconds_total",
            "netpatrol_config_reload_success",
            "netpatrol_config_last_reload_timestamp_seconds",
            "netpatrol_scan_duration_seconds_count",
        ] {
            assert!(text.lines().any(|l| l.starts_with(name)), "no {name}");
        }
        assert!(
            text.contains("netpatrol_findings_waived{"),
            "waived findings not counted"
        );
        promtool_check_metrics(&text);

        // Prometheus has scraped the scan's results.
        wait_for(
            "Prometheus to scrape the scan",
            Duration::from_secs(60),
            || {
                let up = prometheus.query("up{job=\"netpatrol\"} == 1");
                let done = prometheus.query("netpatrol_scan_last_success_timestamp_seconds");
                let counted = prometheus.query("netpatrol_scan_duration_seconds_count >= 2");
                (!up.is_empty() && done.len() == 3 && !counted.is_empty()).then_some(())
            },
        );
        // rate() needs two samples after the scans; give it a few scrapes.
        std::thread::sleep(Duration::from_secs(3));

        // Every dashboard expression parses and returns data. `$department` is tried with every
        // department Prometheus knows: the expression must return data for at least one.
        let departments = prometheus.label_values("department", "netpatrol_findings");
        assert!(departments.len() > 1, "departments: {departments:?}");
        let mut checked = 0;
        for (file, board) in dashboards() {
            for (title, expr) in panel_exprs(&board) {
                let expr = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "5m")
                    .replace("$__interval", "15s");
                let values: Vec<&str> = if expr.contains("$department") {
                    departments.iter().map(String::as_str).collect()
                } else {
                    vec![""]
                };
                let found = values.iter().any(|d| {
                    let e = expr.replace("$department", d);
                    !prometheus.query(&e).is_empty()
                });
                assert!(found, "{file}: panel {title:?}: {expr:?} returned no data");
                checked += 1;
            }
        }
        assert!(checked >= 40, "only {checked} expressions");

        // Alert expressions parse; they may be empty (nothing to alert on is the normal state, e.g.
        // an outbox with nothing stuck), so only their validity is asserted here; promtool's unit
        // tests (alert_rules_pass_promtool) check what they fire on.
        let rules: Value = {
            let r = get(prometheus.addr, "/api/v1/rules");
            r.json()
        };
        let groups = rules["data"]["groups"].as_array().unwrap();
        let mut alerts = 0;
        for g in groups {
            for rule in g["rules"].as_array().unwrap() {
                assert_eq!(rule["health"].as_str().unwrap_or("ok"), "ok", "{rule}");
                let _ = prometheus.query(rule["query"].as_str().unwrap());
                alerts += 1;
            }
        }
        assert!(alerts >= 6, "Prometheus loaded {alerts} alert rules");
        // The demo network has an expired certificate: once Prometheus evaluated the rule, the
        // expired-certificate expression (without its `for`) holds.
        assert!(
            !prometheus
                .query("time() - netpatrol_tls_cert_not_after_seconds > 0")
                .is_empty()
        );

        // Health while all is well.
        let h = get(addr, "/healthz");
        assert_eq!(h.status, 200);
        assert_eq!(h.json()["status"], "ok");
    });
}

#[test]
fn reload_keeps_the_old_config_on_error_and_sigterm_stops_cleanly() {
    let shift = support::lab();
    let mut daemon = Daemon::start(|dir, addr| demo_yaml(dir, shift, addr, ""), Some(TOKEN));
    let addr = daemon.addr;
    assert_eq!(daemon.metric("netpatrol_config_reload_success"), Some(1.0));
    let before = daemon
        .metric("netpatrol_config_last_reload_timestamp_seconds")
        .unwrap();
    let good = std::fs::read_to_string(daemon.config_path()).unwrap();

    // A broken config: the daemon keeps the old one, says why, and the metric shows it.
    std::fs::write(
        daemon.config_path(),
        good.replacen(
            "\nsegments:\n",
            "\nsegments:\n  - {name: broken, network: nowhere, cidrs: [not-an-address]}\n",
            1,
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    signal(&daemon.child, "HUP");
    wait_for(
        "the reload metric to say 0",
        Duration::from_secs(20),
        || (daemon.metric("netpatrol_config_reload_success") == Some(0.0)).then_some(()),
    );
    assert!(
        daemon
            .metric("netpatrol_config_last_reload_timestamp_seconds")
            .unwrap()
            > before
    );
    let log = daemon.log();
    assert!(
        log.contains("ERROR") && log.contains("reload rejected"),
        "{log}"
    );
    assert!(
        log.contains("not-an-address") || log.contains("nowhere"),
        "the reason is logged:\n{log}"
    );
    // Still serving with the old config: its segments and token.
    assert_eq!(get(addr, "/healthz").status, 200);
    let r = post(
        addr,
        "/api/v1/scans",
        Some(TOKEN),
        "{\"segments\": [\"broken\"]}",
    );
    assert_eq!(r.status, 400, "the broken config was applied: {}", r.body);
    let done = daemon.scan("{\"segments\": [\"legacy-wsj\"]}");
    assert_eq!(done["state"], "complete", "{done}");

    // Fixed: the reload applies.
    std::fs::write(daemon.config_path(), &good).unwrap();
    signal(&daemon.child, "HUP");
    wait_for(
        "the reload metric to say 1",
        Duration::from_secs(20),
        || (daemon.metric("netpatrol_config_reload_success") == Some(1.0)).then_some(()),
    );

    // SIGTERM in the middle of a scan: exit 0 within the grace period. (The scan is begun
    // once the daemon's worker has claimed it from the queue: wait for that, then a little.)
    let r = post(addr, "/api/v1/scans", Some(TOKEN), "{}");
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().expect("scan id").to_string();
    wait_for("the scan to run", Duration::from_secs(30), || {
        (get(addr, &format!("/api/v1/scans/{id}")).json()["state"] == "running").then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    signal(&daemon.child, "TERM");
    let status = wait_for("the daemon to exit", Duration::from_secs(30), || {
        daemon.child.try_wait().unwrap()
    });
    assert!(
        asked.elapsed() < netpatrol::daemon::GRACE + Duration::from_secs(3),
        "took {:?}",
        asked.elapsed()
    );
    assert!(status.success(), "exit {status}:\n{}", daemon.log());
    // The store is consistent: no run is left `running` (read without Store::open, which
    // would mark such a run incomplete itself).
    let db = daemon.dir.path().join("netpatrol.db");
    let states: BTreeMap<String, usize> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}?mode=ro", db.display()))
            .await
            .unwrap();
        let rows: Vec<(String,)> = sqlx::query_as("SELECT state FROM scan_runs")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.into_iter().fold(BTreeMap::new(), |mut m, (s,)| {
            *m.entry(s).or_default() += 1;
            m
        })
    });
    assert!(states.values().sum::<usize>() >= 2, "{states:?}");
    assert!(!states.contains_key("running"), "{states:?}");
}

#[test]
fn post_without_a_configured_token_is_forbidden() {
    let shift = support::lab();
    // No operator token; `get` presents TOKEN, which is the read token here.
    let daemon = Daemon::start_with(
        "127.0.0.1",
        |dir, addr| demo_yaml(dir, shift, addr, ""),
        &[(READ_ENV, TOKEN)],
    );
    let r = post(daemon.addr, "/api/v1/scans", Some("anything"), "{}");
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "no API token configured");
    // Reads stay open to the read token.
    assert_eq!(get(daemon.addr, "/api/v1/findings").status, 200);
    assert_eq!(get(daemon.addr, "/metrics").status, 200);
}

/// Run the netpatrol binary with `args`; (exit code, stdout, stderr).
fn netpatrol(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netpatrol"))
        .args(args)
        .env_remove("NETPATROL_CONFIG")
        .output()
        .expect("run netpatrol");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_route_needs_a_credential_readers_only_read_and_every_action_is_audited() {
    let shift = support::lab();
    let dir = tempfile::tempdir().unwrap();
    let read_file = dir.path().join("read-token");
    std::fs::write(&read_file, format!("{READ_TOKEN}\n")).unwrap();
    let read_var = format!("{READ_ENV}_FILE");
    let daemon = Daemon::start_with(
        "127.112.0.1",
        |dir, addr| demo_yaml(dir, shift, addr, "  max_queued_scans: 2\n"),
        &[(TOKEN_ENV, TOKEN), (&read_var, read_file.to_str().unwrap())],
    );
    let addr = daemon.addr;
    let bearer = |t: &str| format!("Bearer {t}");

    // Every GET route: 401 without a credential, 200 with the read token.
    for path in ["/api/v1/findings", "/api/v1/findings?severity=high"] {
        let r = get_as(addr, path, None);
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert!(r.json()["error"].is_string());
        assert_eq!(get_as(addr, path, Some("Bearer wrong")).status, 401);
        assert_eq!(get_as(addr, path, Some(&bearer(READ_TOKEN))).status, 200);
    }
    assert_eq!(get_as(addr, "/api/v1/scans/nope", None).status, 401);
    assert_eq!(
        get_as(addr, "/api/v1/scans/nope", Some(&bearer(READ_TOKEN))).status,
        404
    );
    assert_eq!(get_as(addr, "/nowhere", None).status, 401);
    // The scheme is case-insensitive; the token is compared exactly (no trimming).
    let lower = format!("bearer {READ_TOKEN}");
    assert_eq!(get_as(addr, "/api/v1/findings", Some(&lower)).status, 200);
    let upper = format!("BEARER {TOKEN}");
    assert_eq!(get_as(addr, "/api/v1/findings", Some(&upper)).status, 200);
    // (HTTP drops whitespace around a header value; inside it, the token is what follows the
    // one space after the scheme.)
    let padded = format!("Bearer  {READ_TOKEN}");
    assert_eq!(get_as(addr, "/api/v1/findings", Some(&padded)).status, 401);
    // /metrics and /healthz without credentials (no basic-auth users configured).
    assert_eq!(get_as(addr, "/metrics", None).status, 200);
    assert_eq!(get_as(addr, "/healthz", None).status, 200);

    // A reader cannot start a scan; the operator can, with a lowercase scheme too.
    let r = post(addr, "/api/v1/scans", Some(READ_TOKEN), "{}");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(
        addr,
        "POST",
        "/api/v1/scans",
        &[("Authorization", &format!("bearer {TOKEN}"))],
        b"{}",
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let first = r.json()["id"].as_str().unwrap().to_string();

    // At most max_queued_scans (2) scans accepted and not finished: the third answers 429.
    let second = post(addr, "/api/v1/scans", Some(TOKEN), "{}");
    assert_eq!(second.status, 202, "{}", second.body);
    let third = post(addr, "/api/v1/scans", Some(TOKEN), "{}");
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(
        third.json()["error"]
            .as_str()
            .unwrap()
            .contains("max_queued_scans")
    );
    daemon.wait_scan(&first);
    daemon.wait_scan(second.json()["id"].as_str().unwrap());
    assert_eq!(
        post(
            addr,
            "/api/v1/scans",
            Some(TOKEN),
            "{\"segments\": [\"legacy-wsj\"]}"
        )
        .status,
        202
    );

    // The token metric; then a reload that drops the read token says so.
    let tokens = |role: &str| {
        daemon.metric(&format!(
            "netpatrol_api_token_configured{{role=\"{role}\"}}"
        ))
    };
    assert_eq!(tokens("operator"), Some(1.0));
    assert_eq!(tokens("read"), Some(1.0));
    std::fs::write(&read_file, "").unwrap();
    signal(&daemon.child, "HUP");
    wait_for(
        "the read token metric to say 0",
        Duration::from_secs(20),
        || (tokens("read") == Some(0.0)).then_some(()),
    );
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("no read token")),
        "{log}"
    );
    assert_eq!(
        get_as(addr, "/api/v1/findings", Some(&bearer(READ_TOKEN))).status,
        401
    );

    // The audit trail: actions with role, peer, route, status and the scan started.
    let config = daemon.config_path();
    let (code, table, stderr) = netpatrol(&["audit", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let header = table.lines().next().unwrap_or("");
    for h in ["时间", "身份", "来源地址", "路径", "状态"] {
        assert!(header.contains(h), "{header}");
    }
    let rows: Vec<&str> = table.lines().skip(1).collect();
    let has = |f: &dyn Fn(&str) -> bool| rows.iter().any(|l| f(l));
    assert!(
        has(&|l| l.contains("operator")
            && l.contains("POST")
            && l.contains(" 202 ")
            && l.contains(&first)),
        "{table}"
    );
    assert!(
        has(&|l| l.contains("read") && l.contains("POST") && l.contains(" 403 ")),
        "{table}"
    );
    assert!(
        has(&|l| l.contains("GET") && l.contains("/api/v1/findings") && l.contains(" 401 ")),
        "{table}"
    );
    assert!(
        has(&|l| l.contains(" 429 ") && l.contains("queue full")),
        "{table}"
    );
    assert!(
        has(&|l| l.contains("127.112.0.1:") || l.contains("127.0.0.1:")),
        "{table}"
    );
    assert!(!has(&|l| l.contains("/healthz")), "{table}");
    let (code, english, _) = netpatrol(&[
        "audit",
        "-c",
        config.to_str().unwrap(),
        "--lang",
        "en",
        "--since",
        "2099-01-01",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        english.lines().count(),
        1,
        "only the header after 2099: {english}"
    );
    assert!(english.starts_with("TIME"));

    // A corrupted row: the API answers a clean 500, /healthz 503 with the reason, and the CLI
    // exits 1 with a message naming table, column and row (no panic).
    let db = daemon.dir.path().join("netpatrol.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
            .await
            .unwrap();
        let done = sqlx::query("UPDATE findings SET port = 'abc' WHERE port IS NOT NULL")
            .execute(&pool)
            .await
            .unwrap();
        assert!(done.rows_affected() > 0);
        pool.close().await;
    });
    let r = get(addr, "/api/v1/findings");
    assert_eq!(r.status, 500, "{}", r.body);
    let message = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("findings") && message.contains("port"),
        "{message}"
    );
    let h = get_as(addr, "/healthz", None);
    assert_eq!(h.status, 503, "{}", h.body);
    assert!(
        h.json()["store"].as_str().unwrap().contains("port"),
        "{}",
        h.body
    );
    let month = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m")
        .to_string();
    let (code, _, stderr) = netpatrol(&[
        "bulletin",
        "-c",
        config.to_str().unwrap(),
        "--period",
        &month,
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("corrupt store") && stderr.contains("column port"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A response over TLS, and the server's leaf certificate; `Err` when the handshake or the
/// exchange failed.
fn https(
    addr: SocketAddr,
    client: &std::sync::Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Reply, Vec<u8>), String> {
    assert!(addr.ip().is_loopback());
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(client.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let result = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("no response: {result:?}"));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head}"))?;
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((Reply { status, body }, leaf))
}

#[test]
fn tls_with_required_client_certificates_and_bcrypt_basic_auth() {
    use base64::Engine;
    let pki = support::tls::Pki::new("netpatrol web test CA");
    let server = pki.leaf(&["127.112.0.2"], (2025, 1, 1), (2035, 1, 1));
    let client_leaf = pki.leaf(&["operator-workstation"], (2025, 1, 1), (2035, 1, 1));
    let hash = bcrypt::hash("scrape-pw", 4).unwrap();
    let ca_pem = pki.ca_pem();
    let web = format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\nbasic_auth_users:\n  prometheus: '{hash}'\n"
    );
    let daemon = Daemon::spawn(
        "127.112.0.2",
        |dir, addr| {
            write_leaf(dir, "server", &server);
            std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
            std::fs::write(dir.join("web.yml"), &web).unwrap();
            small_yaml(addr, "  web_config: web.yml\n")
        },
        &[(TOKEN_ENV, TOKEN)],
    );
    let addr = daemon.addr;
    wait_for("the daemon to listen", Duration::from_secs(60), || {
        daemon.check_alive();
        TcpStream::connect(addr).ok()
    });

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
    };
    let with_cert = std::sync::Arc::new(
        builder()
            .with_client_auth_cert(client_leaf.chain.clone(), client_leaf.clone_key())
            .unwrap(),
    );
    let without_cert = std::sync::Arc::new(builder().with_no_client_auth());

    // With the client certificate: served over TLS, the server's certificate the configured one.
    let (r, leaf) = https(addr, &with_cert, "GET", "/healthz", &[]).expect("TLS exchange");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(leaf, server.chain[0].as_ref());
    // Without one: refused in the handshake.
    let refused = https(addr, &without_cert, "GET", "/healthz", &[]);
    assert!(
        refused.is_err(),
        "served without a client certificate: {refused:?}"
    );
    // Plain HTTP to the TLS listener gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    assert!(!raw.starts_with(b"HTTP/1.1 200"), "plain HTTP served");

    // Basic auth users make /metrics ask for credentials: bcrypt user, or a token.
    let basic = |user: &str, pw: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    let get_tls = |path: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        https(addr, &with_cert, "GET", path, &headers)
            .expect("TLS exchange")
            .0
    };
    assert_eq!(get_tls("/metrics", None).status, 401);
    let scrape = get_tls("/metrics", Some(&basic("prometheus", "scrape-pw")));
    assert_eq!(scrape.status, 200);
    assert!(
        scrape.body.contains("netpatrol_build_info"),
        "{}",
        scrape.body
    );
    assert_eq!(
        get_tls("/metrics", Some(&basic("prometheus", "wrong"))).status,
        401
    );
    assert_eq!(
        get_tls("/metrics", Some(&basic("nobody", "scrape-pw"))).status,
        401
    );
    assert_eq!(
        get_tls("/metrics", Some(&format!("Bearer {TOKEN}"))).status,
        200
    );
    assert_eq!(
        get_tls("/api/v1/findings", Some(&basic("prometheus", "scrape-pw"))).status,
        200
    );
    let post = https(
        addr,
        &with_cert,
        "POST",
        "/api/v1/scans",
        &[("Authorization", &basic("prometheus", "scrape-pw"))],
    )
    .unwrap()
    .0;
    assert_eq!(
        post.status, 403,
        "basic-auth users only read: {}",
        post.body
    );

    // A renewed certificate is served after SIGHUP.
    let renewed = pki.leaf(&["127.112.0.2"], (2025, 6, 1), (2036, 1, 1));
    write_leaf(daemon.dir.path(), "server", &renewed);
    signal(&daemon.child, "HUP");
    wait_for("the renewed certificate", Duration::from_secs(20), || {
        let (_, leaf) = https(addr, &with_cert, "GET", "/healthz", &[]).ok()?;
        (leaf == renewed.chain[0].as_ref()).then_some(())
    });
}

#[test]
fn a_slow_header_client_is_closed_while_others_are_served() {
    let daemon = Daemon::start_with(
        "127.112.0.3",
        |_, addr| small_yaml(addr, ""),
        &[(TOKEN_ENV, TOKEN)],
    );
    let addr = daemon.addr;
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    let request = b"GET /api/v1/findings HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut closed = false;
    let mut trickled = 0;
    // One header byte a second, for far longer than the header timeout.
    for (i, byte) in request.iter().enumerate().take(30) {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match slow.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {
                closed = true; // an answer (408) and the close follow
                break;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        trickled = i + 1;
        // Meanwhile another client is served.
        if i == 2 {
            assert_eq!(get(addr, "/api/v1/findings").status, 200);
        }
    }
    assert!(closed, "the slow client was still connected after 30 s");
    // Within the 10 s the issue allows (the header timeout is 5 s; a byte a second).
    assert!(trickled <= 10, "closed only after {trickled} bytes");
    assert_eq!(get(addr, "/api/v1/findings").status, 200);
}

#[test]
fn a_bad_web_config_is_refused_with_every_problem_named() {
    use netpatrol::daemon::web::WebConfig;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let problems = |path: &Path| WebConfig::load(path).expect_err("refused").join("\n");

    // Several problems at once, each named.
    let p = problems(&write(
        "many.yml",
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: missing.key\n  client_auth_type: RequireAndVerifyClientCert\nbasic_auth_users:\n  alice: plaintext-password\n",
    ));
    assert!(
        p.contains("basic_auth_users.alice: not a bcrypt hash"),
        "{p}"
    );
    assert!(p.contains("missing.pem"), "{p}");
    assert!(p.contains("missing.key"), "{p}");
    assert!(p.contains("client_ca_file is required"), "{p}");
    assert!(p.lines().all(|l| l.contains("many.yml")), "{p}");

    // Keys netpatrol does not implement are refused by name.
    let p = problems(&write(
        "unknown.yml",
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
    ));
    assert!(p.contains("cipher_suites"), "{p}");
    let p = problems(&write(
        "auth.yml",
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequestClientCert\n",
    ));
    assert!(
        p.contains("RequestClientCert") && p.contains("not supported"),
        "{p}"
    );

    // A good one: basic auth only (no TLS).
    let hash = bcrypt::hash("pw", 4).unwrap();
    let ok = WebConfig::load(&write(
        "ok.yml",
        &format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
    ))
    .expect("loads");
    assert!(ok.tls.is_none() && ok.has_users());
    assert!(ok.check_user("prometheus", "pw"));
    assert!(!ok.check_user("prometheus", "pw "));
    assert!(!ok.check_user("nobody", "pw"));

    // check-config and the daemon refuse it: exit 64 with the reason.
    let listen: SocketAddr = "127.112.0.4:1".parse().unwrap();
    let config = write(
        "netpatrol.yaml",
        &small_yaml(listen, "  web_config: many.yml\n"),
    );
    for command in ["check-config", "daemon"] {
        let (code, _, stderr) = netpatrol(&[command, "-c", config.to_str().unwrap()]);
        assert_eq!(code, 64, "{command}: {stderr}");
        assert!(stderr.contains("not a bcrypt hash"), "{command}: {stderr}");
    }
}

#[test]
fn idle_connections_are_capped_and_closed() {
    let daemon = Daemon::start_with(
        "127.112.0.5",
        |_, addr| small_yaml(addr, ""),
        &[(TOKEN_ENV, TOKEN)],
    );
    let addr = daemon.addr;
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", daemon.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = fds();
    // More idle connections than the daemon keeps open (the rest wait in the backlog).
    let cap = netpatrol::daemon::api::MAX_CONNECTIONS;
    let idle: Vec<TcpStream> = (0..cap + 150)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok())
        .collect();
    assert!(idle.len() > cap, "only {} connections made", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let held = fds();
    assert!(
        held <= before + cap + 8,
        "{held} descriptors open with {} idle clients (before: {before}, cap {cap})",
        idle.len()
    );
    // The idle ones are closed by the header timeout; a real client is then served.
    let r = wait_for(
        "a request served past the idle clients",
        Duration::from_secs(60),
        || Some(get(addr, "/api/v1/findings")).filter(|r| r.status == 200),
    );
    assert_eq!(r.status, 200);
    drop(idle);
}
