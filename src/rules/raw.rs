//! The raw layer of a rule file: serde structs that mirror the YAML exactly.
//!
//! Keys deny unknown fields; everything validation must point at keeps its position
//! (`Spanned`). Required keys are `Option` here so that a rule missing one becomes a problem
//! naming that rule while the rest of the file is still checked.

use std::fmt;

use serde::Deserialize;
use serde::de;
use serde_saphyr::Spanned;

/// A string value with its position.
pub type Text = Spanned<String>;

/// A whole rule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFileConfig {
    /// The rules of this file; default none.
    #[serde(default)]
    pub rules: Vec<Spanned<RuleConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Required, unique across every rule file: `area.name`, lowercase.
    #[serde(default)]
    pub id: Option<Text>,
    /// Required: `{zh, en}`.
    #[serde(default)]
    pub title: Option<Spanned<TextConfig>>,
    /// Required: critical | high | medium | low | info.
    #[serde(default)]
    pub severity: Option<Text>,
    /// Articles or standard clauses the rule rests on; default none.
    #[serde(default)]
    pub basis: Vec<Text>,
    /// Required: `{zh, en}`, what is wrong and why it matters.
    #[serde(default)]
    pub description: Option<Spanned<TextConfig>>,
    /// Required: `{zh, en}`, what the department must do.
    #[serde(default)]
    pub remediation: Option<Spanned<TextConfig>>,
    /// Days from first seen to the rectification deadline, 0 to 3650; default 30.
    #[serde(default)]
    pub deadline_days: Option<Spanned<u64>>,
    /// Required: host | service | segment | approval | project.
    #[serde(default)]
    pub subject: Option<Text>,
    /// Required: the condition.
    #[serde(default)]
    pub when: Option<Spanned<ConditionConfig>>,
    /// Required: `{zh, en}` templates with `{fact.name}` placeholders.
    #[serde(default)]
    pub evidence: Option<Spanned<TextConfig>>,
}

/// A text in both languages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// Required, non-empty.
    #[serde(default)]
    pub zh: Option<Text>,
    /// Required, non-empty.
    #[serde(default)]
    pub en: Option<Text>,
}

/// One condition: exactly one of `all`, `any`, `not`, or `fact` with exactly one operator.
/// Kept flat (rather than an enum) so serde keeps every position and unknown keys are denied.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    /// Every condition holds.
    #[serde(default)]
    pub all: Option<Vec<Spanned<ConditionConfig>>>,
    /// At least one condition holds.
    #[serde(default)]
    pub any: Option<Vec<Spanned<ConditionConfig>>>,
    /// The condition does not hold.
    #[serde(default)]
    pub not: Option<Box<Spanned<ConditionConfig>>>,
    /// A fact of the catalogue, tested by one operator.
    #[serde(default)]
    pub fact: Option<Text>,
    #[serde(default)]
    pub equals: Option<Spanned<Scalar>>,
    #[serde(default, rename = "in")]
    pub in_: Option<Spanned<Vec<Spanned<Scalar>>>>,
    #[serde(default)]
    pub contains: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub regex: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub lt: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub le: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub gt: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub ge: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub exists: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub empty: Option<Spanned<Scalar>>,
}

/// A YAML scalar operand, typed as YAML reads it (`false` is a boolean, `"false"` a string).
/// Checked against the fact's type after parsing, so a mismatch names the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Str(s) => f.write_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a boolean, an integer or a string")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
