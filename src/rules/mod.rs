//! Rules: the policy half of "reconcile + rules". Facts in, hits out.
//!
//! Stage: after reconciliation has computed the [`Facts`] of each subject (host, service,
//! segment, approval, project). Input at load: the built-in pack (`rules/*.yaml`, embedded in
//! the binary so it works from any folder), every `*.yaml` of the config's `rules.dirs`, and the
//! config's `rules.overrides` and `exceptions` (whose rule ids only this module can check).
//! Output: a [`RuleSet`], or every [`Problem`] found, printed like config problems
//! (`PATH:LINE:COL: message`). At run time, [`RuleSet::evaluate`] returns the [`Hit`]s for one
//! subject's facts.
//!
//! Invariants: evaluation is pure, synchronous and cannot fail — everything that can be wrong
//! with a rule (unknown fact, a fact the subject cannot see, an operator that does not suit the
//! fact's type, a bad regex, a bad evidence placeholder) is found at load. A rule never fires on
//! a fact that was not gathered (see `condition` for the three-valued logic). Each rule's
//! [`Rule::needs`] says which probes must have run before its absence means anything.
//!
//! # Why a small matcher language
//!
//! Conditions are YAML data — `all`/`any`/`not` over leaves `{fact: NAME, OP: VALUE}` with the
//! operators `equals`, `in`, `contains`, `regex`, `lt`/`le`/`gt`/`ge`, `exists`, `empty` —
//! in the manner of nuclei matchers or Prometheus/Alertmanager matchers. The bureau's operators
//! can read and adapt them without learning a programming language, and they diff cleanly in
//! review. Because the fact catalogue is typed, each leaf is checked and compiled when the rules
//! load, with the file, line and column of the mistake. An expression language such as CEL
//! (the `cel-interpreter` crate) was considered: it is more expressive than these rules need,
//! its values are dynamically typed so a misspelt fact or a type mismatch surfaces as an error
//! during evaluation (in the middle of a scan) rather than at load, and its errors carry no
//! YAML position. The rules here need comparisons and boolean structure, nothing more.

mod condition;
mod raw;
mod template;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use chrono::{Days, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::config::Config;
use crate::facts::{Facts, Subject};
use crate::probe::ProbeKind;
use crate::problem::Problem;
pub use crate::severity::Severity;
use condition::{Compiler, Condition};
use raw::{RuleConfig, RuleFileConfig, TextConfig};
use template::Template;

/// The built-in rule pack, one file per area, embedded at build time.
const BUILTIN: &[(&str, &str)] = &[
    ("rules/access.yaml", include_str!("../../rules/access.yaml")),
    (
        "rules/network.yaml",
        include_str!("../../rules/network.yaml"),
    ),
    (
        "rules/project.yaml",
        include_str!("../../rules/project.yaml"),
    ),
    ("rules/crypto.yaml", include_str!("../../rules/crypto.yaml")),
    ("rules/tls.yaml", include_str!("../../rules/tls.yaml")),
    ("rules/http.yaml", include_str!("../../rules/http.yaml")),
    (
        "rules/exposure.yaml",
        include_str!("../../rules/exposure.yaml"),
    ),
];

/// Rectification deadline when a rule names none.
const DEFAULT_DEADLINE_DAYS: u64 = 30;

/// A user-facing text in Chinese and English.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    pub zh: String,
    pub en: String,
}

impl Text {
    /// The text in `lang` ("en" gives English, anything else Chinese, the default).
    pub fn lang(&self, lang: &str) -> &str {
        if lang == "en" { &self.en } else { &self.zh }
    }
}

/// One loaded, checked and compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub title: Text,
    /// After `rules.overrides`.
    pub severity: Severity,
    pub basis: Vec<String>,
    pub description: Text,
    pub remediation: Text,
    /// Rectification deadline: first seen plus this many days.
    pub deadline_days: u32,
    pub subject: Subject,
    /// The probes the facts of the condition need: a scan that did not run all of them could
    /// not have seen the condition, so the finding's absence means nothing.
    pub needs: BTreeSet<ProbeKind>,
    condition: Condition,
    evidence: (Template, Template),
}

