//! The operator documentation in `docs/` against the code it describes.
//!
//! Generated parts (between `<!-- BEGIN GENERATED: NAME -->` and `<!-- END GENERATED: NAME -->`):
//! the English configuration reference, rendered from the `///` comments of the serde structs in
//! `src/config/raw.rs` (read as source text by a small parser) with examples taken from
//! `config/example.yaml`, and the rule tables of `docs/rules.md` and `docs/rules.zh.md`, rendered
//! from the loaded built-in rule set. A drift fails with a diff; `NETPATROL_BLESS=1 cargo test
//! --test it docs::` rewrites the generated parts and leaves the hand-written prose alone.
//!
//! Coverage checks (re-run them after a merge): every config key path, rule id, metric name,
//! API route, web config key, probe failure reason and CLI command must appear in both
//! languages' pages.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use netpatrol::cli::{Cli, EXIT_FAIL_ON, EXIT_USAGE};
use netpatrol::rules::RuleSet;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn blessing() -> bool {
    std::env::var_os("NETPATROL_BLESS").is_some_and(|v| v == "1")
}

// ---------------------------------------------------------------------------------------------
// The raw config structs, read from their source text.

#[derive(Debug)]
struct Field {
    name: String,
    ty: String,
    doc: String,
}

#[derive(Debug)]
struct Struct {
    name: String,
    doc: String,
    fields: Vec<Field>,
}

/// Every `pub struct NAME { ... }` of `src/config/raw.rs` with its `///` comments and fields.
/// Tuple structs and enums (custom deserialisers) are not config sections and are skipped.
fn raw_structs() -> Vec<Struct> {
    let text = read("src/config/raw.rs");
    let mut structs = Vec::new();
    let mut doc: Vec<String> = Vec::new();
    let mut current: Option<Struct> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(d) = t.strip_prefix("///") {
            doc.push(d.trim().to_string());
            continue;
        }
        if t.starts_with("#[") {
            continue;
        }
        if let Some(s) = current.as_mut() {
            if t == "}" {
                structs.push(current.take().expect("inside a struct"));
            } else if let Some(rest) = t.strip_prefix("pub ") {
                let (name, ty) = rest.split_once(':').expect("a field `pub name: Type,`");
                s.fields.push(Field {
                    name: name.trim().to_string(),
                    ty: ty.trim().trim_end_matches(',').trim().to_string(),
                    doc: doc.join(" "),
                });
            }
            doc.clear();
            continue;
        }
        if let Some(rest) = t.strip_prefix("pub struct ")
            && let Some(name) = rest.strip_suffix(" {")
        {
            current = Some(Struct {
                name: name.trim().to_string(),
                doc: doc.join(" "),
                fields: Vec::new(),
            });
        }
        doc.clear();
    }
    structs
}

/// What a field's type means to someone writing YAML.
#[derive(Debug)]
enum Shape {
    Leaf(String),
    /// A nested map with its own keys.
    Section(String),
    /// A register: a list of these, or `{file: PATH}`.
    Register(String),
    /// A plain list of these.
    List(String),
    /// A map from a key the operator chooses to one of these.
    Map(String),
}

/// The two arguments of `A<X, Y>` (split at the top-level comma).
fn two_args(inner: &str) -> (&str, &str) {
    let mut depth = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => return (inner[..i].trim(), inner[i + 1..].trim()),
            _ => {}
        }
    }
    panic!("expected two type arguments in {inner}")
}

fn unwrap<'a>(ty: &'a str, wrapper: &str) -> Option<&'a str> {
    ty.strip_prefix(wrapper)?
        .strip_prefix('<')?
        .strip_suffix('>')
}

fn leaf(ty: &str) -> String {
    let ty = unwrap(ty, "Option").unwrap_or(ty);
    let ty = unwrap(ty, "Spanned").unwrap_or(ty);
    match ty {
        "Text" | "String" | "PathBuf" => "string".into(),
        "bool" => "boolean".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "integer".into(),
        "f32" | "f64" => "number".into(),
        "PortList" => "port, range or named set, or a list of them".into(),
        "IgnoredAny" => "refused".into(),
        _ => {
            if let Some(inner) = unwrap(ty, "Vec") {
                return format!("list of {}", plural(&leaf(inner)));
            }
            if let Some(inner) = unwrap(ty, "Pairs") {
                let (k, v) = two_args(inner);
                return format!("map of {} to {}", leaf(k), leaf(v));
            }
            panic!("src/config/raw.rs: the docs test does not know the type `{ty}`; teach `leaf`")
        }
    }
}

