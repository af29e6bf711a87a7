//! The configuration loader: the shipped example, a fixture full of mistakes with its exact
//! messages, CSV registers in every encoding Excel writes, ports and removed keys.

use std::path::{Path, PathBuf};

use netpatrol::config::{self, Asset, NetworkKind, ProjectStage, SmtpSecurity};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The problems of a failed load, one a line, paths relative to the crate root.
fn problems(result: Result<config::Config, config::ConfigErrors>) -> String {
    let errors = match result {
        Ok(_) => panic!("expected problems, the config loaded"),
        Err(errors) => errors,
    };
    let prefix = format!("{}/", root().display());
    errors.to_string().replace(&prefix, "")
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netpatrol-config-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A minimal valid config around `rest`.
const SEGMENTS: &str =
    "segments:\n  - {name: extranet-a, network: extranet, cidrs: [192.0.2.0/24]}\n";

#[test]
fn example_config_loads() {
    let path = root().join("config/example.yaml");
    let config = match config::load(&path) {
        Ok(config) => config,
        Err(errors) => panic!("example config has problems:\n{errors}"),
    };
    assert_eq!(config.organisation.name, "海陵区政府办(大数据管理局)");
    assert_eq!(config.organisation.timezone, chrono_tz::Asia::Shanghai);
    assert_eq!(config.store.path, root().join("config/netpatrol.db"));
    assert_eq!(config.departments.len(), 5);
    assert_eq!(config.department("wjw").unwrap().name, "区卫生健康委员会");
    let segment = config.segment("wjw-private").unwrap();
    assert_eq!(segment.network, NetworkKind::Departmental);
    assert_eq!(segment.consolidate_by.unwrap().to_string(), "2026-12-31");
    assert!(
        config
            .segment("extranet-a")
            .unwrap()
            .contains("192.0.2.10".parse().unwrap())
    );
    assert!(
        !config
            .segment("extranet-a")
            .unwrap()
            .contains("192.0.2.254".parse().unwrap())
    );

    // Approvals come from the CSV register (UTF-8 with BOM, Chinese list separators).
    assert_eq!(config.approvals.len(), 4);
    let first = &config.approvals[0];
    assert_eq!(first.id, "HLSP-2025-001");
    assert_eq!(first.addresses.len(), 2);
    assert_eq!(first.ports, Some(vec![22, 443]));
    assert_eq!(config.approvals[1].ports, Some(vec![443, 8443]));
    assert_eq!(config.approvals[1].expires_on, None);
    assert_eq!(config.approvals[2].ports, None);

    let project = &config.projects[0];
    assert_eq!(project.stage, ProjectStage::InUse);
    assert_eq!(project.mlps.as_ref().unwrap().level, 3);
    assert_eq!(project.assets[1], Asset::Name("xmsb.example.gov.cn".into()));

    let ports = &config.scan.ports;
    assert!(ports.windows(2).all(|w| w[0] < w[1]));
    assert!(ports.contains(&3389) && ports.contains(&8005) && ports.contains(&2376));
    assert_eq!(config.scan.dns.nameservers.len(), 2);
    assert_eq!(
        config.scan.dns.nameservers[1],
        "192.0.2.53:53".parse().unwrap()
    );
    assert_eq!(
        config.daemon.listen,
        Some("127.0.0.1:9750".parse().unwrap())
    );
    assert_eq!(
        config.daemon.scans[1].segments,
        vec!["extranet-a".to_string()]
    );
    assert_eq!(config.bulletin.out_dir, root().join("config/bulletins"));
    let smtp = config.smtp.as_ref().unwrap();
    assert_eq!((smtp.port, smtp.security), (587, SmtpSecurity::StartTls));
}

#[test]
fn defaults_apply() {
    let config = config::load_str(SEGMENTS, Path::new("/etc/netpatrol/np.yaml")).unwrap();
    assert_eq!(config.organisation.name, "netpatrol");
    assert_eq!(config.store.path, Path::new("/etc/netpatrol/netpatrol.db"));
    assert_eq!(
        config.scan.ports,
        config::named_port_set("default").unwrap()
    );
    assert_eq!(
        (
            config.scan.rate,
            config.scan.concurrency,
            config.scan.retries
        ),
        (2000, 256, 1)
    );
    assert_eq!(config.scan.timeout.as_millis(), 1500);
    assert!(config.scan.dns.enabled);
    assert_eq!(config.daemon.api_token_env, "NETPATROL_API_TOKEN");
    assert_eq!(config.bulletin.lang, "zh");
    assert_eq!(
        config.bulletin.out_dir,
        Path::new("/etc/netpatrol/bulletins")
    );
    assert!(config.smtp.is_none());
}

#[test]
fn mistakes_fixture_reports_every_problem() {
    let path = root().join("tests/fixtures/config/mistakes.yaml");
    let expected = "\
tests/fixtures/config/mistakes.yaml:2:37: unknown timezone `Asia/Shanghia`\n\
tests/fixtures/config/mistakes.yaml:4:15: port `0` is out of range 1-65535\n\
tests/fixtures/config/mistakes.yaml:4:18: reversed port range `90-80`\n\
tests/fixtures/config/mistakes.yaml:4:27: unknown port set `web`: expected a port, a range A-B, or one of default, gov-high-risk, top-web, all\n\
tests/fixtures/config/mistakes.yaml:5:16: concurrency must be 1 to 65536, got 0\n\
tests/fixtures/config/mistakes.yaml:7:36: invalid email `it.example.gov.cn`: expected an address with `@`\n\
tests/fixtures/config/mistakes.yaml:8:10: duplicate department id `fgw` (first at line 7)\n\
tests/fixtures/config/mistakes.yaml:14:15: exclude `198.51.100.1` is outside segment `extranet-a`\n\
tests/fixtures/config/mistakes.yaml:15:21: `consolidate_by` applies only to departmental segments\n\
tests/fixtures/config/mistakes.yaml:18:13: cidr `192.0.2.128/25` of segment `extranet-b` overlaps `192.0.2.0/24` of segment `extranet-a` (line 13)\n\
tests/fixtures/config/mistakes.yaml:18:29: invalid cidr `203.0.113.300/24`\n\
tests/fixtures/config/mistakes.yaml:19:11: segment `dept` needs at least one cidr\n\
tests/fixtures/config/mistakes.yaml:20:14: departmental segment `dept` needs a `department`\n\
tests/fixtures/config/mistakes.yaml:23:14: unknown network `labnet`: expected one of extranet, metro, departmental, internet, other\n\
tests/fixtures/config/mistakes.yaml:25:17: unknown department `nosuch`\n\
tests/fixtures/config/mistakes.yaml:26:11: duplicate segment name `extranet-a` (first at line 11)\n\
tests/fixtures/config/mistakes.yaml:33:17: address `203.0.113.5` is outside segment `extranet-a`\n\
tests/fixtures/config/mistakes.yaml:35:17: `expires_on` 2025-01-01 is before `approved_on` 2025-03-01\n\
tests/fixtures/config/mistakes.yaml:37:17: unknown department `jxw`\n\
tests/fixtures/config/mistakes.yaml:38:14: unknown segment `nowhere`\n\
tests/fixtures/config/mistakes.yaml:39:18: invalid date `2025-02-30`: expected YYYY-MM-DD\n\
tests/fixtures/config/mistakes.yaml:45:18: `accepted_on` is set but stage `building` is not accepted yet\n\
tests/fixtures/config/mistakes.yaml:46:26: invalid asset `bad_host!`: expected an address or a host name\n\
tests/fixtures/config/mistakes.yaml:47:19: mlps level must be 1 to 5, got `7`\n\
tests/fixtures/config/mistakes.yaml:51:12: stage `in_use` needs `accepted_on`\n\
tests/fixtures/config/mistakes.yaml:55:12: unknown stage `live`: expected one of planned, building, trial, accepted, in_use, retired\n\
tests/fixtures/config/mistakes.yaml:57:11: invalid listen address `localhost`: expected ADDR:PORT\n\
tests/fixtures/config/mistakes.yaml:59:14: invalid cron `0 2 * *`: expected 5 or 6 fields\n\
tests/fixtures/config/mistakes.yaml:59:36: unknown segment `extranet-c`\n\
tests/fixtures/config/mistakes.yaml:60:18: unknown lang `fr`: expected zh or en\n\
tests/fixtures/config/mistakes.yaml:63:13: unknown security `ssl`: expected one of starttls, tls, none\n\
tests/fixtures/config/mistakes.yaml:64:9: invalid `from` `netpatrol`: expected an address with `@`";
    assert_eq!(problems(config::load(&path)), expected);
}

/// Departments CSV with Chinese names, a Chinese list separator and an empty cell.
const DEPARTMENTS_CSV: &str = "id,name,emails\n\
fgw,区发展和改革委员会,it@fgw.example.gov.cn；xxk@fgw.example.gov.cn\n\
rsj,区人力资源和社会保障局,\n";

fn load_departments_csv(name: &str, bytes: &[u8]) -> config::Config {
    let dir = scratch(name);
    std::fs::write(dir.join("departments.csv"), bytes).unwrap();
    let text = format!("departments: {{file: departments.csv}}\n{SEGMENTS}");
    let path = dir.join("netpatrol.yaml");
    std::fs::write(&path, text).unwrap();
    match config::load(&path) {
        Ok(config) => config,
        Err(errors) => panic!("{name}: {errors}"),
    }
}

#[test]
fn csv_registers_in_every_encoding() {
    let utf8 = DEPARTMENTS_CSV.as_bytes().to_vec();
    let bom = [b"\xef\xbb\xbf".as_slice(), &utf8].concat();
    let (gbk, _, unmappable) = encoding_rs::GB18030.encode(DEPARTMENTS_CSV);
    assert!(!unmappable);
    assert!(
        std::str::from_utf8(&gbk).is_err(),
        "the GBK bytes must not pass as UTF-8"
    );
    for (name, bytes) in [
        ("utf8", utf8.clone()),
        ("bom", bom),
        ("gbk", gbk.into_owned()),
    ] {
        let config = load_departments_csv(name, &bytes);
        let names: Vec<&str> = config.departments.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["区发展和改革委员会", "区人力资源和社会保障局"],
            "{name}"
        );
        assert_eq!(config.departments[0].emails.len(), 2, "{name}");
        assert!(config.departments[1].emails.is_empty(), "{name}");
    }
}

