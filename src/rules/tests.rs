//! Matcher operators (true, false and null), three-valued combinators, compile problems.

use std::path::Path;

use super::*;

/// A set holding one rule of `subject` with condition `when` (YAML flow text).
fn one(subject: &str, when: &str) -> RuleSet {
    let text = format!(
        "rules:\n  - id: t.rule\n    title: {{zh: 标题, en: Title}}\n    severity: low\n    \
         description: {{zh: 说明, en: Description}}\n    remediation: {{zh: 整改, en: Remediation}}\n    \
         subject: {subject}\n    when: {when}\n    evidence: {{zh: 证据, en: Evidence}}\n"
    );
    match RuleSet::parse(&text, Path::new("t.yaml")) {
        Ok(set) => set,
        Err(problems) => panic!("{when}: {problems:?}"),
    }
}

/// The three-valued verdict of `when` on facts built by `set`.
fn verdict(subject: &str, when: &str, set: impl FnOnce(&mut Facts)) -> Option<bool> {
    let rules = one(subject, when);
    let mut facts = Facts::new();
    set(&mut facts);
    let rule = &rules.rules()[0];
    let verdict = rule.condition.eval(&facts);
    assert_eq!(rule.holds(&facts), verdict == Some(true));
    verdict
}

fn problems(subject: &str, when: &str) -> Vec<String> {
    let text = format!(
        "rules:\n  - id: t.rule\n    title: {{zh: 标题, en: Title}}\n    severity: low\n    \
         description: {{zh: 说明, en: Description}}\n    remediation: {{zh: 整改, en: Remediation}}\n    \
         subject: {subject}\n    when: {when}\n    evidence: {{zh: 证据, en: Evidence}}\n"
    );
    match RuleSet::parse(&text, Path::new("t.yaml")) {
        Ok(_) => panic!("{when} compiled"),
        Err(problems) => problems.iter().map(|p| p.to_string()).collect(),
    }
}

fn list(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn equals_on_each_type() {
    let when = "{fact: host.approved, equals: false}";
    assert_eq!(
        verdict("host", when, |f| f.set("host.approved", false)),
        Some(true)
    );
    assert_eq!(
        verdict("host", when, |f| f.set("host.approved", true)),
        Some(false)
    );
    assert_eq!(verdict("host", when, |_| {}), None);

    let when = "{fact: service.port, equals: 23}";
    assert_eq!(
        verdict("service", when, |f| f.set("service.port", 23i64)),
        Some(true)
    );
    assert_eq!(
        verdict("service", when, |f| f.set("service.port", 22i64)),
        Some(false)
    );
    assert_eq!(verdict("service", when, |_| {}), None);

    let when = "{fact: service.name, equals: telnet}";
    assert_eq!(
        verdict("service", when, |f| f.set("service.name", "telnet")),
        Some(true)
    );
    assert_eq!(
        verdict("service", when, |f| f.set("service.name", "ssh")),
        Some(false)
    );
    assert_eq!(verdict("service", when, |_| {}), None);
    // A value of the wrong type (an upstream bug) is unknown, never a hit.
    assert_eq!(
        verdict("service", when, |f| f.set("service.name", 23i64)),
        None
    );
}

#[test]
fn in_list() {
    let when = "{fact: service.name, in: [mysql, mongodb]}";
    assert_eq!(
        verdict("service", when, |f| f.set("service.name", "mongodb")),
        Some(true)
    );
    assert_eq!(
        verdict("service", when, |f| f.set("service.name", "redis")),
        Some(false)
    );
    assert_eq!(verdict("service", when, |_| {}), None);
    let when = "{fact: service.port, in: [23, 2323]}";
    assert_eq!(
        verdict("service", when, |f| f.set("service.port", 2323i64)),
        Some(true)
    );
    assert_eq!(
        verdict("service", when, |f| f.set("service.port", 22i64)),
        Some(false)
    );
}

#[test]
fn contains_list_and_string() {
    let when = "{fact: host.services, contains: telnet}";
    let services =
        |items: &'static [&'static str]| move |f: &mut Facts| f.set("host.services", list(items));
    assert_eq!(
        verdict("host", when, services(&["ssh", "telnet"])),
        Some(true)
    );
    assert_eq!(verdict("host", when, services(&["telnetd"])), Some(false));
    assert_eq!(verdict("host", when, |_| {}), None);

    let when = "{fact: service.banner, contains: OpenSSH}";
    assert_eq!(
        verdict("service", when, |f| f
            .set("service.banner", "SSH-2.0-OpenSSH_9.6")),
        Some(true)
    );
    assert_eq!(
        verdict("service", when, |f| f
            .set("service.banner", "SSH-2.0-dropbear")),
        Some(false)
    );
    assert_eq!(verdict("service", when, |_| {}), None);
}

