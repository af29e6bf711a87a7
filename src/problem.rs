//! A problem with what the operator wrote (config, register, rule or template file) and where:
//! a leaf type shared by `config`, `rules` and the compile step, printed `PATH:LINE:COL: message`.
//! It depends on nothing else in netpatrol. With it, the wording of the problems every loader
//! shares: a YAML parse error's, an I/O error's.

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
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        Problem {
            file: file.to_path_buf(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    pub fn at(file: &Path, line: u64, column: u64, message: impl Into<String>) -> Self {
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

/// A serde-saphyr error as a problem: its position, and its message without the position
/// suffix the library appends.
pub fn yaml_problem(path: &Path, err: &serde_saphyr::Error) -> Problem {
    let text = err.without_snippet().to_string();
    // The problem is placed at the use of an alias: its " (used at line L, column C)" suffix
    // says it again. A " (defined at line L, column C)" suffix, where the anchor is, stays.
    let text = match text.rfind(" (used at line ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    };
    let message = match text.rfind(" at line ") {
        Some(i)
            if text[i..].contains(", column ")
                && !text[i..].ends_with(')')
                && !text[..i].ends_with("(defined") =>
        {
            text[..i].to_string()
        }
        _ => text,
    };
    let message = lowercase_first(message.trim());
    // serde-saphyr's advice is for programmers, not for whoever edits the YAML.
    let message = match message.strip_suffix(", set DuplicateKeyPolicy in Options if acceptable") {
        Some(rest) => match rest.strip_prefix("duplicate mapping key: ") {
            Some(key) => format!("duplicate key `{key}`"),
            None => "duplicate key".to_string(),
        },
        None => message,
    };
    match err.location() {
        Some(at) => Problem::at(path, at.line(), at.column(), message),
        None => Problem::new(path, message),
    }
}

/// An I/O error's text, lowercase, for a problem message.
pub fn io_message(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    lowercase_first(text)
}

pub fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