#[test]
fn bad_csv_rows_name_row_and_column_and_the_rest_loads() {
    let dir = scratch("bad-rows");
    let csv = "\
id,name,department,stage,accepted_on,assets,mlps.level,mlps.assessed_on
XM-1,系统一,fgw,in_use,2024-12-01,192.0.2.10;xmsb.example.gov.cn,3,2025-10-10
XM-2,系统二,fgw,in_use,2024-13-01,,,
XM-3,,fgw,planned,,,,
XM-4,系统四,jxw,trial,,192.0.2.11,9,
XM-1,系统五,fgw,retired,,,,
";
    std::fs::write(dir.join("projects.csv"), csv).unwrap();
    std::fs::write(
        dir.join("departments.yaml"),
        "# departments\n- id: fgw\n  name: 区发改委\n  emails: [nobody]\n",
    )
    .unwrap();
    let text = format!(
        "departments: {{file: departments.yaml}}\nprojects: {{file: projects.csv}}\n{SEGMENTS}"
    );
    let path = dir.join("netpatrol.yaml");
    std::fs::write(&path, text).unwrap();
    let d = dir.display();
    let expected = format!(
        "\
{d}/departments.yaml:4:12: invalid email `nobody`: expected an address with `@`
{d}/projects.csv:3: column `accepted_on`: invalid date `2024-13-01`: expected YYYY-MM-DD
{d}/projects.csv:4: missing field `name`
{d}/projects.csv:5: column `department`: unknown department `jxw`
{d}/projects.csv:5: column `mlps.level`: mlps level must be 1 to 5, got `9`
{d}/projects.csv:6: column `id`: duplicate project id `XM-1` (first at line 2)"
    );
    assert_eq!(problems(config::load(&path)), expected);
}

