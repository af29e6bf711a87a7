//! Rules: the built-in pack, rule files with mistakes and their exact messages, overrides,
//! waivers and compliance settings, `needs`, evaluation and evidence.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use netpatrol::config::{self, Config};
use netpatrol::facts::{Facts, Locus, Subject};
use netpatrol::probe::ProbeKind;
use netpatrol::rules::{RuleSet, Severity};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const SEGMENTS: &str = "\
departments:
  - {id: fgw, name: 区发改委}
segments:
  - {name: extranet-a, network: extranet, cidrs: [192.0.2.0/24]}
projects:
  - {id: XM-1, name: 系统一, department: fgw, stage: planned}
";

/// Where the test configs pretend to live, so `rules.dirs` resolve into the fixtures.
fn config_path() -> PathBuf {
    root().join("tests/fixtures/rules/netpatrol.yaml")
}

fn config(yaml: &str) -> Config {
    match config::load_str(yaml, &config_path()) {
        Ok(c) => c,
        Err(errors) => panic!("test config does not load:\n{errors}"),
    }
}

fn rules(config: &Config) -> RuleSet {
    match RuleSet::load(config) {
        Ok(rules) => rules,
        Err(problems) => panic!("rules do not load:\n{}", lines(&problems)),
    }
}

fn lines(problems: &[config::Problem]) -> String {
    let prefix = format!("{}/", root().display());
    problems
        .iter()
        .map(|p| p.to_string().replace(&prefix, ""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn rule_problems(config: &Config) -> String {
    match RuleSet::load(config) {
        Ok(_) => panic!("expected problems, the rules loaded"),
        Err(problems) => lines(&problems),
    }
}

fn config_problems(yaml: &str) -> String {
    match config::load_str(yaml, &config_path()) {
        Ok(_) => panic!("expected problems, the config loaded"),
        Err(errors) => {
            let prefix = format!("{}/", root().display());
            errors.to_string().replace(&prefix, "")
        }
    }
}

/// CONTRACT.md §6, with the default severities.
const CONTRACT_IDS: &[(&str, Severity)] = &[
    ("access.unapproved_host", Severity::High),
    ("access.approval_expired", Severity::Medium),
    ("access.unapproved_service", Severity::Medium),
    ("access.approval_unused", Severity::Info),
    ("network.legacy_segment_active", Severity::Medium),
    ("project.live_before_acceptance", Severity::High),
    ("project.mlps_missing", Severity::High),
    ("project.mlps_overdue", Severity::High),
    ("project.crypto_missing", Severity::Medium),
    ("project.crypto_overdue", Severity::Medium),
    ("tls.cert_expired", Severity::High),
    ("tls.cert_expiring", Severity::Medium),
    ("tls.cert_self_signed", Severity::Medium),
    ("tls.cert_untrusted", Severity::Medium),
    ("tls.cert_hostname_mismatch", Severity::Medium),
    ("tls.weak_key", Severity::Medium),
    ("tls.weak_signature", Severity::Medium),
    ("tls.protocol_legacy", Severity::High),
    ("tls.weak_cipher", Severity::High),
    ("exposure.telnet", Severity::High),
    ("exposure.rdp", Severity::High),
    ("exposure.smb", Severity::High),
    ("exposure.database", Severity::High),
    ("exposure.docker_api", Severity::High),
    ("exposure.redis_unauthenticated", Severity::Critical),
    ("exposure.plaintext_login", Severity::High),
    ("exposure.directory_listing", Severity::High),
    ("http.no_https_redirect", Severity::Low),
    ("http.missing_hsts", Severity::Low),
];

#[test]
fn builtin_pack_loads_and_holds_every_contract_rule() {
    let set = rules(&config(SEGMENTS));
    for (id, severity) in CONTRACT_IDS {
        let rule = set.get(id).unwrap_or_else(|| panic!("{id} is missing"));
        assert_eq!(rule.severity, *severity, "{id}");
    }
    let crypto = set.get("crypto.no_sm_suite").unwrap();
    assert_eq!(
        (crypto.severity, crypto.subject),
        (Severity::Low, Subject::Project)
    );
    for id in [
        "exposure.elasticsearch_unauthenticated",
        "exposure.mongodb_unauthenticated",
        "exposure.memcached_unauthenticated",
        "exposure.kubelet_api",
        "exposure.vnc",
        "exposure.ftp",
        "exposure.admin_console",
    ] {
        assert!(set.get(id).is_some(), "{id} is missing");
    }
    for rule in set.rules() {
        assert!(!rule.basis.is_empty(), "{} has no basis", rule.id);
        for text in [&rule.title, &rule.description, &rule.remediation] {
            assert!(!text.zh.is_empty() && !text.en.is_empty(), "{}", rule.id);
        }
    }
    // The regulation is always cited by its full name.
    let access = set.get("access.unapproved_host").unwrap();
    assert_eq!(
        access.basis[0],
        "《海陵区政务信息化项目建设管理办法》第二十一条"
    );
    assert!(set.is_known("http.missing_hsts"));
}

#[test]
fn every_shipped_rule_file_is_embedded() {
    // A file added to rules/ but not to the BUILTIN list would silently never load.
    let set = rules(&config(SEGMENTS));
    let mut areas: BTreeSet<String> = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("rules")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let single = RuleSet::parse(&text, &path).unwrap_or_else(|p| panic!("{}", lines(&p)));
        let area = path.file_stem().unwrap().to_str().unwrap().to_string();
        for rule in single.rules() {
            assert!(set.get(&rule.id).is_some(), "{} is not embedded", rule.id);
            assert!(
                rule.id.starts_with(&format!("{area}.")),
                "{} is filed under {area}",
                rule.id
            );
        }
        areas.insert(area);
    }
    assert_eq!(
        areas.into_iter().collect::<Vec<_>>(),
        [
            "access", "crypto", "exposure", "http", "network", "project", "tls"
        ]
    );
}

#[test]
fn bad_rule_files_report_every_problem() {
    let c = config(&format!("{SEGMENTS}rules:\n  dirs: [bad]\n"));
    let f = "tests/fixtures/rules/bad/mistakes.yaml";
    let expected = format!(
        "\
{f}:9:18: rule `bad.unknown_fact`: unknown fact `host.colour`
{f}:20:32: rule `bad.wrong_type`: `lt` does not apply to `cert.key`, which is a string
{f}:21:40: rule `bad.wrong_type`: `equals` on `service.port` needs an integer, got `443`
{f}:22:39: rule `bad.wrong_type`: `regex` does not apply to `tls.versions`, which is a list
{f}:31:41: rule `bad.regex`: invalid regex `sha1(`: unclosed group
{f}:42:18: rule `bad.not_visible`: fact `service.name` belongs to a service and is not visible from subject `host`
{f}:44:20: rule `bad.not_visible`: fact `{{service.port}}` belongs to a service and is not visible from subject `host` in `evidence.zh`
{f}:44:52: rule `bad.not_visible`: unclosed `{{` (write `{{{{` for a literal brace) in `evidence.en`
{f}:46:9: duplicate rule id `tls.cert_expired` (first at rules/tls.yaml:4, built in)
{f}:48:15: rule `tls.cert_expired`: unknown severity `urgent`: expected one of critical, high, medium, low, info
{f}:49:18: rule `tls.cert_expired`: missing `description.en`
{f}:50:31: rule `tls.cert_expired`: empty `remediation.en`
{f}:51:14: rule `tls.cert_expired`: unknown subject `hosts`: expected one of host, service, segment, approval, project
{f}:52:11: rule `tls.cert_expired`: fact `host.approved` needs exactly one operator: equals, in, contains, regex, lt, le, gt, ge, exists, empty
{f}:55:9: duplicate rule id `bad.regex` (first at {f}:25)
{f}:61:11: rule `bad.regex`: `all` needs at least one condition
tests/fixtures/rules/bad/unknown-key.yaml:11:5: unknown field `severtiy`, expected one of id, title, severity, basis, description, remediation, deadline_days, subject, when, evidence"
    );
    assert_eq!(rule_problems(&c), expected);
}

#[test]
fn local_rules_load_after_the_pack_and_evaluate() {
    let set = rules(&config(&format!("{SEGMENTS}rules:\n  dirs: [local]\n")));
    let rule = set.get("local.ssh_on_extranet").unwrap();
    assert_eq!(rule.deadline_days, 10);
    assert_eq!(
        rule.due(NaiveDate::from_ymd_opt(2026, 1, 25).unwrap()),
        NaiveDate::from_ymd_opt(2026, 2, 4).unwrap()
    );
    assert_eq!(
        rule.needs,
        BTreeSet::from([ProbeKind::Tcp, ProbeKind::Banner])
    );
    assert_eq!(set.rules().last().unwrap().id, "local.ssh_on_extranet");

    let mut facts = Facts::new();
    facts.set("host.ip", "192.0.2.10");
    facts.set("host.network", "extranet");
    facts.set("host.approved", true);
    facts.set("service.port", 22i64);
    facts.set("service.name", "ssh");
    facts.set("service.approved", true);
    facts.set("service.banner", "SSH-2.0-OpenSSH_9.6");
    let hits = set.evaluate(Subject::Service, &facts);
    let ids: Vec<&str> = hits.iter().map(|h| h.rule.id.as_str()).collect();
    assert_eq!(ids, ["local.ssh_on_extranet"]);
    assert_eq!(
        hits[0].evidence.zh,
        "192.0.2.10:22 开放 SSH(SSH-2.0-OpenSSH_9.6)"
    );
    assert_eq!(
        hits[0].evidence.en,
        "192.0.2.10:22 offers SSH (SSH-2.0-OpenSSH_9.6)"
    );
    // Host rules are not evaluated against a service.
    assert!(set.evaluate(Subject::Host, &facts).is_empty());
}

#[test]
fn missing_rules_folder_is_a_config_problem() {
    assert_eq!(
        config_problems(&format!("{SEGMENTS}rules:\n  dirs: [nowhere]\n")),
        "tests/fixtures/rules/netpatrol.yaml:8:10: cannot read rules folder `tests/fixtures/rules/nowhere`: no such file or directory"
    );
}

#[test]
fn overrides_change_severity_and_disable() {
    let set = rules(&config(&format!(
        "{SEGMENTS}rules:\n  overrides:\n    tls.cert_expiring: {{severity: high}}\n    http.missing_hsts: {{enabled: false}}\n"
    )));
    assert_eq!(
        set.get("tls.cert_expiring").unwrap().severity,
        Severity::High
    );
    assert!(set.get("http.missing_hsts").is_none());
    assert!(set.is_known("http.missing_hsts"));
    assert!(set.rules().iter().all(|r| r.id != "http.missing_hsts"));

    let mut facts = Facts::new();
    facts.set("http.scheme", "https");
    facts.set("http.hsts", false);
    assert!(set.evaluate(Subject::Service, &facts).is_empty());
}

#[test]
fn unknown_override_and_unmatched_waiver_are_problems() {
    let c = config(&format!(
        "{SEGMENTS}rules:
  overrides:
    tls.cert_expring: {{severity: high}}
    http.missing_hsts: {{enabled: false}}
exceptions:
  - {{rule: exposure.telnet, reason: 改造中, approver: 张伟, expires_on: 2026-12-31}}
  - {{rule: \"exposur.*\", reason: 改造中, approver: 张伟, expires_on: 2026-12-31}}
  - {{rule: \"http.*\", reason: 改造中, approver: 张伟, expires_on: 2026-12-31}}
"
    ));
    assert_eq!(
        rule_problems(&c),
        "\
tests/fixtures/rules/netpatrol.yaml:9:5: override of unknown rule `tls.cert_expring`
tests/fixtures/rules/netpatrol.yaml:13:12: waiver rule `exposur.*` matches no rule"
    );
}

#[test]
fn override_problems_in_the_config() {
    assert_eq!(
        config_problems(&format!(
            "{SEGMENTS}rules:\n  overrides:\n    tls.cert_expiring: {{severity: urgent}}\n    tls.cert_expiring: {{enabled: false}}\n"
        )),
        "tests/fixtures/rules/netpatrol.yaml:10:5: duplicate key `tls.cert_expiring`"
    );
    assert_eq!(
        config_problems(&format!(
            "{SEGMENTS}rules:\n  overrides:\n    http.missing_hsts: {{enabled: no, colour: red}}\n"
        )),
        "tests/fixtures/rules/netpatrol.yaml:9:38: unknown field `colour`, expected one of severity, enabled"
    );
    assert_eq!(
        config_problems(&format!(
            "{SEGMENTS}rules:\n  overrides:\n    tls.cert_expiring: {{severity: urgent}}\n"
        )),
        "tests/fixtures/rules/netpatrol.yaml:9:35: unknown severity `urgent`: expected one of critical, high, medium, low, info"
    );
}

#[test]
fn needs_follow_the_facts_read() {
    let set = rules(&config(SEGMENTS));
    let needs = |id: &str| {
        set.get(id)
            .unwrap()
            .needs
            .iter()
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(needs("access.unapproved_host"), []);
    assert_eq!(needs("access.unapproved_service"), [ProbeKind::Tcp]);
    assert_eq!(needs("access.approval_unused"), [ProbeKind::Tcp]);
    assert_eq!(needs("network.legacy_segment_active"), [ProbeKind::Tcp]);
    assert_eq!(needs("project.mlps_missing"), []);
    assert_eq!(needs("tls.cert_expired"), [ProbeKind::Tls]);
    assert_eq!(needs("crypto.no_sm_suite"), [ProbeKind::Tls]);
    assert_eq!(needs("http.missing_hsts"), [ProbeKind::Http]);
    assert_eq!(needs("exposure.telnet"), [ProbeKind::Tcp]);
    assert_eq!(
        needs("exposure.redis_unauthenticated"),
        [ProbeKind::Tcp, ProbeKind::Banner]
    );
}

/// Facts of one service and its host, as reconciliation would build them.
fn service(name: &str, port: i64) -> Facts {
    let mut facts = Facts::new();
    facts.set("host.ip", "192.0.2.10");
    facts.set("host.segment", "extranet-a");
    facts.set("host.approved", true);
    facts.set("host.approval_expired", false);
    facts.set("service.port", port);
    facts.set("service.name", name);
    facts.set("service.approved", true);
    facts
}

fn fired(set: &RuleSet, subject: Subject, facts: &Facts) -> Vec<String> {
    set.evaluate(subject, facts)
        .into_iter()
        .map(|h| h.rule.id.clone())
        .collect()
}

#[test]
fn builtin_rules_fire_on_what_they_describe() {
    let set = rules(&config(SEGMENTS));

    let mut host = Facts::new();
    host.set("host.ip", "192.0.2.77");
    host.set("host.segment", "extranet-a");
    host.set("host.approved", false);
    host.set("host.approval_expired", false);
    // A host on a departmental network is not an access finding (its segment is).
    host.set("host.network", "departmental");
    assert!(set.evaluate(Subject::Host, &host).is_empty());
    host.set("host.network", "extranet");
    let hits = set.evaluate(Subject::Host, &host);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].rule.id, "access.unapproved_host");
    assert_eq!(
        hits[0].evidence.zh,
        "192.0.2.77(网段 extranet-a)未被任何入网审批覆盖"
    );
    host.set("host.approval_expired", true);
    host.set("host.approvals", vec!["HLSP-2024-017".to_string()]);
    assert_eq!(
        fired(&set, Subject::Host, &host),
        ["access.approval_expired"]
    );

    let mut redis = service("redis", 6379);
    redis.set("service.unauthenticated", true);
    assert_eq!(
        fired(&set, Subject::Service, &redis),
        ["exposure.redis_unauthenticated"]
    );
    // Not known whether it needs a password: the banner probe did not run.
    let redis = service("redis", 6379);
    assert!(fired(&set, Subject::Service, &redis).is_empty());

    let mut telnet = service("telnet", 23);
    telnet.set("service.approved", false);
    assert_eq!(
        fired(&set, Subject::Service, &telnet),
        ["access.unapproved_service", "exposure.telnet"]
    );
    assert_eq!(
        fired(&set, Subject::Service, &service("mysql", 3306)),
        ["exposure.database"]
    );

    let mut tls = service("https", 443);
    tls.set("cert.days_left", -3i64);
    tls.set("cert.self_signed", false);
    tls.set("cert.trusted", true);
    tls.set("cert.hostname_match", true);
    tls.set("cert.key", "RSA-1024");
    tls.set("cert.key_bits", 1024i64);
    tls.set("cert.signature", "sha1WithRSAEncryption");
    tls.set("cert.subject", "CN=xmsb.example.gov.cn");
    tls.set("tls.legacy_versions", vec!["TLSv1.0".to_string()]);
    tls.set("tls.weak_ciphers", Vec::<String>::new());
    tls.set("http.scheme", "https");
    tls.set("http.hsts", true);
    let hits = set.evaluate(Subject::Service, &tls);
    let ids: Vec<&str> = hits.iter().map(|h| h.rule.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "tls.cert_expired",
            "tls.weak_key",
            "tls.weak_signature",
            "tls.protocol_legacy"
        ]
    );
    assert_eq!(hits[3].evidence.en, "192.0.2.10:443 still accepts TLSv1.0");
    tls.set("cert.days_left", 30i64);
    tls.set("cert.key", "EC-P256");
    tls.set("cert.key_bits", 256i64);
    tls.set("cert.signature", "ecdsa-with-SHA256");
    tls.set("tls.legacy_versions", Vec::<String>::new());
    assert_eq!(fired(&set, Subject::Service, &tls), ["tls.cert_expiring"]);

    let mut project = Facts::new();
    project.set("project.id", "XM-2025-011");
    project.set("project.name", "社保业务经办系统");
    project.set("project.stage", "trial");
    project.set("project.live", true);
    project.set("project.live_assets", vec!["198.51.100.20".to_string()]);
    project.set("project.crypto_required", true);
    project.set("project.tls_endpoints", 2i64);
    project.set("project.sm_endpoints", 0i64);
    let hits = set.evaluate(Subject::Project, &project);
    let ids: Vec<&str> = hits.iter().map(|h| h.rule.id.as_str()).collect();
    assert_eq!(
        ids,
        ["project.live_before_acceptance", "crypto.no_sm_suite"]
    );
    assert_eq!(
        hits[0].evidence.zh,
        "项目“社保业务经办系统”(XM-2025-011)尚未验收(当前阶段:trial),资产 198.51.100.20 已在网运行"
    );

    let mut segment = Facts::new();
    segment.set("segment.name", "wjw-private");
    segment.set("segment.consolidation_overdue", true);
    segment.set("segment.live_hosts", 0i64);
    assert!(fired(&set, Subject::Segment, &segment).is_empty());
    segment.set("segment.live_hosts", 4i64);
    assert_eq!(
        fired(&set, Subject::Segment, &segment),
        ["network.legacy_segment_active"]
    );
}

#[test]
fn compliance_defaults_and_settings() {
    let defaults = config(SEGMENTS).compliance;
    assert_eq!(defaults, config::ComplianceSettings::default());
    assert_eq!(defaults.approval_unused_days, 30);
    assert_eq!(
        (1..=5)
            .map(|l| defaults.mlps_interval(l))
            .collect::<Vec<_>>(),
        [None, Some(24), Some(12), Some(6), Some(6)]
    );
    assert_eq!(
        (
            defaults.crypto_min_level,
            defaults.crypto_interval_months,
            defaults.resolve_after_scans
        ),
        (3, 12, 2)
    );

    let set = config(&format!(
        "{SEGMENTS}compliance:\n  approval_unused_days: 45\n  mlps_interval_months: {{1: 36, 3: 6}}\n  crypto_min_level: 2\n  crypto_interval_months: 24\n  resolve_after_scans: 3\n"
    ))
    .compliance;
    assert_eq!(set.approval_unused_days, 45);
    assert_eq!(
        (1..=5).map(|l| set.mlps_interval(l)).collect::<Vec<_>>(),
        [Some(36), Some(24), Some(6), Some(6), Some(6)]
    );
    assert_eq!(
        (
            set.crypto_min_level,
            set.crypto_interval_months,
            set.resolve_after_scans
        ),
        (2, 24, 3)
    );

    assert_eq!(
        config_problems(&format!(
            "{SEGMENTS}compliance:\n  approval_unused_days: 0\n  mlps_interval_months: {{6: 12, 2: 0}}\n  crypto_min_level: 9\n  resolve_after_scans: 0\n"
        )),
        "\
tests/fixtures/rules/netpatrol.yaml:8:25: approval_unused_days must be 1 to 3650, got 0
tests/fixtures/rules/netpatrol.yaml:9:26: mlps level must be 1 to 5, got 6
tests/fixtures/rules/netpatrol.yaml:9:36: mlps_interval_months must be 1 to 120, got 0
tests/fixtures/rules/netpatrol.yaml:10:21: crypto_min_level must be 1 to 5, got 9
tests/fixtures/rules/netpatrol.yaml:11:24: resolve_after_scans must be 1 to 100, got 0"
    );
}

#[test]
fn waivers_load_inline_and_match_their_scope() {
    let c = config(&format!(
        "{SEGMENTS}exceptions:
  - rule: exposure.telnet
    ip: 192.0.2.12
    port: 23
    reason: 业务系统改造中
    approver: 张伟
    expires_on: 2026-12-31
  - {{rule: \"tls.*\", segment: extranet-a, department: fgw, project: XM-1, reason: 证书更换中, approver: 李娜, expires_on: 2026-06-30}}
"
    ));
    rules(&c);
    let [telnet, tls] = c.exceptions.as_slice() else {
        panic!("{:?}", c.exceptions)
    };
    assert_eq!(telnet.ip, Some("192.0.2.12/32".parse().unwrap()));
    assert_eq!((telnet.port, telnet.approver.as_str()), (Some(23), "张伟"));
    assert!(telnet.matches_rule("exposure.telnet"));
    assert!(!telnet.matches_rule("exposure.telnet2"));
    assert!(tls.matches_rule("tls.cert_expired"));
    assert!(!tls.matches_rule("http.missing_hsts"));

    let at = |ip: &str, port| Locus {
        ip: Some(ip.parse().unwrap()),
        port,
        segment: Some("extranet-a".into()),
        department: Some("fgw".into()),
        ..Locus::of(if port.is_some() {
            Subject::Service
        } else {
            Subject::Host
        })
    };
    assert!(telnet.matches("exposure.telnet", &at("192.0.2.12", Some(23))));
    assert!(!telnet.matches("exposure.telnet", &at("192.0.2.12", Some(2323))));
    assert!(!telnet.matches("exposure.telnet", &at("192.0.2.13", Some(23))));
    assert!(!telnet.matches("exposure.telnet", &at("192.0.2.12", None)));
    let in_project = Locus {
        projects: vec!["XM-1".to_string()],
        ..at("192.0.2.40", Some(443))
    };
    assert!(tls.matches("tls.cert_expiring", &in_project));
    assert!(!tls.matches("tls.cert_expiring", &at("192.0.2.40", Some(443))));

    let day = |d| NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
    assert!(telnet.is_active(day(31)));
    assert!(!telnet.is_active(NaiveDate::from_ymd_opt(2027, 1, 1).unwrap()));
}

#[test]
fn waiver_problems() {
    assert_eq!(
        config_problems(&format!(
            "{SEGMENTS}exceptions:
  - {{rule: \"*\", reason: x, approver: y, expires_on: 2026-12-31}}
  - {{rule: exposure.telnet, ip: 198.51.100.7, segment: extranet-a, port: 0, reason: \" \", expires_on: 2026-13-01}}
  - {{rule: exposure.telnet, segment: extranet-b, department: jxw, project: XM-9, ip: nowhere, approver: 张伟}}
"
        )),
        "\
tests/fixtures/rules/netpatrol.yaml:8:12: invalid rule pattern `*`: expected a rule id such as `exposure.telnet` or a prefix ending in `*` such as `exposure.*`
tests/fixtures/rules/netpatrol.yaml:9:12: waiver for `exposure.telnet` needs `approver`
tests/fixtures/rules/netpatrol.yaml:9:33: address `198.51.100.7` is outside segment `extranet-a`
tests/fixtures/rules/netpatrol.yaml:9:74: invalid port `0`: expected 1 to 65535
tests/fixtures/rules/netpatrol.yaml:9:85: empty `reason`
tests/fixtures/rules/netpatrol.yaml:9:102: invalid date `2026-13-01`: expected YYYY-MM-DD
tests/fixtures/rules/netpatrol.yaml:10:12: waiver for `exposure.telnet` needs `reason`
tests/fixtures/rules/netpatrol.yaml:10:12: waiver for `exposure.telnet` needs `expires_on`
tests/fixtures/rules/netpatrol.yaml:10:38: unknown segment `extranet-b`
tests/fixtures/rules/netpatrol.yaml:10:62: unknown department `jxw`
tests/fixtures/rules/netpatrol.yaml:10:76: unknown project `XM-9`
tests/fixtures/rules/netpatrol.yaml:10:86: invalid address `nowhere`"
    );
}

#[test]
fn waivers_from_a_csv_register() {
    let dir = std::env::temp_dir().join(format!("netpatrol-rules-{}-csv", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let csv = "\u{feff}rule,ip,port,segment,department,project,reason,approver,expires_on
exposure.telnet,192.0.2.12,23,extranet-a,,,业务系统改造中,张伟,2026-12-31
exposure.*,,,,fgw,,部门整改中,李娜,
";
    std::fs::write(dir.join("exceptions.csv"), csv).unwrap();
    let path = dir.join("netpatrol.yaml");
    let text = format!("{SEGMENTS}exceptions: {{file: exceptions.csv}}\n");
    let problems = match config::load_str(&text, &path) {
        Ok(_) => panic!("the row without expires_on must be a problem"),
        Err(errors) => errors.to_string(),
    };
    assert_eq!(
        problems,
        format!(
            "{}/exceptions.csv:3: column `expires_on`: waiver for `exposure.*` needs `expires_on`",
            dir.display()
        )
    );
    let csv = csv.replace("李娜,\n", "李娜,2026-06-30\n");
    std::fs::write(dir.join("exceptions.csv"), csv).unwrap();
    let c = config::load_str(&text, &path).unwrap();
    assert_eq!(c.exceptions.len(), 2);
    assert_eq!(c.exceptions[0].port, Some(23));
    assert_eq!(c.exceptions[1].department.as_deref(), Some("fgw"));
    rules(&c);

    // A waiver found unmatched by the rule loader points at its CSV row.
    std::fs::write(
        dir.join("exceptions.csv"),
        "rule,reason,approver,expires_on\nexposure.telnt,改造中,张伟,2026-12-31\n",
    )
    .unwrap();
    let c = config::load_str(&text, &path).unwrap();
    assert_eq!(
        RuleSet::load(&c).unwrap_err()[0].to_string(),
        format!(
            "{}/exceptions.csv:2: column `rule`: waiver rule `exposure.telnt` matches no rule",
            dir.display()
        )
    );
}

#[test]
fn example_config_sections_load_with_the_rules() {
    let c = match config::load(&root().join("config/example.yaml")) {
        Ok(c) => c,
        Err(errors) => panic!("{errors}"),
    };
    let set = rules(&c);
    assert_eq!(
        set.get("tls.cert_expiring").unwrap().severity,
        Severity::High
    );
    assert!(set.get("http.missing_hsts").is_none());
    assert_eq!(c.compliance, config::ComplianceSettings::default());
    assert!(!c.exceptions.is_empty());
    assert!(
        c.exceptions
            .iter()
            .all(|w| set.rules().iter().any(|r| w.matches_rule(&r.id)))
    );
}

#[test]
fn severity_order_and_names() {
    assert!(Severity::Critical > Severity::High);
    assert!(Severity::Low > Severity::Info);
    let mut all = Severity::ALL.to_vec();
    all.sort();
    assert_eq!(all.first(), Some(&Severity::Info));
    for s in Severity::ALL {
        assert_eq!(Severity::parse(s.as_str()), Some(s));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{}\"", s.as_str())
        );
    }
    assert_eq!(Severity::parse("urgent"), None);
}

#[test]
fn a_single_rule_file_parses_alone() {
    let path = Path::new("one.yaml");
    assert!(RuleSet::parse("", path).unwrap().rules().is_empty());
    assert_eq!(
        lines(&RuleSet::parse("rules:\n  - {title: {zh: 无, en: none}}\n", path).unwrap_err()),
        "one.yaml:2:5: rule without `id`"
    );
}