fn plural(s: &str) -> String {
    format!("{s}s")
}

fn shape(ty: &str, structs: &[Struct]) -> Shape {
    let is_struct = |name: &str| structs.iter().any(|s| s.name == name);
    let ty = unwrap(ty, "Option").unwrap_or(ty);
    if let Some(inner) = unwrap(ty, "Register") {
        return Shape::Register(inner.to_string());
    }
    if let Some(inner) = unwrap(ty, "Vec")
        && is_struct(inner)
    {
        return Shape::List(inner.to_string());
    }
    if let Some(inner) = unwrap(ty, "Pairs") {
        let (_, v) = two_args(inner);
        if is_struct(v) {
            return Shape::Map(v.to_string());
        }
    }
    if is_struct(ty) {
        return Shape::Section(ty.to_string());
    }
    Shape::Leaf(leaf(ty))
}

/// One documented key.
#[derive(Debug)]
struct Key {
    /// `scan.dns.enabled`, `segments[].cidrs`, `rules.overrides.<id>.severity`.
    path: String,
    /// The top-level section it belongs to.
    section: String,
    ty: String,
    doc: String,
}

fn keys() -> (Vec<Struct>, Vec<Key>) {
    let structs = raw_structs();
    let mut keys = Vec::new();
    walk(&structs, "ConfigFile", "", None, &mut keys);
    (structs, keys)
}

fn walk(structs: &[Struct], name: &str, prefix: &str, section: Option<&str>, out: &mut Vec<Key>) {
    let s = structs
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no struct {name} in raw.rs"));
    for f in &s.fields {
        let path = format!("{prefix}{}", f.name);
        let section = section.unwrap_or(&f.name).to_string();
        let (ty, child) = match shape(&f.ty, structs) {
            Shape::Leaf(t) => (t, None),
            Shape::Section(c) => ("map".to_string(), Some((c, format!("{path}.")))),
            Shape::Register(c) => (
                "list of maps, or {file: PATH} (YAML or CSV)".to_string(),
                Some((c, format!("{path}[]."))),
            ),
            Shape::List(c) => ("list of maps".to_string(), Some((c, format!("{path}[].")))),
            Shape::Map(c) => (
                "map of id to map".to_string(),
                Some((c, format!("{path}.<id>."))),
            ),
        };
        out.push(Key {
            path: path.clone(),
            section: section.clone(),
            ty: refine(ty, &f.doc),
            doc: f.doc.clone(),
        });
        if let Some((child, prefix)) = child {
            walk(structs, &child, &prefix, Some(&section), out);
        }
    }
}

/// Strings that validation reads as dates or numbers, as their doc comment says.
fn refine(ty: String, doc: &str) -> String {
    if ty != "string" {
        return ty;
    }
    if doc.contains("YYYY-MM-DD") {
        "date (YYYY-MM-DD)".into()
    } else if doc.contains("1 to 5") || doc.contains("1 to 65535") {
        "integer".into()
    } else {
        ty
    }
}

/// The default a field's doc comment states: "required", "refused", or the words after
/// "default" up to the end of that clause.
fn default_of(doc: &str) -> String {
    if doc.starts_with("Required") {
        return "required".into();
    }
    if doc.starts_with("Never accepted") {
        return "refused".into();
    }
    let lower = doc.to_lowercase();
    let Some(at) = lower.find("default") else {
        return "—".into();
    };
    let rest = doc[at + "default".len()..].trim_start_matches(':').trim();
    let mut end = rest.len();
    if let Some(i) = rest.find("; ") {
        end = end.min(i);
    }
    if let Some(i) = rest.find(". ") {
        end = end.min(i);
    }
    rest[..end].trim().trim_end_matches('.').to_string()
}

// ---------------------------------------------------------------------------------------------
// Examples from the shipped example config.

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The CSV register `file` (relative to `config/`) as a list of maps, header to cell.
fn csv_rows(file: &str) -> Value {
    let text = read(&format!("config/{file}"));
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().expect("csv header").clone();
    let rows = reader
        .records()
        .map(|r| {
            let r = r.expect("csv row");
            let map = headers
                .iter()
                .zip(r.iter())
                .filter(|(_, v)| !v.is_empty())
                .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
                .collect();
            Value::Object(map)
        })
        .collect();
    Value::Array(rows)
}