#[test]
fn unknown_csv_column_is_named() {
    let dir = scratch("bad-header");
    std::fs::write(
        dir.join("departments.csv"),
        "id,name,mail\nfgw,区发改委,it@fgw.example.gov.cn\n",
    )
    .unwrap();
    let path = dir.join("netpatrol.yaml");
    std::fs::write(
        &path,
        format!("departments: {{file: departments.csv}}\n{SEGMENTS}"),
    )
    .unwrap();
    assert_eq!(
        problems(config::load(&path)),
        format!(
            "{}/departments.csv:1: unknown column `mail`: expected id, name, emails, leader_emails",
            dir.display()
        )
    );
}

#[test]
fn missing_register_file_points_at_its_name() {
    let dir = scratch("missing-register");
    let path = dir.join("netpatrol.yaml");
    let text = format!("{SEGMENTS}approvals: {{file: nowhere.csv}}\n");
    assert_eq!(
        problems(config::load_str(&text, &path)),
        format!(
            "{d}/netpatrol.yaml:3:19: cannot read register file `{d}/nowhere.csv`: no such file or directory",
            d = dir.display()
        )
    );
}

#[test]
fn unknown_key_is_rejected_with_its_position() {
    let text = format!("{SEGMENTS}scan:\n  icmp: true\n  prots: [22]\n");
    let got = problems(config::load_str(&text, Path::new("np.yaml")));
    assert!(
        got.starts_with("np.yaml:5:3: unknown field `prots`, expected one of"),
        "{got}"
    );
    assert_eq!(got.lines().count(), 1);
}