#[test]
fn regex_matches_strings() {
    let when = "{fact: cert.signature, regex: \"(?i)sha1|md5\"}";
    let sig = |s: &'static str| move |f: &mut Facts| f.set("cert.signature", s);
    assert_eq!(
        verdict("service", when, sig("sha1WithRSAEncryption")),
        Some(true)
    );
    assert_eq!(verdict("service", when, sig("ecdsa-with-SHA1")), Some(true));
    assert_eq!(
        verdict("service", when, sig("sha256WithRSAEncryption")),
        Some(false)
    );
    assert_eq!(verdict("service", when, |_| {}), None);
}

#[test]
fn integer_comparisons() {
    let days = |n: i64| move |f: &mut Facts| f.set("cert.days_left", n);
    for (op, at_minus_one, at_zero, at_one) in [
        ("lt", true, false, false),
        ("le", true, true, false),
        ("gt", false, false, true),
        ("ge", false, true, true),
    ] {
        let when = format!("{{fact: cert.days_left, {op}: 0}}");
        assert_eq!(
            verdict("service", &when, days(-1)),
            Some(at_minus_one),
            "{op}"
        );
        assert_eq!(verdict("service", &when, days(0)), Some(at_zero), "{op}");
        assert_eq!(verdict("service", &when, days(1)), Some(at_one), "{op}");
        assert_eq!(verdict("service", &when, |_| {}), None, "{op}");
    }
}

#[test]
fn exists_answers_on_null() {
    let when = "{fact: host.ptr, exists: true}";
    assert_eq!(
        verdict("host", when, |f| f.set("host.ptr", "a.example.gov.cn")),
        Some(true)
    );
    assert_eq!(verdict("host", when, |_| {}), Some(false));
    let when = "{fact: host.ptr, exists: false}";
    assert_eq!(
        verdict("host", when, |f| f.set("host.ptr", "a.example.gov.cn")),
        Some(false)
    );
    assert_eq!(verdict("host", when, |_| {}), Some(true));
    assert_eq!(
        verdict("host", when, |f| f.set("host.ptr", Option::<String>::None)),
        Some(true)
    );
}

#[test]
fn empty_on_lists() {
    let legacy = |items: &'static [&'static str]| {
        move |f: &mut Facts| f.set("tls.legacy_versions", list(items))
    };
    let when = "{fact: tls.legacy_versions, empty: false}";
    assert_eq!(verdict("service", when, legacy(&["TLSv1.0"])), Some(true));
    assert_eq!(verdict("service", when, legacy(&[])), Some(false));
    // TLS not probed: unknown, so `tls.protocol_legacy` cannot fire.
    assert_eq!(verdict("service", when, |_| {}), None);
    let when = "{fact: tls.legacy_versions, empty: true}";
    assert_eq!(verdict("service", when, legacy(&[])), Some(true));
    assert_eq!(verdict("service", when, legacy(&["SSLv3"])), Some(false));
    assert_eq!(verdict("service", when, |_| {}), None);
}

