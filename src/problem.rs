//! A problem with what the operator wrote (config, register, rule or template file) and where:
//! a leaf type shared by `config`, `rules` and the compile step, printed `PATH:LINE:COL: message`.
//! It depends on nothing else in netpatrol.

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
