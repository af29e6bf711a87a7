//! Configuration: the YAML file and the registers it names, loaded in two layers.
//!
//! `raw` holds serde structs that mirror the file exactly (`deny_unknown_fields`, positions kept
//! with `serde_saphyr::Spanned`); `registers` reads register lists written inline or in separate
//! YAML/CSV files (UTF-8, UTF-8 with BOM, GB18030/GBK); `validate` turns them into the domain
//! types of `model`, collecting **every** problem with its file, line and column; `ports` knows
//! port lists, ranges and the named sets. Besides the registers, the file holds the settings of
//! the rules (`rules`: extra rule folders, per-rule overrides), of compliance checks
//! (`compliance`) and the waivers (`exceptions`, a register like the others). Overrides and
//! waivers name rule ids, which only the rule loader knows: they keep their [`Position`] so
//! `rules::RuleSet::load` can report an unknown id where it was written.
//!
//! Output: a [`Config`] that the rest of netpatrol can trust, or [`ConfigErrors`]. Loading never
//! panics; a YAML syntax or type error stops only the file it is in.

mod model;
mod ports;
mod raw;
mod registers;
mod validate;

pub use model::*;
pub use ports::named_port_set;
pub(crate) use registers::{io_message, yaml_problem};

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; for a CSV register, the line of the row (the header is line 1).
    pub line: Option<u64>,
    /// 1-based, in characters; absent for CSV rows.
    pub column: Option<u64>,
    /// Lowercase, without the position.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(file: &Path, message: impl Into<String>) -> Self {
        Problem {
            file: file.to_path_buf(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    pub(crate) fn at(file: &Path, line: u64, column: u64, message: impl Into<String>) -> Self {
        // Line 0 is serde-saphyr's "unknown".
        Problem {
            file: file.to_path_buf(),
            line: (line > 0).then_some(line),
            column: (line > 0 && column > 0).then_some(column),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Where a value was written, kept in the model for checks that run after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub file: PathBuf,
    /// 1-based; for a CSV register, the line of the row.
    pub line: Option<u64>,
    /// 1-based, in characters; absent for CSV rows.
    pub column: Option<u64>,
    /// For a CSV row: the column the value came from, named in messages.
    pub key: Option<String>,
}

impl Position {
    /// A problem about the value written here.
    pub fn problem(&self, message: impl Into<String>) -> Problem {
        let message = match &self.key {
            Some(key) => format!("column `{key}`: {}", message.into()),
            None => message.into(),
        };
        Problem {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            message,
        }
    }
}

/// Every problem found: the config file's first, then each register file's, each by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates the config file at `path` and every register file it names.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => load_str(&text, path),
            Err(_) => Err(ConfigErrors {
                problems: vec![Problem::new(path, "the config file is not valid utf-8")],
            }),
        },
        Err(err) => Err(ConfigErrors {
            problems: vec![Problem::new(
                path,
                format!(
                    "cannot read the config file: {}",
                    registers::io_message(&err)
                ),
            )],
        }),
    }
}

/// Validates config text as if read from `path`: messages name `path`, and relative register,
/// store, trust and bulletin paths are resolved against its folder. Register files are read.
pub fn load_str(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut problems = Vec::new();
    let file = if text.trim().is_empty() {
        // An empty document is an empty map: report the missing `segments`, not a parse error.
        serde_saphyr::from_str::<raw::ConfigFile>("{}")
            .map_err(|e| registers::yaml_problem(path, &e))
    } else {
        serde_saphyr::from_str::<raw::ConfigFile>(text)
            .map_err(|e| registers::yaml_problem(path, &e))
    };
    let mut file = match file {
        Ok(file) => file,
        Err(problem) => {
            return Err(ConfigErrors {
                problems: vec![problem],
            });
        }
    };
    let regs = registers::load_all(&mut file, path, &base, &mut problems);
    check_rule_dirs(&file, path, &base, &mut problems);
    match validate::validate(file, regs, path, &base) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors {
            problems: sort(problems, path),
        }),
        Err(more) => {
            problems.extend(more);
            Err(ConfigErrors {
                problems: sort(problems, path),
            })
        }
    }
}

/// Each extra rule folder must be a readable folder: a typo in its name would otherwise
/// silently drop the operator's rules. Its files are read by `rules::RuleSet::load`.
fn check_rule_dirs(file: &raw::ConfigFile, path: &Path, base: &Path, problems: &mut Vec<Problem>) {
    for dir in file.rules.iter().flat_map(|r| &r.dirs) {
        let full = base.join(&dir.value);
        let message = match std::fs::read_dir(&full) {
            Ok(_) => continue,
            Err(err) => format!(
                "cannot read rules folder `{}`: {}",
                full.display(),
                registers::io_message(&err)
            ),
        };
        let at = &dir.referenced;
        problems.push(Problem::at(path, at.line(), at.column(), message));
    }
}

/// Orders problems by file (the config first, then register files by path), then position.
fn sort(mut problems: Vec<Problem>, config: &Path) -> Vec<Problem> {
    problems.sort_by(|a, b| {
        (
            a.file != config,
            &a.file,
            a.line.unwrap_or(0),
            a.column.unwrap_or(0),
        )
            .cmp(&(
                b.file != config,
                &b.file,
                b.line.unwrap_or(0),
                b.column.unwrap_or(0),
            ))
    });
    problems
}
