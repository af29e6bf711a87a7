//! The rectification loop in a real browser: Debian's headless Chromium driven through
//! chromedriver's W3C WebDriver HTTP API (reqwest + serde_json, no WebDriver crate), against
//! the real `netpatrol` binary (a `scan`, a `bulletin --send` to the SMTP sink of
//! `support::smtp`, then the `daemon`), with real loopback services on 127.120.1.1-.3.
//!
//! The department opens the link taken from the notice the sink received; marks 已整改 on a
//! service that was stopped (the page ends on 复测通过) and on one still running (整改未通过);
//! asks for a waiver on a third; the operator logs in on the operator page with the operator
//! token and approves it; the API then says the finding is waived. With `NETPATROL_BLESS=1`
//! the test saves the screenshots of docs/rectification.md (`docs/rectification-page.zh.png`,
//! `docs/operator-page.zh.png`).
//!
//! Without /usr/bin/chromium or /usr/bin/chromedriver the test fails and says what to install
//! (.ci/run installs both). chromedriver listens on 127.0.0.1 (it cannot bind elsewhere) on a
//! port chosen free; every address the browser and netpatrol talk to is in 127.120.0.0/16.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::support::smtp::{Part, SmtpSink};
use crate::support::tls::Pki;

const TOKEN_ENV: &str = "NETPATROL_BROWSER_TEST_TOKEN";
const TOKEN: &str = "operator-token-of-the-browser-test";
const LINK_KEY: &str = "link-key-of-the-browser-test-0123456789abcdef";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A Debian-packaged program the test needs; a clear failure when it is missing.
fn require(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: install Debian's `chromium` and `chromium-driver` packages \
         (apt-get install chromium chromium-driver), as .ci/run does"
    );
    p
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A port free on `addr` right now.
fn free_port(addr: &str) -> u16 {
    TcpListener::bind((ip(addr), 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Listeners on 127.120.1.1-.3, one port for all.
fn services() -> (u16, Vec<TcpListener>) {
    for _ in 0..20 {
        let first = TcpListener::bind((ip("127.120.1.1"), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let rest: Result<Vec<_>, _> = (2..=3)
            .map(|h| TcpListener::bind((ip(&format!("127.120.1.{h}")), port)))
            .collect();
        if let Ok(mut rest) = rest {
            rest.insert(0, first);
            return (port, rest);
        }
    }
    panic!("no port free on all three addresses");
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn netpatrol(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netpatrol"))
        .args(args)
        .current_dir(dir)
        .env("NETPATROL_LINK_KEY", LINK_KEY)
        .env_remove("NETPATROL_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A WebDriver session of a headless Chromium.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: Killed,
}

impl Browser {
    async fn start(dir: &Path) -> Browser {
        let chromium = require("/usr/bin/chromium");
        let chromedriver = require("/usr/bin/chromedriver");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_port("127.0.0.1");
        let driver = Killed(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!(
                    "--log-path={}",
                    dir.join("chromedriver.log").display()
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r
                    .text()
                    .await
                    .unwrap_or_default()
                    .contains("\"ready\":true"),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(Instant::now() < end, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let profile = dir.join("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--no-first-run", "--no-default-browser-check", "--lang=zh-CN",
                    "--window-size=820,1100",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "prefs": {"intl.accept_languages": "zh-CN,zh"},
            },
        }}});
        let reply: Value = serde_json::from_str(
            &http
                .post(format!("{base}/session"))
                .body(caps.to_string())
                .send()
                .await
                .expect("new session")
                .text()
                .await
                .unwrap(),
        )
        .unwrap();
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {reply}"))
            .to_string();
        Browser {
            http,
            base,
            session,
            _driver: driver,
        }
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, &url);
        if let Some(b) = body {
            request = request
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let text = request
            .send()
            .await
            .expect("webdriver")
            .text()
            .await
            .unwrap();
        let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(error) = reply["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", reply["value"]["message"]);
        }
        reply["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn value_of(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{e}/property/value"),
            None,
        )
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    /// Type `day` (YYYY-MM-DD) into a date input as a person would, field by field. The
    /// fields' order is the browser's locale's (month, day, year in a headless
    /// Chromium that ignores `--lang`; year, month, day for zh-CN): both are tried.
    async fn type_date(&self, css: &str, day: &str) {
        let p: Vec<&str> = day.split('-').collect();
        let tab = "\u{E004}";
        let orders = [
            // Two-digit fields move on by themselves; the year (up to six digits) does not.
            format!("{}{}{}", p[1], p[2], p[0]),
            format!("{}{tab}{}{}", p[0], p[1], p[2]),
        ];
        for keys in &orders {
            let e = self.find(css).await;
            self.cmd(
                reqwest::Method::POST,
                &format!("/element/{e}/clear"),
                Some(json!({})),
            )
            .await;
            self.type_into(css, keys).await;
            if self.value_of(css).await == day {
                return;
            }
        }
        panic!(
            "the date input did not take {day}: {:?}",
            self.value_of(css).await
        );
    }

    /// Reload `url` until its source contains `text`.
    async fn wait_for(&self, url: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            self.goto(url).await;
            let source = self.source().await;
            if ok(&source) {
                return source;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; page:\n{source}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Save a screenshot (PNG) to `path`.
    async fn screenshot(&self, path: &Path) {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Best effort: the driver's process is killed right after anyway.
        let url = format!("{}/session/{}", self.base, self.session);
        let http = self.http.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                let _ = rt.block_on(async { http.delete(url).send().await });
            }
        })
        .join();
    }
}

/// The form of `answer` (done, waiver, dispute) on item `fingerprint`: a CSS selector prefix.
fn form(fingerprint: &str, answer: &str) -> String {
    format!(
        "form:has(input[name=\"item\"][value=\"{fingerprint}\"]):has(input[name=\"answer\"][value=\"{answer}\"])"
    )
}

fn details(fingerprint: &str, answer: &str) -> String {
    format!(
        "details:has(input[name=\"item\"][value=\"{fingerprint}\"]):has(input[name=\"answer\"][value=\"{answer}\"]) > summary"
    )
}

fn texts(part: &Part) -> Vec<String> {
    let children = part.children();
    if children.is_empty() {
        return vec![String::from_utf8_lossy(&part.decoded()).into_owned()];
    }
    children.iter().flat_map(texts).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_answers_in_a_real_browser_and_the_operator_approves_a_waiver() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mut held) = services();
    let pki = Pki::new("netpatrol browser test CA");
    let sink = SmtpSink::start("127.120.0.1:0".parse().unwrap(), &pki).await;
    let listen: SocketAddr = format!("127.120.0.1:{}", free_port("127.120.0.1"))
        .parse()
        .unwrap();
    let yaml = format!(
        r#"organisation: {{name: 海陵区政府办(大数据管理局), timezone: Asia/Shanghai}}
store: {{path: netpatrol.db}}
scan: {{icmp: false, ports: [{port}], timeout_ms: 500, banner_timeout_ms: 150, dns: {{enabled: false}}}}
departments:
  - {{id: fgw, name: 区发改委, emails: [it@fgw.example.gov.cn]}}
segments:
  - {{name: dept-fgw, network: departmental, cidrs: [127.120.1.0/29], department: fgw}}
approvals:
  - {{id: HLSP-2026-031, department: fgw, segment: dept-fgw, addresses: [127.120.1.0/29], ports: [22], approved_on: 2026-01-10}}
daemon: {{listen: "{listen}", api_token_env: {TOKEN_ENV}, public_url: "http://{listen}"}}
bulletin: {{out_dir: out, cron: "0 9 1 1 *"}}
smtp: {{host: 127.120.0.1, port: {}, security: none, from: "网络安全巡检 <netpatrol@example.gov.cn>"}}
"#,
        sink.addr.port()
    );
    let config = dir.path().join("netpatrol.yaml");
    std::fs::write(&config, yaml).unwrap();
    let cfg = config.to_str().unwrap();

    // A scan finds the three unapproved services; the bulletin mails the department's notice.
    let (code, out) = netpatrol(dir.path(), &["scan", "-c", cfg, "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let month = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m")
        .to_string();
    let (code, out) = netpatrol(
        dir.path(),
        &["bulletin", "-c", cfg, "--period", &month, "--send"],
    );
    assert_eq!(code, 0, "{out}");
    let notice = sink
        .messages()
        .into_iter()
        .find(|m| m.rcpt.iter().any(|r| r == "it@fgw.example.gov.cn"))
        .expect("the notice reached the sink");
    let text = texts(&Part::parse(&notice.data)).join("\n");
    let prefix = format!("http://{listen}/r/");
    let at = text.find(&prefix).expect("the notice carries the link");
    let link: String = text[at..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .unwrap()
        .to_string();

    // The daemon serves the pages.
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let _daemon = Killed(
        Command::new(env!("CARGO_BIN_EXE_netpatrol"))
            .args(["daemon", "-c", cfg])
            .current_dir(dir.path())
            .env(TOKEN_ENV, TOKEN)
            .env("NETPATROL_LINK_KEY", LINK_KEY)
            .env("RUST_LOG", "netpatrol=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let findings = || async {
        let text = api
            .get(format!("http://{listen}/api/v1/findings"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        serde_json::from_str::<Value>(&text).ok()
    };
    let end = Instant::now() + Duration::from_secs(60);
    let list = loop {
        if let Some(v) = findings().await {
            break v;
        }
        assert!(
            Instant::now() < end,
            "the daemon did not come up:\n{}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let fingerprint = |list: &Value, addr: &str| -> String {
        list["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["ip"] == addr && f["port"] == port)
            .unwrap_or_else(|| panic!("no finding on {addr}:{port}: {list}"))["fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (stopped, running, waived) = (
        fingerprint(&list, "127.120.1.1"),
        fingerprint(&list, "127.120.1.2"),
        fingerprint(&list, "127.120.1.3"),
    );

    // .1's service is stopped; .2's keeps running.
    drop(held.remove(0));

    let browser = Browser::start(dir.path()).await;
    browser.goto(&link).await;
    let page = browser.source().await;
    assert!(page.contains("网络安全问题整改反馈"), "{page}");
    assert!(
        page.contains("区发改委") && page.contains("127.120.1.3"),
        "{page}"
    );

    // 已整改 on the stopped service: re-tested, 复测通过.
    browser.click(&details(&stopped, "done")).await;
    browser
        .type_into(
            &format!("{} textarea[name=\"note\"]", form(&stopped, "done")),
            "已关闭该服务",
        )
        .await;
    browser
        .click(&format!("{} button", form(&stopped, "done")))
        .await;
    assert!(browser.source().await.contains("反馈已收到"));
    let closed = format!("127.120.1.1:{port}");
    browser
        .wait_for(&link, "复测通过 on the stopped service", |s| {
            s.split("已复测通过的问题")
                .nth(1)
                .is_some_and(|after| after.contains("复测通过") && after.contains(&closed))
        })
        .await;

    // 已整改 on the running one: 整改未通过, still open.
    browser.click(&details(&running, "done")).await;
    browser
        .click(&format!("{} button", form(&running, "done")))
        .await;
    let page = browser
        .wait_for(&link, "整改未通过 on the running service", |s| {
            s.contains("整改未通过")
        })
        .await;
    assert!(
        page.contains(&format!("127.120.1.2:{port}")),
        "still listed"
    );

    // A waiver request on the third.
    let expiry = (chrono::Utc::now() + chrono::Duration::days(120))
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive()
        .to_string();
    browser.click(&details(&waived, "waiver")).await;
    browser
        .type_into(
            &format!("{} textarea[name=\"note\"]", form(&waived, "waiver")),
            "该端口为业务系统对外接口，正在办理入网审批变更",
        )
        .await;
    browser
        .type_date(
            &format!("{} input[name=\"expiry\"]", form(&waived, "waiver")),
            &expiry,
        )
        .await;
    browser
        .click(&format!("{} button", form(&waived, "waiver")))
        .await;
    let page = browser.source().await;
    assert!(page.contains("反馈已收到"), "{page}");
    assert!(
        page.contains("申请豁免") && page.contains("已收到，待处理"),
        "{page}"
    );
    let bless = std::env::var_os("NETPATROL_BLESS").is_some();
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    if bless {
        browser.goto(&link).await;
        browser
            .screenshot(&docs.join("rectification-page.zh.png"))
            .await;
    }

    // The operator page: the login form, the operator token, the request, the approval.
    let operator = format!("http://{listen}/operator");
    browser.goto(&operator).await;
    assert!(browser.source().await.contains("操作员登录"));
    browser.type_into("input[name=\"token\"]", TOKEN).await;
    browser
        .click("form[action=\"/operator/login\"] button")
        .await;
    let page = browser.source().await;
    assert!(page.contains("待处理的申请（1）"), "{page}");
    assert!(
        page.contains("正在办理入网审批变更") && page.contains(&expiry),
        "{page}"
    );
    if bless {
        browser.screenshot(&docs.join("operator-page.zh.png")).await;
    }
    let approve = "form:has(input[name=\"action\"][value=\"approve\"])";
    browser
        .click("details:has(input[name=\"action\"][value=\"approve\"]) > summary")
        .await;
    browser
        .type_into(&format!("{approve} input[name=\"approver\"]"), "张伟")
        .await;
    assert_eq!(
        browser
            .value_of(&format!("{approve} input[name=\"expires_on\"]"))
            .await,
        expiry,
        "the proposed expiry is the default"
    );
    browser.click(&format!("{approve} button")).await;
    let page = browser.source().await;
    assert!(
        page.contains("已处理") && page.contains("豁免已批准"),
        "{page}"
    );
    assert!(page.contains("待处理的申请（0）"), "{page}");

    // The finding is waived (approver, expiry); the department's list no longer has it.
    let list = findings().await.unwrap();
    let f = list["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fingerprint"] == waived.as_str())
        .unwrap()
        .clone();
    assert_eq!(f["state"], "waived", "{f}");
    assert_eq!(f["waiver"]["approver"], "张伟", "{f}");
    assert_eq!(f["waiver"]["expires_on"], expiry.as_str(), "{f}");
    browser.goto(&link).await;
    let page = browser.source().await;
    assert!(!page.contains(&format!("127.120.1.3:{port}")), "{page}");
    drop(held);
}