#[test]
fn missing_segments_and_empty_files() {
    for text in ["", "# nothing yet\n", "organisation: {name: 测试}\n"] {
        assert_eq!(
            problems(config::load_str(text, Path::new("np.yaml"))),
            "np.yaml: missing required key `segments`",
            "{text:?}"
        );
    }
}

#[test]
fn secrets_are_refused_with_a_specific_message() {
    let text = format!(
        "{SEGMENTS}smtp:\n  host: smtp.example.gov.cn\n  from: np@example.gov.cn\n  password: hunter2\n\
         daemon:\n  api_token: abc\n"
    );
    assert_eq!(
        problems(config::load_str(&text, Path::new("np.yaml"))),
        "np.yaml:6:13: secrets are not read from the config: use password_env\n\
         np.yaml:8:14: secrets are not read from the config: use api_token_env"
    );
}

#[test]
fn scan_ports() {
    let load = |ports: &str| {
        let text = format!("{SEGMENTS}scan:\n  ports: {ports}\n");
        config::load_str(&text, Path::new("np.yaml"))
    };
    assert_eq!(
        load("[443, 22, \"8000-8002\", 22]").unwrap().scan.ports,
        [22, 443, 8000, 8001, 8002]
    );
    assert_eq!(
        load("gov-high-risk").unwrap().scan.ports,
        config::named_port_set("gov-high-risk").unwrap()
    );
    assert_eq!(load("all").unwrap().scan.ports.len(), 65535);
    assert_eq!(load("[top-web, 80]").unwrap().scan.ports.len(), 10);
    assert_eq!(load("3389").unwrap().scan.ports, [3389]);
    assert_eq!(
        problems(load("[0, 65536, \"9-8\", nope]")),
        "np.yaml:4:11: port `0` is out of range 1-65535\n\
         np.yaml:4:14: port `65536` is out of range 1-65535\n\
         np.yaml:4:21: reversed port range `9-8`\n\
         np.yaml:4:28: unknown port set `nope`: expected a port, a range A-B, or one of default, gov-high-risk, top-web, all"
    );
    assert_eq!(
        problems(load("\"8000-\"")),
        "np.yaml:4:10: invalid port `8000-`"
    );
}

#[test]
fn yaml_errors_stop_that_file_only_with_a_position() {
    let got = problems(config::load_str(
        &format!("{SEGMENTS}scan: {{rate: fast}}\n"),
        Path::new("np.yaml"),
    ));
    assert!(got.starts_with("np.yaml:3:"), "{got}");
    assert_eq!(got.lines().count(), 1);
    assert!(!got.contains(" at line "), "{got}");
}

#[test]
fn garbage_never_panics() {
    let inputs = [
        "[",
        "{",
        "segments: 3",
        "segments: {file: 3}",
        "segments: [3]",
        "segments: [{}]",
        "segments: {file: a.txt}",
        "- a\n- b",
        "\u{0}",
        "segments:\n  - name: a\n    network: [x]\n",
        "departments: [{id: a, name: b, emails: x}]\nsegments: []",
        "scan: {ports: {a: 1}}\nsegments: []",
        "scan: {ports: [[1]]}\nsegments: []",
        "scan: {concurrency: -1}\nsegments: []",
        "smtp: {port: 99999, host: h, from: a@b}\nsegments: []",
    ];
    for input in inputs {
        let _ = config::load_str(input, Path::new("np.yaml"));
    }
}