impl Rule {
    /// Whether the condition holds (true, not merely "not false") for these facts.
    pub fn holds(&self, facts: &Facts) -> bool {
        self.condition.eval(facts) == Some(true)
    }

    /// The evidence, rendered from these facts.
    pub fn evidence(&self, facts: &Facts) -> Text {
        Text {
            zh: self.evidence.0.render(facts),
            en: self.evidence.1.render(facts),
        }
    }

    /// The rectification deadline of a finding first seen on `first_seen`.
    pub fn due(&self, first_seen: NaiveDate) -> NaiveDate {
        first_seen
            .checked_add_days(Days::new(self.deadline_days.into()))
            .unwrap_or(NaiveDate::MAX)
    }
}

/// A rule whose condition holds, with its evidence.
#[derive(Debug, Clone)]
pub struct Hit<'a> {
    pub rule: &'a Rule,
    pub evidence: Text,
}

/// Every enabled rule, compiled.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Every id loaded, disabled ones included.
    known: BTreeSet<String>,
}

impl RuleSet {
    /// The built-in pack plus every `*.yaml` (and `*.yml`) of `config.rules.dirs` (each folder in
    /// file-name order), with `config.rules.overrides` applied; checks that every override and
    /// every waiver of `config.exceptions` names a loaded rule. All problems are collected.
    pub fn load(config: &Config) -> Result<RuleSet, Vec<Problem>> {
        let mut loader = Loader::default();
        for (name, text) in BUILTIN {
            loader.file(Path::new(name), text);
        }
        for dir in &config.rules.dirs {
            loader.dir(dir, &config.source);
        }
        let Loader {
            rules,
            seen,
            mut problems,
            mut files,
        } = loader;

        for (id, o) in &config.rules.overrides {
            if !seen.contains_key(id) {
                problems.push(o.at.problem(format!("override of unknown rule `{id}`")));
            }
        }
        for waiver in &config.exceptions {
            if !seen.keys().any(|id| waiver.matches_rule(id)) {
                let message = format!("waiver rule `{}` matches no rule", waiver.rule);
                problems.push(waiver.at.problem(message));
            }
        }
        if !problems.is_empty() {
            files.push(config.source.clone());
            return Err(sort(problems, &files));
        }

        let mut enabled = Vec::with_capacity(rules.len());
        for mut rule in rules {
            match config.rules.overrides.get(&rule.id) {
                Some(o) if !o.enabled => continue,
                Some(o) => rule.severity = o.severity.unwrap_or(rule.severity),
                None => {}
            }
            enabled.push(rule);
        }
        Ok(RuleSet {
            rules: enabled,
            known: seen.into_keys().collect(),
        })
    }

    /// The rules of one file's text alone, as if read from `path`: no built-in pack, no
    /// overrides. For tests and tools that check a single rule file.
    pub fn parse(text: &str, path: &Path) -> Result<RuleSet, Vec<Problem>> {
        let mut loader = Loader::default();
        loader.file(path, text);
        if !loader.problems.is_empty() {
            return Err(sort(loader.problems, &loader.files));
        }
        Ok(RuleSet {
            rules: loader.rules,
            known: loader.seen.into_keys().collect(),
        })
    }

    /// The enabled rules, in load order (built-in pack first).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// An enabled rule.
    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Whether `id` was loaded, even if an override disabled it.
    pub fn is_known(&self, id: &str) -> bool {
        self.known.contains(id)
    }

    /// Pure: the enabled rules of `subject` whose condition holds for `facts`, with their
    /// evidence. A service's facts must already include its host's (`Facts::extend`).
    pub fn evaluate(&self, subject: Subject, facts: &Facts) -> Vec<Hit<'_>> {
        self.rules
            .iter()
            .filter(|r| r.subject == subject && r.holds(facts))
            .map(|rule| Hit {
                rule,
                evidence: rule.evidence(facts),
            })
            .collect()
    }
}

