//! Conditions: compiled from the raw YAML at load, evaluated against [`Facts`].
//!
//! Compilation type-checks every leaf against the fact catalogue (the fact exists, the rule's
//! subject can see it, the operator suits its type, the operand suits the operator) and builds
//! regexes once. Evaluation is then total: it cannot fail, only answer.
//!
//! Evaluation is three-valued. A null fact (not gathered, not applicable) makes its leaf
//! *unknown*, except under `exists`, which is about exactly that. `all` is false when any part
//! is false, else unknown when any part is unknown; `any` mirrors it; `not` keeps unknown
//! unknown. A rule fires only when its condition is *true*, so a rule never fires on data the
//! scan did not gather — not even through `not`, which a two-valued "null is false" would turn
//! into "null is true".

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;
use serde_saphyr::Spanned;

use super::raw::{ConditionConfig, Scalar};
use crate::facts::{self, FactDef, Facts, Kind, Subject, Value};
use crate::probe::ProbeKind;
use crate::problem::Problem;

/// A compiled condition.
#[derive(Debug, Clone)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Leaf { fact: &'static FactDef, op: Op },
}

/// A leaf operator with its checked operand.
#[derive(Debug, Clone)]
pub enum Op {
    Equals(Scalar),
    In(Vec<Scalar>),
    Contains(String),
    Regex(Regex),
    Lt(i64),
    Le(i64),
    Gt(i64),
    Ge(i64),
    Exists(bool),
    Empty(bool),
}

impl Condition {
    /// `Some(true)` holds, `Some(false)` does not, `None` unknown (a null fact decided it).
    pub fn eval(&self, facts: &Facts) -> Option<bool> {
        match self {
            Condition::All(parts) => {
                let mut unknown = false;
                for part in parts {
                    match part.eval(facts) {
                        Some(false) => return Some(false),
                        None => unknown = true,
                        Some(true) => {}
                    }
                }
                (!unknown).then_some(true)
            }
            Condition::Any(parts) => {
                let mut unknown = false;
                for part in parts {
                    match part.eval(facts) {
                        Some(true) => return Some(true),
                        None => unknown = true,
                        Some(false) => {}
                    }
                }
                (!unknown).then_some(false)
            }
            Condition::Not(inner) => inner.eval(facts).map(|b| !b),
            Condition::Leaf { fact, op } => op.test(facts.get(fact.name)),
        }
    }
}

impl Op {
    /// The operator applied to a value; `None` for null (and, defensively, for a value whose
    /// type is not the catalogue's: a wrong type from upstream must not make a rule fire).
    fn test(&self, value: &Value) -> Option<bool> {
        if let Op::Exists(want) = self {
            return Some(!matches!(value, Value::Null) == *want);
        }
        match (self, value) {
            (_, Value::Null) => None,
            (Op::Equals(s), v) => scalar_equals(s, v),
            (Op::In(items), v) => {
                let mut hit = false;
                for item in items {
                    hit |= scalar_equals(item, v)?;
                }
                Some(hit)
            }
            (Op::Contains(s), Value::List(items)) => Some(items.iter().any(|i| i == s)),
            (Op::Contains(s), Value::Str(text)) => Some(text.contains(s.as_str())),
            (Op::Regex(re), Value::Str(text)) => Some(re.is_match(text)),
            (Op::Lt(n), Value::Int(v)) => Some(v < n),
            (Op::Le(n), Value::Int(v)) => Some(v <= n),
            (Op::Gt(n), Value::Int(v)) => Some(v > n),
            (Op::Ge(n), Value::Int(v)) => Some(v >= n),
            (Op::Empty(want), Value::List(items)) => Some(items.is_empty() == *want),
            _ => None,
        }
    }
}

fn scalar_equals(s: &Scalar, v: &Value) -> Option<bool> {
    match (s, v) {
        (Scalar::Bool(a), Value::Bool(b)) => Some(a == b),
        (Scalar::Int(a), Value::Int(b)) => Some(a == b),
        (Scalar::Str(a), Value::Str(b)) => Some(a == b),
        _ => None,
    }
}