/// `netpatrol check-config -c PATH` run from the crate root, without any API token in the
/// environment: exit code, stdout, stderr.
fn check_config(path: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netpatrol"))
        .current_dir(root())
        .arg("check-config")
        .arg("-c")
        .arg(path)
        .env_remove("NETPATROL_CONFIG")
        .env_remove("NETPATROL_API_TOKEN")
        .env_remove("NETPATROL_API_TOKEN_FILE")
        .output()
        .expect("run netpatrol check-config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `*.yaml` of a fixture folder (relative to the crate root), in name order.
fn fixtures(folder: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join(folder))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.strip_prefix(root()).unwrap().to_path_buf())
        .collect();
    paths.sort();
    paths
}

fn expected_beside(fixture: &Path) -> String {
    let path = root().join(fixture.with_extension("expected"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: no expected output: {e}", path.display()))
}

#[test]
fn every_bad_fixture_prints_exactly_its_expected_problems_and_exits_64() {
    let all = fixtures("tests/fixtures/config");
    assert!(all.len() >= 11, "fixtures: {all:?}");
    for fixture in all {
        let (code, stdout, stderr) = check_config(&fixture);
        let name = fixture.display();
        assert_eq!(code, 64, "{name}: exit code; stderr:\n{stderr}");
        assert_eq!(stdout, "", "{name}");
        assert_eq!(stderr, expected_beside(&fixture), "{name}");
        assert!(stderr.ends_with('\n'), "{name}: stderr ends with a newline");
        let lines: Vec<&str> = stderr.lines().collect();
        let unique: std::collections::BTreeSet<&&str> = lines.iter().collect();
        assert_eq!(unique.len(), lines.len(), "{name}: a problem printed twice");
        for line in &lines {
            assert!(
                line.starts_with("tests/fixtures/config/") || line.starts_with("/dev/"),
                "{name}: {line} names no file"
            );
            assert!(!line.ends_with("(used"), "{name}: dangling alias message");
        }
    }
}

#[test]
fn accepted_fixtures_exit_0_and_print_only_their_warnings() {
    let all = fixtures("tests/fixtures/config/ok");
    assert!(all.len() >= 3, "fixtures: {all:?}");
    for fixture in all {
        let (code, stdout, stderr) = check_config(&fixture);
        let name = fixture.display();
        assert_eq!(code, 0, "{name}: stderr:\n{stderr}");
        assert!(
            stdout.starts_with(&format!("{name}: ok (")),
            "{name}: {stdout}"
        );
        assert_eq!(stderr, expected_beside(&fixture), "{name}");
    }
}

#[test]
fn five_mistakes_in_five_sections_are_all_reported() {
    let (code, _, stderr) = check_config(Path::new("tests/fixtures/config/five-mistakes.yaml"));
    assert_eq!(code, 64);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    // One per section, each at the line of its mistake: scan, segments, bulletin, trust, smtp.
    let at = |line: &str| {
        line.split(':')
            .nth(1)
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap()
    };
    assert_eq!(
        lines.iter().map(|l| at(l)).collect::<Vec<_>>(),
        [3, 5, 7, 9, 12]
    );
    for (line, what) in lines.iter().zip([
        "unknown field `colour`",
        "invalid cidr `127.77.2.0/33`",
        "invalid cron `99 99 * * *`",
        "cannot read CA file",
        "port `0` is out of range",
    ]) {
        assert!(line.contains(what), "{line} should say {what}");
    }
}

#[test]
fn ipv4_mapped_segment_beside_an_ipv4_exclude_is_refused_as_overlapping() {
    let text = "\
segments:
  - {name: lab-v4, network: extranet, cidrs: [127.111.0.0/24], exclude: [127.111.0.20]}
  - {name: lab-mapped, network: extranet, cidrs: [\"::ffff:127.111.0.16/124\"]}
";
    assert_eq!(
        problems(config::load_str(text, Path::new("np.yaml"))),
        "np.yaml:3:51: cidr `::ffff:127.111.0.16/124` of segment `lab-mapped` overlaps `127.111.0.0/24` of segment `lab-v4` (line 2)"
    );
}

#[test]
fn ipv4_mapped_addresses_are_scoped_as_ipv4_and_keep_their_excludes() {
    let path = root().join("tests/fixtures/config/ok/mapped-exclude.yaml");
    let config = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let segment = config.segment("lab-mapped").unwrap();
    assert_eq!(segment.cidrs, ["127.111.0.16/28".parse().unwrap()]);
    let scope = netpatrol::scope::Scope::new(&config.segments);
    let targets: Vec<std::net::IpAddr> = scope.targets().unwrap().iter().map(|t| t.ip()).collect();
    assert!(!targets.is_empty());
    assert!(targets.iter().all(|ip| ip.is_ipv4()), "{targets:?}");
    assert!(
        !targets.contains(&"127.111.0.20".parse().unwrap()),
        "{targets:?}"
    );
    // Asked for in either spelling, the excluded address is no target; another one is, as IPv4.
    for excluded in ["127.111.0.20", "::ffff:127.111.0.20"] {
        assert!(
            scope.target(excluded.parse().unwrap()).is_none(),
            "{excluded}"
        );
    }
    let target = scope
        .target("::ffff:127.111.0.21".parse().unwrap())
        .unwrap();
    assert_eq!(
        target.ip(),
        "127.111.0.21".parse::<std::net::IpAddr>().unwrap()
    );
}

#[test]
fn the_compile_step_checks_rules_and_secrets_after_the_config() {
    // The config validates; the rules stage finds the override of a rule that does not exist.
    let text = format!("{SEGMENTS}rules:\n  overrides:\n    tls.cert_expird: {{severity: low}}\n");
    let problems = config::Loaded::compile_str(&text, Path::new("np.yaml")).unwrap_err();
    let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        lines,
        ["np.yaml:5:5: override of unknown rule `tls.cert_expird`"]
    );

    // A listener whose token variable is not set: compiled, with a warning.
    let text = format!(
        "{SEGMENTS}daemon:\n  listen: 127.111.0.1:9750\n  api_token_env: NETPATROL_TEST_NEVER_SET\n"
    );
    let loaded = config::Loaded::compile_str(&text, Path::new("np.yaml")).unwrap();
    assert!(loaded.access.operator.is_none());
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0]
            .message
            .starts_with("warning: daemon.listen is set")
    );
    assert_eq!(loaded.schedule.scans.len(), 0);
}

/// One HTTP GET over loopback; the status code, or `None` when nothing answers.
fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    assert!(addr.ip().is_loopback());
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn the_daemon_runs_what_check_config_accepts_and_refuses_a_reload_it_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netpatrol.yaml");
    let port = std::net::TcpListener::bind("127.111.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.111.0.1")
        .port();
    let addr: std::net::SocketAddr = format!("127.111.0.1:{port}").parse().unwrap();
    let good = format!(
        "segments:\n  - {{name: lab, network: extranet, cidrs: [127.111.1.0/30]}}\n\
         daemon:\n  listen: {addr}\n  api_token_env: NETPATROL_CONFIG_TEST_TOKEN\n"
    );
    std::fs::write(&path, &good).unwrap();
    let (code, _, stderr) = check_config(&path);
    assert_eq!(code, 0, "{stderr}");

    let log_path = dir.path().join("daemon.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_netpatrol"))
        .arg("daemon")
        .arg("-c")
        .arg(&path)
        .env("NETPATROL_CONFIG_TEST_TOKEN", "config-test-token")
        .env("RUST_LOG", "netpatrol=info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start the daemon");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until("the daemon's /healthz", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("daemon exited ({status}):\n{}", log());
        }
        (http_status(addr, "/healthz") == Some(200)).then_some(())
    });

    // A config check-config rejects: the reload is refused with the very same lines.
    let bad = format!(
        "{good}scan:\n  colour: blue\nbulletin: {{cron: \"99 99 * * *\"}}\ntrust: {{ca_files: [missing.pem]}}\n"
    );
    std::fs::write(&path, bad).unwrap();
    let (code, _, expected) = check_config(&path);
    assert_eq!(code, 64, "{expected}");
    assert_eq!(expected.lines().count(), 3, "{expected}");
    let hup = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(hup.success());
    wait_until("the reload to be refused", || {
        log()
            .contains("reload rejected; the previous configuration stays in force")
            .then_some(())
    });
    let logged = log();
    for line in expected.lines() {
        assert!(
            logged.contains(line),
            "not in the daemon's log: {line}\n{logged}"
        );
    }
    assert_eq!(http_status(addr, "/healthz"), Some(200), "still serving");

    let term = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(term.success());
    let status = wait_until("the daemon to stop", || child.try_wait().unwrap());
    assert!(status.success(), "exit {status}:\n{}", log());
}