/// Orders problems by file (in load order), then position; equal positions keep their order.
fn sort(mut problems: Vec<Problem>, files: &[PathBuf]) -> Vec<Problem> {
    problems.sort_by_key(|p| {
        (
            files
                .iter()
                .position(|f| *f == p.file)
                .unwrap_or(usize::MAX),
            p.line.unwrap_or(0),
            p.column.unwrap_or(0),
        )
    });
    problems
}

/// Whether `id` is `area.name`: lowercase ASCII letters, digits and `_`, dot-separated parts
/// each starting with a letter.
fn is_rule_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            p.starts_with(|c: char| c.is_ascii_lowercase())
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

#[derive(Default)]
struct Loader {
    rules: Vec<Rule>,
    /// Every id written (valid rule or not), with where it was first written, `PATH:LINE`.
    seen: HashMap<String, String>,
    problems: Vec<Problem>,
    /// Files in load order, for sorting problems.
    files: Vec<PathBuf>,
}

/// A problem at a YAML position.
fn at<T>(path: &Path, value: &Spanned<T>, message: impl Into<String>) -> Problem {
    Problem::at(
        path,
        value.referenced.line(),
        value.referenced.column(),
        message,
    )
}

impl Loader {
    fn dir(&mut self, dir: &Path, config: &Path) {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) => {
                let message = format!(
                    "cannot read rules folder `{}`: {}",
                    dir.display(),
                    crate::problem::io_message(&err)
                );
                self.problems.push(Problem::new(config, message));
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml")
                    })
            })
            .collect();
        paths.sort();
        for path in paths {
            match std::fs::read(&path) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => self.file(&path, &text),
                    Err(_) => {
                        self.files.push(path.clone());
                        self.problems
                            .push(Problem::new(&path, "a rule file must be utf-8"));
                    }
                },
                Err(err) => {
                    self.files.push(path.clone());
                    let message = format!(
                        "cannot read rule file: {}",
                        crate::problem::io_message(&err)
                    );
                    self.problems.push(Problem::new(&path, message));
                }
            }
        }
    }

    /// Loads one rule file. A YAML syntax or shape error (such as an unknown key) stops this
    /// file only; every other problem is reported per rule.
    fn file(&mut self, path: &Path, text: &str) {
        self.files.push(path.to_path_buf());
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim().is_empty() {
            return;
        }
        let parsed: RuleFileConfig = match serde_saphyr::from_str(text) {
            Ok(parsed) => parsed,
            Err(err) => {
                self.problems.push(crate::problem::yaml_problem(path, &err));
                return;
            }
        };
        for raw in &parsed.rules {
            if let Some(rule) = self.rule(path, raw) {
                self.rules.push(rule);
            }
        }
    }

    /// Checks and compiles one rule; `None` when it has problems (all reported).
    fn rule(&mut self, path: &Path, raw: &Spanned<RuleConfig>) -> Option<Rule> {
        let r = &raw.value;
        let Some(id_text) = &r.id else {
            self.problems.push(at(path, raw, "rule without `id`"));
            return None;
        };
        let before = self.problems.len();
        let id = id_text.value.trim().to_string();
        let say = |message: &str| format!("rule `{id}`: {message}");
        if !is_rule_id(&id) {
            self.problems.push(at(
                path,
                id_text,
                format!(
                    "invalid rule id `{id}`: expected `area.name` in lowercase letters, digits and `_`"
                ),
            ));
        }
        match self.seen.get(&id) {
            Some(first) => {
                let message = format!("duplicate rule id `{id}` (first at {first})");
                self.problems.push(at(path, id_text, message));
            }
            None => {
                let mut first = format!("{}:{}", path.display(), id_text.referenced.line());
                // Operators have no rules/ folder: say where the first one came from.
                if BUILTIN.iter().any(|(name, _)| Path::new(name) == path) {
                    first.push_str(", built in");
                }
                self.seen.insert(id.clone(), first);
            }
        }

        let severity = match &r.severity {
            None => {
                self.problems
                    .push(at(path, id_text, say("missing `severity`")));
                None
            }
            Some(s) => Severity::parse(&s.value).or_else(|| {
                let message = format!(
                    "unknown severity `{}`: expected one of {}",
                    s.value,
                    Severity::NAMES
                );
                self.problems.push(at(path, s, say(&message)));
                None
            }),
        };
        let subject = match &r.subject {
            None => {
                self.problems.push(at(path, id_text, say("missing `subject`")));
                None
            }
            Some(s) => Subject::parse(s.value.trim()).or_else(|| {
                let message = format!(
                    "unknown subject `{}`: expected one of host, service, segment, approval, project",
                    s.value
                );
                self.problems.push(at(path, s, say(&message)));
                None
            }),
        };
        let deadline_days = match &r.deadline_days {
            None => DEFAULT_DEADLINE_DAYS as u32,
            Some(d) if d.value <= 3650 => d.value as u32,
            Some(d) => {
                let message = format!("deadline_days must be 0 to 3650, got {}", d.value);
                self.problems.push(at(path, d, say(&message)));
                0
            }
        };
        let mut basis = Vec::new();
        for b in &r.basis {
            if b.value.trim().is_empty() {
                self.problems.push(at(path, b, say("empty `basis` item")));
            } else {
                basis.push(b.value.trim().to_string());
            }
        }
        let title = self.text(path, id_text, &id, "title", r.title.as_ref());
        let description = self.text(path, id_text, &id, "description", r.description.as_ref());
        let remediation = self.text(path, id_text, &id, "remediation", r.remediation.as_ref());
        // Checks presence and both languages; the templates themselves are parsed below.
        let evidence_text = self.text(path, id_text, &id, "evidence", r.evidence.as_ref());

        let mut compiler = Compiler {
            file: path,
            rule: &id,
            subject,
            problems: &mut self.problems,
            needs: BTreeSet::new(),
        };
        let condition = match &r.when {
            Some(when) => compiler.compile(when),
            None => {
                compiler
                    .problems
                    .push(at(path, id_text, say("missing `when`")));
                None
            }
        };
        let needs = compiler.needs;

        let evidence = r.evidence.as_ref().and_then(|e| {
            let zh = self.template(path, &id, "evidence.zh", e.value.zh.as_ref(), subject);
            let en = self.template(path, &id, "evidence.en", e.value.en.as_ref(), subject);
            zh.zip(en)
        });

        if self.problems.len() > before {
            return None;
        }
        Some(Rule {
            id,
            title: title?,
            severity: severity?,
            basis,
            description: description?,
            remediation: remediation?,
            deadline_days,
            subject: subject?,
            needs,
            condition: condition?,
            evidence: evidence_text.and(evidence)?,
        })
    }

    /// A required `{zh, en}` text: present, both languages present and not blank.
    fn text(
        &mut self,
        path: &Path,
        id_text: &Spanned<String>,
        id: &str,
        key: &str,
        raw: Option<&Spanned<TextConfig>>,
    ) -> Option<Text> {
        let Some(raw) = raw else {
            self.problems
                .push(at(path, id_text, format!("rule `{id}`: missing `{key}`")));
            return None;
        };
        let mut lang = |name: &str, value: Option<&Spanned<String>>| match value {
            None => {
                self.problems.push(at(
                    path,
                    raw,
                    format!("rule `{id}`: missing `{key}.{name}`"),
                ));
                None
            }
            Some(v) if v.value.trim().is_empty() => {
                self.problems
                    .push(at(path, v, format!("rule `{id}`: empty `{key}.{name}`")));
                None
            }
            Some(v) => Some(v.value.trim().to_string()),
        };
        let zh = lang("zh", raw.value.zh.as_ref());
        let en = lang("en", raw.value.en.as_ref());
        Some(Text { zh: zh?, en: en? })
    }

    /// An evidence template, its problems reported at the text's position.
    fn template(
        &mut self,
        path: &Path,
        id: &str,
        key: &str,
        value: Option<&Spanned<String>>,
        subject: Option<Subject>,
    ) -> Option<Template> {
        let value = value?;
        match Template::parse(value.value.trim(), subject) {
            Ok(template) => Some(template),
            Err(messages) => {
                for message in messages {
                    self.problems.push(at(
                        path,
                        value,
                        format!("rule `{id}`: {message} in `{key}`"),
                    ));
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