/// The value at `path` in the example config, following the first list item or map entry that
/// has the next key; a register written as `{file: X.csv}` is read from its CSV file.
fn example_at(example: &Value, path: &str) -> Option<(Value, Option<String>)> {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('.') {
        match p.strip_suffix("[]") {
            Some(name) => {
                parts.push(name);
                parts.push("[]");
            }
            None => parts.push(p),
        }
    }
    find(example, &parts, None)
}

fn find(value: &Value, parts: &[&str], from: Option<String>) -> Option<(Value, Option<String>)> {
    let Some((first, rest)) = parts.split_first() else {
        return Some((value.clone(), from));
    };
    match *first {
        "[]" => {
            if let Some(file) = value.get("file").and_then(Value::as_str) {
                if file.ends_with(".csv") {
                    let rows = csv_rows(file);
                    return find(&rows, parts, Some(format!("config/{file}")));
                }
                return None;
            }
            let items = value.as_array()?;
            items.iter().find_map(|item| find(item, rest, from.clone()))
        }
        "<id>" => {
            let map = value.as_object()?;
            map.values().find_map(|v| find(v, rest, from.clone()))
        }
        key => find(value.get(key)?, rest, from),
    }
}

/// A value as YAML flow text.
fn flow(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_alphanumeric() || "-_./@;、；".contains(c) || !c.is_ascii())
                && !s.chars().all(|c| c.is_ascii_digit());
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).expect("a string serialises")
            }
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(flow).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{k}: {}", flow(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn example_cell(example: &Value, key: &Key) -> String {
    if key.ty == "refused" {
        return "—".into();
    }
    let Some((value, from)) = example_at(example, &key.path) else {
        return "—".into();
    };
    // Sections and registers written inline are shown key by key below.
    let nested =
        key.ty == "map" || key.ty.starts_with("list of maps") || key.ty.starts_with("map of id");
    if nested && value.get("file").is_none() && !matches!(value, Value::Null) {
        return "see below".into();
    }
    let name = key.path.rsplit('.').next().unwrap_or(&key.path);
    match from {
        Some(file) => format!("`{}` ({file})", cell(&flow(&value))),
        None => format!("`{name}: {}`", cell(&flow(&value))),
    }
}

/// Text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn render_config_reference() -> String {
    let (structs, keys) = keys();
    let example = yaml("config/example.yaml");
    let top = structs
        .iter()
        .find(|s| s.name == "ConfigFile")
        .expect("ConfigFile");
    let mut out = String::new();
    for field in &top.fields {
        let section = &field.name;
        out.push_str(&format!("\n### `{section}`\n\n{}\n", field.doc));
        if let Shape::Register(item) | Shape::Section(item) | Shape::Map(item) | Shape::List(item) =
            shape(&field.ty, &structs)
            && let Some(s) = structs.iter().find(|s| s.name == item)
            && !s.doc.is_empty()
        {
            out.push_str(&format!("\n{}\n", s.doc));
        }
        out.push_str("\n| key | type | default | meaning | example |\n|---|---|---|---|---|\n");
        for key in keys.iter().filter(|k| &k.section == section) {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                key.path,
                cell(&key.ty),
                cell(&default_of(&key.doc)),
                cell(&key.doc),
                example_cell(&example, key),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Generated blocks and their drift check.

fn replace_block(page: &str, name: &str, body: &str) -> String {
    let begin = format!("<!-- BEGIN GENERATED: {name} -->");
    let end = format!("<!-- END GENERATED: {name} -->");
    let (Some(b), Some(e)) = (page.find(&begin), page.find(&end)) else {
        panic!("the page lacks the markers `{begin}` and `{end}`");
    };
    format!(
        "{}{begin}\n{}\n{}",
        &page[..b],
        body.trim_matches('\n'),
        &page[e..]
    )
}

/// A line diff (longest common subsequence), `-` committed, `+` generated.
fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+{:>4} {}\n", j + 1, b[j]));
            j += 1;
        } else {
            out.push_str(&format!("-{:>4} {}\n", i + 1, a[i]));
            i += 1;
        }
    }
    out
}