#[test]
fn trust_anchors_check_config_accepts_load_into_the_tls_trust_store() {
    // RSA, EC and SM2 roots: what the compile step accepts, the TLS probe's store takes too.
    let path = root().join("tests/fixtures/config/ok/trust-roots.yaml");
    let loaded = config::Loaded::compile(&path).unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(loaded.config.trust.ca_files.len(), 3);
    let trust = netpatrol::probe::tls::Trust::from_pem_files(&loaded.config.trust.ca_files)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(trust.extra, 3);
}

#[test]
fn an_error_chain_prints_each_cause_once() {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot open store /var/lib/netpatrol.db: {source}")]
    struct Open {
        source: std::io::Error,
    }
    let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
    let error = anyhow::Error::new(Open { source: io }).context("scan failed");
    assert_eq!(
        netpatrol::app::error_chain(&error),
        "scan failed: cannot open store /var/lib/netpatrol.db: permission denied"
    );
}

#[test]
fn store_url_is_parsed_only_and_refused_with_its_position() {
    let load = |store: &str| config::load_str(&format!("{SEGMENTS}{store}"), Path::new("np.yaml"));
    let ok = load(
        "store:\n  url: postgres://netpatrol@127.116.0.1:1/np\n  password_env: NP_PG_PASSWORD\n",
    )
    .unwrap();
    assert_eq!(
        ok.store.url.as_deref(),
        Some("postgres://netpatrol@127.116.0.1:1/np")
    );
    assert_eq!(ok.store.password_env.as_deref(), Some("NP_PG_PASSWORD"));
    assert_eq!(ok.store.describe(), "postgres://netpatrol@127.116.0.1:1/np");
    assert!(
        load("").unwrap().store.url.is_none(),
        "SQLite stays the default"
    );

    assert_eq!(
        problems(load("store: {url: \"mysql://root@127.116.0.1/np\"}\n")),
        "np.yaml:3:14: unsupported store url scheme `mysql`: expected postgres://USER@HOST:PORT/DATABASE (a SQLite store is store.path)"
    );
    assert_eq!(
        problems(load(
            "store: {path: np.db, url: \"postgres://np@127.116.0.1/np\"}\n"
        )),
        "np.yaml:3:27: store: give either path (SQLite) or url (PostgreSQL), not both"
    );
    let refused = problems(load(
        "store:\n  url: postgres://np:hunter2@127.116.0.1/np\n",
    ));
    assert_eq!(
        refused,
        "np.yaml:4:8: secrets are not read from the config: remove the password from store.url and use store.password_env"
    );
    assert!(!refused.contains("hunter2"));
    assert_eq!(
        problems(load("store: {path: np.db, password_env: NP_PG_PASSWORD}\n")),
        "np.yaml:3:36: store.password_env is only for a PostgreSQL store (store.url)"
    );
    assert_eq!(
        problems(load("store: {url: not a url}\n")),
        "np.yaml:3:14: invalid store url: expected postgres://USER@HOST:PORT/DATABASE"
    );

    // The compile step (check-config) tries nothing on the network: nothing listens on
    // 127.116.0.1:1, and the config compiles, with a warning for the unset password variable.
    let loaded = config::Loaded::compile_str(
        &format!(
            "{SEGMENTS}store:\n  url: postgres://netpatrol@127.116.0.1:1/np\n  password_env: NETPATROL_TEST_NEVER_SET\n"
        ),
        Path::new("np.yaml"),
    )
    .unwrap();
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "np.yaml: warning: store.password_env names NETPATROL_TEST_NEVER_SET, which is not set: opening the PostgreSQL store will fail"
        ]
    );
}

/// Every example config under `config/` (the district's, the demo's, a sensor's, a hub's, a
/// city hub's) loads: its keys, values, registers and cross-references hold. Secrets, token
/// variables and files outside the repository (certificates, the web config) are what a real
/// installation adds, so the full compile step is not run here.
#[test]
fn every_example_config_loads() {
    let dir = root().join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        seen += 1;
        if let Err(problems) = config::load(&path) {
            panic!("{} does not load:\n{problems}", path.display());
        }
    }
    assert!(seen >= 3, "examples found: {seen}");
}