#[test]
fn combinators_are_three_valued() {
    let approved = "{fact: host.approved, equals: true}";
    let ptr = "{fact: host.ptr, exists: true}";
    let set_ptr = |f: &mut Facts| f.set("host.ptr", "a.example.gov.cn");
    // `not` keeps unknown unknown: a rule on "not approved" must not fire on a host whose
    // approval status was never computed.
    let not = format!("{{not: {approved}}}");
    assert_eq!(verdict("host", &not, |_| {}), None);
    assert_eq!(
        verdict("host", &not, |f| f.set("host.approved", false)),
        Some(true)
    );

    let all = format!("{{all: [{approved}, {ptr}]}}");
    assert_eq!(verdict("host", &all, set_ptr), None);
    assert_eq!(
        verdict("host", &all, |f| f.set("host.approved", false)),
        Some(false)
    );
    assert_eq!(
        verdict("host", &all, |f| {
            f.set("host.approved", true);
            set_ptr(f)
        }),
        Some(true)
    );

    let any = format!("{{any: [{approved}, {ptr}]}}");
    assert_eq!(verdict("host", &any, set_ptr), Some(true));
    assert_eq!(verdict("host", &any, |_| {}), None);
    // `exists` is two-valued: a missing PTR is a plain "no".
    assert_eq!(
        verdict("host", &any, |f| f.set("host.approved", false)),
        Some(false)
    );
    let any = format!("{{any: [{approved}, {{fact: host.segment, equals: a}}]}}");
    assert_eq!(
        verdict("host", &any, |f| f.set("host.approved", false)),
        None
    );
}

#[test]
fn operand_and_shape_problems() {
    let p = |when: &str| problems("service", when);
    assert_eq!(
        p("{fact: cert.days_left, lt: \"30\"}"),
        ["t.yaml:8:38: rule `t.rule`: `lt` on `cert.days_left` needs an integer, got `30`"]
    );
    assert_eq!(
        p("{fact: host.approved, equals: \"true\"}"),
        ["t.yaml:8:41: rule `t.rule`: `equals` on `host.approved` needs a boolean, got `true`"]
    );
    assert_eq!(
        p("{fact: service.name, in: []}"),
        ["t.yaml:8:36: rule `t.rule`: `in` needs at least one value"]
    );
    assert_eq!(
        p("{fact: tls.versions, empty: 1}"),
        ["t.yaml:8:39: rule `t.rule`: `empty` on `tls.versions` needs a boolean, got `1`"]
    );
    assert_eq!(
        p("{fact: host.approved, exists: true, equals: true}"),
        [
            "t.yaml:8:11: rule `t.rule`: fact `host.approved` needs exactly one operator: equals, in, contains, regex, lt, le, gt, ge, exists, empty"
        ]
    );
    assert_eq!(
        p("{fact: host.approved}"),
        [
            "t.yaml:8:11: rule `t.rule`: fact `host.approved` needs exactly one operator: equals, in, contains, regex, lt, le, gt, ge, exists, empty"
        ]
    );
    assert_eq!(
        p("{equals: true}"),
        [
            "t.yaml:8:11: rule `t.rule`: a condition needs exactly one of `all`, `any`, `not` or `fact`"
        ]
    );
    assert_eq!(
        p("{all: [{fact: host.approved, equals: true}], equals: true}"),
        ["t.yaml:8:11: rule `t.rule`: `equals` needs a `fact`, not `all`"]
    );
    assert_eq!(
        p("{not: {fact: project.live, equals: true}}"),
        [
            "t.yaml:8:24: rule `t.rule`: fact `project.live` belongs to a project and is not visible from subject `service`"
        ]
    );
}

#[test]
fn rule_level_problems() {
    let text = "rules:
  - id: Bad-Id
    title: {zh: 标题, en: Title}
    severity: low
    basis: [\"\"]
    deadline_days: 9999
    subject: host
    when: {fact: host.approved, equals: false}
    evidence: {zh: 证据, en: Evidence}
";
    let got: Vec<String> = RuleSet::parse(text, Path::new("r.yaml"))
        .unwrap_err()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        got,
        [
            "r.yaml:2:9: invalid rule id `Bad-Id`: expected `area.name` in lowercase letters, digits and `_`",
            "r.yaml:2:9: rule `Bad-Id`: missing `description`",
            "r.yaml:2:9: rule `Bad-Id`: missing `remediation`",
            "r.yaml:5:13: rule `Bad-Id`: empty `basis` item",
            "r.yaml:6:20: rule `Bad-Id`: deadline_days must be 0 to 3650, got 9999",
        ]
    );
}

#[test]
fn rule_ids() {
    assert!(is_rule_id("tls.cert_expiring"));
    assert!(is_rule_id("local.fgw.ssh2"));
    assert!(!is_rule_id("tls"));
    assert!(!is_rule_id("tls."));
    assert!(!is_rule_id("TLS.cert"));
    assert!(!is_rule_id("tls.2cert"));
    assert!(!is_rule_id("tls.cert-expiring"));
}