/// Compares the generated block with the committed page, or rewrites it when blessing.
fn check_block(rel: &str, name: &str, body: &str) {
    let committed = read(rel);
    let wanted = replace_block(&committed, name, body);
    if committed == wanted {
        return;
    }
    if blessing() {
        // Through a rename, so the tests reading the page at the same time never see half of it.
        let path = root().join(rel);
        let tmp = path.with_extension("md.blessing");
        std::fs::write(&tmp, &wanted).expect("write the blessed page");
        std::fs::rename(&tmp, &path).expect("replace the page");
        return;
    }
    panic!(
        "{rel} is out of date (its generated part `{name}` differs from the code); \
         rewrite it with `NETPATROL_BLESS=1 cargo test --test it docs::`\n{}",
        diff(&committed, &wanted)
    );
}

#[test]
fn config_reference_is_generated_from_raw_rs() {
    check_block(
        "docs/config-reference.md",
        "config-keys",
        &render_config_reference(),
    );
}

/// The key paths the test knows, for the coverage checks.
fn key_paths() -> Vec<String> {
    let (_, keys) = keys();
    assert!(
        keys.len() > 50,
        "the raw.rs parser found only {} keys",
        keys.len()
    );
    keys.into_iter().map(|k| k.path).collect()
}

/// Names the code has that `page` does not mention as `` `name` ``.
fn missing_in(page: &str, names: &[String]) -> Vec<String> {
    let text = read(page);
    names
        .iter()
        .filter(|n| !text.contains(&format!("`{n}`")))
        .cloned()
        .collect()
}