/// What compilation needs to know and where it reports.
pub struct Compiler<'a> {
    pub file: &'a Path,
    pub rule: &'a str,
    /// `None` when the rule's subject was invalid: visibility is then not checked.
    pub subject: Option<Subject>,
    pub problems: &'a mut Vec<Problem>,
    /// The probes of every fact read, collected as leaves compile.
    pub needs: BTreeSet<ProbeKind>,
}

const OPS: &str = "equals, in, contains, regex, lt, le, gt, ge, exists, empty";

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Bool => "a boolean",
        Kind::Int => "an integer",
        Kind::Str => "a string",
        Kind::List => "a list",
    }
}

fn scalar_kind(s: &Scalar) -> Kind {
    match s {
        Scalar::Bool(_) => Kind::Bool,
        Scalar::Int(_) => Kind::Int,
        Scalar::Str(_) => Kind::Str,
    }
}

impl Compiler<'_> {
    fn problem<T>(&mut self, at: &Spanned<T>, message: impl std::fmt::Display) {
        let at = &at.referenced;
        self.problems.push(Problem::at(
            self.file,
            at.line(),
            at.column(),
            format!("rule `{}`: {message}", self.rule),
        ));
    }

    /// Compiles one condition; `None` when it has problems (all of them are reported).
    pub fn compile(&mut self, raw: &Spanned<ConditionConfig>) -> Option<Condition> {
        let c = &raw.value;
        let shapes = [
            c.all.is_some(),
            c.any.is_some(),
            c.not.is_some(),
            c.fact.is_some(),
        ];
        if shapes.iter().filter(|s| **s).count() != 1 {
            self.problem(
                raw,
                "a condition needs exactly one of `all`, `any`, `not` or `fact`",
            );
            return None;
        }
        if let Some(parts) = c.all.as_ref().or(c.any.as_ref()) {
            let which = if c.all.is_some() { "all" } else { "any" };
            if let Some(op) = self.first_op(c) {
                self.problem(raw, format!("`{op}` needs a `fact`, not `{which}`"));
                return None;
            }
            if parts.is_empty() {
                self.problem(raw, format!("`{which}` needs at least one condition"));
                return None;
            }
            // Compile every part, so every problem is reported, before giving up.
            let compiled: Vec<Option<Condition>> = parts.iter().map(|p| self.compile(p)).collect();
            let compiled: Option<Vec<Condition>> = compiled.into_iter().collect();
            return compiled.map(|parts| {
                if c.all.is_some() {
                    Condition::All(parts)
                } else {
                    Condition::Any(parts)
                }
            });
        }
        if let Some(inner) = &c.not {
            if let Some(op) = self.first_op(c) {
                self.problem(raw, format!("`{op}` needs a `fact`, not `not`"));
                return None;
            }
            return self.compile(inner).map(|c| Condition::Not(Box::new(c)));
        }
        let name = c.fact.as_ref()?;
        self.leaf(raw, name)
    }

    /// The first operator key written, for "operator without a fact" messages.
    fn first_op(&self, c: &ConditionConfig) -> Option<&'static str> {
        self.ops(c).first().map(|(name, _)| *name)
    }

    /// The operators written in `c`, by name, with their operand.
    fn ops<'c>(&self, c: &'c ConditionConfig) -> Vec<(&'static str, Operand<'c>)> {
        let one =
            |name, v: &'c Option<Spanned<Scalar>>| v.as_ref().map(|v| (name, Operand::One(v)));
        [
            one("equals", &c.equals),
            c.in_.as_ref().map(|v| ("in", Operand::Many(v))),
            one("contains", &c.contains),
            one("regex", &c.regex),
            one("lt", &c.lt),
            one("le", &c.le),
            one("gt", &c.gt),
            one("ge", &c.ge),
            one("exists", &c.exists),
            one("empty", &c.empty),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn leaf(
        &mut self,
        raw: &Spanned<ConditionConfig>,
        name: &Spanned<String>,
    ) -> Option<Condition> {
        let ops = self.ops(&raw.value);
        let fact = match facts::lookup(name.value.trim()) {
            Some(fact) => Some(fact),
            None => {
                self.problem(name, format!("unknown fact `{}`", name.value));
                None
            }
        };
        if let (Some(fact), Some(subject)) = (fact, self.subject)
            && !subject.sees(fact.subject)
        {
            self.problem(
                name,
                format!(
                    "fact `{}` belongs to a {} and is not visible from subject `{}`",
                    fact.name,
                    fact.subject.as_str(),
                    subject.as_str()
                ),
            );
        }
        let [(op_name, operand)] = ops.as_slice() else {
            self.problem(
                raw,
                format!("fact `{}` needs exactly one operator: {OPS}", name.value),
            );
            return None;
        };
        let fact = fact?;
        if let Some(needs) = fact.needs {
            self.needs.insert(needs);
        }
        let op = self.op(fact, op_name, operand)?;
        Some(Condition::Leaf { fact, op })
    }

    /// Checks the operator against the fact's type and the operand against the operator.
    fn op(&mut self, fact: &'static FactDef, name: &str, operand: &Operand<'_>) -> Option<Op> {
        let allowed: &[Kind] = match name {
            "equals" => &[Kind::Bool, Kind::Int, Kind::Str],
            "in" => &[Kind::Int, Kind::Str],
            "contains" => &[Kind::List, Kind::Str],
            "regex" => &[Kind::Str],
            "lt" | "le" | "gt" | "ge" => &[Kind::Int],
            "exists" => &[Kind::Bool, Kind::Int, Kind::Str, Kind::List],
            _ => &[Kind::List], // empty
        };
        if !allowed.contains(&fact.kind) {
            let at = operand.position();
            self.problems.push(Problem::at(
                self.file,
                at.line(),
                at.column(),
                format!(
                    "rule `{}`: `{name}` does not apply to `{}`, which is {}",
                    self.rule,
                    fact.name,
                    kind_name(fact.kind)
                ),
            ));
            return None;
        }
        // The operand's expected type: the fact's own for comparisons, else fixed.
        let want = match name {
            "equals" | "in" => fact.kind,
            "contains" | "regex" => Kind::Str,
            "exists" | "empty" => Kind::Bool,
            _ => Kind::Int,
        };
        let values: Vec<&Spanned<Scalar>> = match operand {
            Operand::One(v) => vec![*v],
            Operand::Many(list) => {
                if list.value.is_empty() {
                    self.problem(*list, "`in` needs at least one value");
                    return None;
                }
                list.value.iter().collect()
            }
        };
        let mut ok = true;
        for v in &values {
            if scalar_kind(&v.value) != want {
                self.problem(
                    *v,
                    format!(
                        "`{name}` on `{}` needs {}, got `{}`",
                        fact.name,
                        kind_name(want),
                        v.value
                    ),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        let first = &values[0].value;
        let int = || match first {
            Scalar::Int(n) => *n,
            _ => 0,
        };
        let flag = matches!(first, Scalar::Bool(true));
        let text = || first.to_string();
        Some(match name {
            "equals" => Op::Equals(first.clone()),
            "in" => Op::In(values.iter().map(|v| v.value.clone()).collect()),
            "contains" => Op::Contains(text()),
            "regex" => match regex::RegexBuilder::new(&text())
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => Op::Regex(re),
                Err(err) => {
                    self.problem(
                        values[0],
                        format!("invalid regex `{}`: {}", text(), regex_message(&err)),
                    );
                    return None;
                }
            },
            "lt" => Op::Lt(int()),
            "le" => Op::Le(int()),
            "gt" => Op::Gt(int()),
            "ge" => Op::Ge(int()),
            "exists" => Op::Exists(flag),
            _ => Op::Empty(flag),
        })
    }
}

/// An operand as written: one scalar, or the list of `in`.
enum Operand<'c> {
    One(&'c Spanned<Scalar>),
    Many(&'c Spanned<Vec<Spanned<Scalar>>>),
}

impl Operand<'_> {
    fn position(&self) -> &serde_saphyr::Location {
        match self {
            Operand::One(v) => &v.referenced,
            Operand::Many(v) => &v.referenced,
        }
    }
}

/// The one line of a regex error that says what is wrong, without the pattern echo and caret.
fn regex_message(err: &regex::Error) -> String {
    let text = err.to_string();
    let line = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or(text.trim());
    let mut chars = line.chars();
    match chars.next() {
        Some(c) => c
            .to_lowercase()
            .chain(chars)
            .collect::<String>()
            .trim_end_matches('.')
            .to_string(),
        None => String::new(),
    }
}