fn assert_documented(what: &str, pages: &[&str], names: &[String]) {
    let mut problems = Vec::new();
    for page in pages {
        let missing = missing_in(page, names);
        if !missing.is_empty() {
            problems.push(format!("{page} lacks {what}: {}", missing.join(", ")));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_config_key_is_documented_in_both_languages() {
    assert_documented(
        "config keys (from src/config/raw.rs)",
        &["docs/config-reference.md", "docs/config-reference.zh.md"],
        &key_paths(),
    );
}

#[test]
fn the_key_parser_sees_what_serde_sees() {
    // A few paths whose shape the parser must get right, and the defaults it must read.
    let (_, keys) = keys();
    let get = |p: &str| {
        keys.iter()
            .find(|k| k.path == p)
            .unwrap_or_else(|| panic!("no key {p}"))
    };
    assert_eq!(get("scan.dns.enabled").ty, "boolean");
    assert_eq!(default_of(&get("scan.timeout_ms").doc), "1500");
    assert_eq!(get("segments[].cidrs").ty, "list of strings");
    assert_eq!(get("rules.overrides.<id>.enabled").ty, "boolean");
    assert_eq!(default_of(&get("segments").doc), "required");
    assert_eq!(default_of(&get("smtp.password").doc), "refused");
    assert_eq!(
        get("compliance.mlps_interval_months").ty,
        "map of integer to integer"
    );
}

// ---------------------------------------------------------------------------------------------
// Rules.

/// Every `fact:` a rule's condition reads, by rule id, from `rules/*.yaml`.
fn facts_read() -> std::collections::BTreeMap<String, BTreeSet<String>> {
    fn collect(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(f)) = map.get("fact") {
                    out.insert(f.clone());
                }
                map.values().for_each(|v| collect(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut by_id = std::collections::BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(root().join("rules"))
        .expect("rules/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let rel = format!(
            "rules/{}",
            file.file_name().expect("name").to_string_lossy()
        );
        let doc = yaml(&rel);
        for rule in doc["rules"].as_array().expect("rules: list") {
            let mut facts = BTreeSet::new();
            collect(&rule["when"], &mut facts);
            let id = rule["id"].as_str().expect("rule id").to_string();
            by_id.insert(id, facts);
        }
    }
    by_id
}

fn builtin_rules() -> RuleSet {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = netpatrol::config::load_str(
        "segments: [{name: docs, network: other, cidrs: [192.0.2.0/24]}]\n",
        &dir.path().join("netpatrol.yaml"),
    )
    .expect("a minimal config loads");
    RuleSet::load(&config).expect("the built-in rules load")
}

fn render_rules(lang: &str) -> String {
    let rules = builtin_rules();
    let facts = facts_read();
    let (head, none) = if lang == "en" {
        (
            "| id | title | severity | deadline (days) | subject | reads (facts) | probes needed | basis |",
            "none",
        )
    } else {
        (
            "| 规则编号 | 名称 | 默认级别 | 整改期限(天) | 判定对象 | 读取的事实 | 所需探测 | 依据 |",
            "无",
        )
    };
    let mut out = format!("{head}\n|---|---|---|---|---|---|---|---|\n");
    for rule in rules.rules() {
        let reads = facts
            .get(&rule.id)
            .map(|f| {
                f.iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let needs = if rule.needs.is_empty() {
            none.to_string()
        } else {
            rule.needs
                .iter()
                .map(|p| format!("`{}`", p.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let basis = if rule.basis.is_empty() {
            "—".to_string()
        } else {
            rule.basis.join("<br>")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} | {} |\n",
            rule.id,
            cell(rule.title.lang(lang)),
            label(lang, rule.severity.as_str()),
            rule.deadline_days,
            label(lang, rule.subject.as_str()),
            reads,
            needs,
            cell(&basis),
        ));
    }
    out.push('\n');
    for rule in rules.rules() {
        let (what, fix) = if lang == "en" {
            ("What it means", "Remediation")
        } else {
            ("说明", "整改要求")
        };
        out.push_str(&format!(
            "\n#### `{}` {}\n\n{what}: {}\n\n{fix}: {}\n",
            rule.id,
            rule.title.lang(lang),
            rule.description.lang(lang),
            rule.remediation.lang(lang),
        ));
    }
    out
}

/// A severity or subject as the page's language writes it (the English word stays beside the
/// Chinese one: it is what `rules.overrides` and the JSON report use).
fn label(lang: &str, word: &str) -> String {
    if lang == "en" {
        return word.to_string();
    }
    let zh = match word {
        "critical" => "严重",
        "high" => "高危",
        "medium" => "中危",
        "low" => "低危",
        "info" => "提示",
        "host" => "主机",
        "service" => "服务",
        "segment" => "网段",
        "approval" => "入网审批",
        "project" => "项目",
        other => panic!("no Chinese label for {other}; add one to `label`"),
    };
    format!("{zh}（{word}）")
}

/// The fact catalogue (`netpatrol::facts::CATALOGUE`), for people who write their own rules.
fn render_facts(lang: &str) -> String {
    use netpatrol::facts::{CATALOGUE, Kind};
    let head = if lang == "en" {
        "| fact | type | subject | probe needed | meaning |"
    } else {
        "| 事实 | 类型 | 所属对象 | 所需探测 | 说明（英文，取自源码） |"
    };
    let mut out = format!("{head}\n|---|---|---|---|---|\n");
    for fact in CATALOGUE {
        let kind = match (fact.kind, lang) {
            (Kind::Bool, "en") => "boolean",
            (Kind::Int, "en") => "integer",
            (Kind::Str, "en") => "string",
            (Kind::List, "en") => "list",
            (Kind::Bool, _) => "布尔",
            (Kind::Int, _) => "整数",
            (Kind::Str, _) => "字符串",
            (Kind::List, _) => "列表",
        };
        let needs = fact
            .needs
            .map(|p| format!("`{}`", p.as_str()))
            .unwrap_or_else(|| if lang == "en" { "none" } else { "无" }.to_string());
        out.push_str(&format!(
            "| `{}` | {kind} | {} | {needs} | {} |\n",
            fact.name,
            label(lang, fact.subject.as_str()),
            cell(fact.doc),
        ));
    }
    out
}

#[test]
fn rule_pages_are_generated_from_the_built_in_pack() {
    check_block("docs/rules.md", "rules", &render_rules("en"));
    check_block("docs/rules.zh.md", "rules", &render_rules("zh"));
    check_block("docs/rules.md", "facts", &render_facts("en"));
    check_block("docs/rules.zh.md", "facts", &render_facts("zh"));
}

#[test]
fn every_rule_id_is_documented_in_both_languages() {
    let ids: Vec<String> = builtin_rules()
        .rules()
        .iter()
        .map(|r| r.id.clone())
        .collect();
    assert!(ids.len() >= 30, "only {} built-in rules", ids.len());
    assert_documented(
        "rule ids (from the built-in rule set)",
        &["docs/rules.md", "docs/rules.zh.md"],
        &ids,
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics, routes, probe failure reasons, exit codes.

/// Every metric name `src/output/metrics.rs` registers (string literals `"netpatrol_…"` and
/// `"process_…"`); counters are exported with `_total`, which the docs write in full.
fn metric_names() -> Vec<String> {
    let text = read("src/output/metrics.rs");
    let mut names = BTreeSet::new();
    for piece in text.split('"').skip(1).step_by(2) {
        let metric = (piece.starts_with("netpatrol_") || piece.starts_with("process_"))
            && piece
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if metric {
            names.insert(piece.to_string());
        }
    }
    // The process metrics are also named in the module doc table; only literals count.
    names.into_iter().collect()
}

#[test]
fn every_metric_is_documented_in_both_languages() {
    let names = metric_names();
    assert!(names.len() >= 15, "found only {names:?}");
    let pages = ["docs/metrics.md", "docs/metrics.zh.md"];
    let mut problems = Vec::new();
    for page in pages {
        let text = read(page);
        for name in &names {
            // `netpatrol_probe_errors` is exported (and documented) as `..._total`.
            let plain = format!("`{name}`");
            let counter = format!("`{name}_total`");
            if !text.contains(&plain) && !text.contains(&counter) {
                problems.push(format!("{page} lacks the metric {name}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `METHOD PATH` of every `.route(` in `src/daemon/api.rs` (a call rustfmt split over several
/// lines included): its path literal and the methods named in its handler.
fn routes() -> Vec<String> {
    let text = read("src/daemon/api.rs");
    let mut out = Vec::new();
    for call in text.split(".route(").skip(1) {
        // The arguments, up to the parenthesis that closes the call.
        let mut depth = 1;
        let end = call
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(i)
            })
            .expect("a closed .route( call");
        let args = &call[..end];
        let path = args
            .split('"')
            .nth(1)
            .expect("a route path literal as the first argument");
        let handler = &args[args.find(',').expect("a route handler")..];
        let methods: Vec<&str> = ["get", "post", "put", "delete", "patch"]
            .into_iter()
            .filter(|m| handler.contains(&format!("{m}(")) || handler.contains(&format!("::{m}(")))
            .collect();
        assert!(!methods.is_empty(), "no method found for the route {path}");
        for method in methods {
            out.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    out
}

#[test]
fn every_api_route_is_documented_in_both_languages() {
    let routes = routes();
    assert!(routes.len() >= 5, "found only {routes:?}");
    assert_documented(
        "API routes (from src/daemon/api.rs)",
        &["docs/api.md", "docs/api.zh.md"],
        &routes,
    );
}

/// The web config's key paths (the fields of `WebConfigFile` and `TlsServerConfigFile` in
/// `src/daemon/web.rs`, read as source text) and the `client_auth_type` values (`ClientAuth`).
fn web_config_keys() -> (Vec<String>, Vec<String>) {
    let text = read("src/daemon/web.rs");
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut inside: Option<&str> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.ends_with('{') && !t.contains('(') {
            inside = match t.trim_start_matches("pub ") {
                "struct WebConfigFile {" => Some(""),
                "struct TlsServerConfigFile {" => Some("tls_server_config."),
                "enum ClientAuth {" => Some("enum"),
                _ => None,
            };
            continue;
        }
        let Some(prefix) = inside else { continue };
        if t == "}" {
            inside = None;
        } else if t.starts_with("//") || t.starts_with("#[") || t.is_empty() {
        } else if prefix == "enum" {
            values.push(t.trim_end_matches(',').to_string());
        } else if let Some((name, _)) = t.split_once(':') {
            keys.push(format!(
                "{prefix}{}",
                name.trim_start_matches("pub ").trim()
            ));
        }
    }
    (keys, values)
}

#[test]
fn web_config_keys_are_documented_and_the_example_uses_only_them() {
    let (keys, values) = web_config_keys();
    assert!(
        keys.len() >= 7 && values.len() >= 3,
        "found only {keys:?} {values:?}"
    );
    let pages = ["docs/api.md", "docs/api.zh.md"];
    assert_documented("web config keys (from src/daemon/web.rs)", &pages, &keys);
    assert_documented("client_auth_type values", &pages, &values);
    let example = yaml("config/web.example.yml");
    let mut used = Vec::new();
    for (key, value) in example
        .as_object()
        .expect("config/web.example.yml is a map")
    {
        used.push(key.clone());
        if let Some(section) = value.as_object() {
            used.extend(section.keys().map(|k| format!("{key}.{k}")));
        }
    }
    let unknown: Vec<&String> = used.iter().filter(|k| !keys.contains(k)).collect();
    assert!(
        unknown.is_empty(),
        "config/web.example.yml uses keys src/daemon/web.rs does not know: {unknown:?}"
    );
}

/// The bounded probe failure reasons (`Reason::X => "x"` in `src/probe/mod.rs`).
fn reasons() -> Vec<String> {
    let text = read("src/probe/mod.rs");
    text.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("Reason::")?;
            let (_, value) = rest.split_once("=> \"")?;
            Some(value.trim_end_matches(['"', ',']).to_string())
        })
        .collect()
}

#[test]
fn troubleshooting_explains_every_failure_reason_and_exit_code() {
    let reasons = reasons();
    assert!(reasons.len() >= 8, "found only {reasons:?}");
    let pages = ["docs/troubleshooting.md", "docs/troubleshooting.zh.md"];
    assert_documented("probe failure reasons", &pages, &reasons);
    let codes: Vec<String> = [
        "0".to_string(),
        "1".to_string(),
        EXIT_FAIL_ON.to_string(),
        EXIT_USAGE.to_string(),
    ]
    .into();
    assert_documented("exit codes", &pages, &codes);
}

// ---------------------------------------------------------------------------------------------
// The command line.

/// The `## `netpatrol NAME`` sections of a CLI page, each with its text.
fn cli_sections(rel: &str) -> Vec<(String, String)> {
    let text = read(rel);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("## `netpatrol ") {
            let name = rest
                .split([' ', '`'])
                .next()
                .unwrap_or_default()
                .to_string();
            out.push((name, String::new()));
        } else if line.starts_with("## ") {
            out.push((String::new(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out.retain(|(name, _)| !name.is_empty());
    out
}

#[test]
fn cli_pages_list_the_same_commands_and_options_as_clap() {
    let cli = Cli::command();
    let commands: BTreeSet<String> = cli
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let mut problems = Vec::new();
    for page in ["docs/cli.md", "docs/cli.zh.md"] {
        let sections = cli_sections(page);
        let documented: BTreeSet<String> = sections.iter().map(|(n, _)| n.clone()).collect();
        if documented != commands {
            problems.push(format!(
                "{page} documents {documented:?}, `netpatrol --help` lists {commands:?}"
            ));
        }
        for sub in cli.get_subcommands() {
            let Some((_, body)) = sections.iter().find(|(n, _)| n == sub.get_name()) else {
                continue;
            };
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            if !body.contains(&about) {
                problems.push(format!(
                    "{page}: the section of `{}` does not quote its help line {about:?}",
                    sub.get_name()
                ));
            }
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long()
                    && !body.contains(&format!("--{long}"))
                {
                    problems.push(format!(
                        "{page}: `{}` lacks its option --{long}",
                        sub.get_name()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Pages stand alone.

fn pages() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md"), root().join("README.zh.md")];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The targets of `](...)` links in Markdown text.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(t, _)| t.to_string()))
        .collect()
}

#[test]
fn every_page_has_its_translation_and_links_stay_in_the_repository() {
    let mut problems = Vec::new();
    for page in pages() {
        let name = page
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let other = match name.strip_suffix(".zh.md") {
            Some(base) => format!("{base}.md"),
            None => name.replace(".md", ".zh.md"),
        };
        if !page.with_file_name(&other).exists() {
            problems.push(format!("{name} has no counterpart {other}"));
        }
        let text = std::fs::read_to_string(&page).expect("read page");
        if text.contains("../shared") || text.contains("CONTRACT.md") {
            problems.push(format!("{name} refers to files users do not have"));
        }
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") {
                continue; // upstream projects; checked by hand
            }
            let target = link.split('#').next().unwrap_or_default();
            if target.is_empty() {
                continue;
            }
            let dir: &Path = page.parent().expect("folder");
            if !dir.join(target).exists() {
                problems.push(format!("{name} links to {link}, which does not exist"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
