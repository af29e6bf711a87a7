//! Configuration: the YAML file and the registers it names, loaded in two layers, and the one
//! compile step every command and every reload goes through.
//!
//! `keys` reads the file as a tree with the position of every key and reports **every** unknown
//! key at once (a misspelt known key with the one meant); `raw` holds serde structs that mirror
//! the file (positions kept with `serde_saphyr::Spanned`; unknown keys are `keys`' to report);
//! `registers` reads register lists written inline or in separate YAML/CSV files (UTF-8, UTF-8
//! with BOM, GB18030/GBK), bounded in size and exactly decoded; `validate` turns them into the
//! domain types of `model`, collecting every problem with its file, line and column: numbers
//! within their bounds, crons compiled, every address canonical (IPv4-mapped IPv6 as IPv4) and
//! every segment enumerable (no `/0`, nothing past `scope::MAX_ENUMERATED`); `ports` knows port
//! lists, ranges and the named sets. Trust anchors (`trust.ca_files`) are parsed here too.
//! Besides the registers, the file holds the settings of the rules (`rules`: extra rule folders,
//! per-rule overrides), of compliance checks (`compliance`) and the waivers (`exceptions`, a
//! register like the others). Overrides and waivers name rule ids, which only the rule loader
//! knows: they keep their [`Position`] so `rules::RuleSet::load` can report an unknown id where
//! it was written.
//!
//! `compile` ([`Loaded::compile`]) is the step above: config and registers, then rules,
//! schedules, bulletin templates and secrets, into a [`Loaded`] that can run, or every problem.
//! `check-config`, `scan`, `bulletin`, `outbox`, `demo`, the daemon's start and each SIGHUP use
//! it and nothing else, so what `check-config` accepts no later command rejects.
//!
//! Output: a [`Config`] that the rest of netpatrol can trust, or [`ConfigErrors`]; a [`Loaded`],
//! or its [`Problem`]s. Loading never panics; a YAML syntax or type error stops only the file it
//! is in (after its unknown keys are reported).

mod compile;
mod keys;
mod model;
mod ports;
mod raw;
mod registers;
mod validate;

pub use crate::problem::{Position, Problem};
pub use compile::{Loaded, Schedule, print_problems, secret};
pub use model::*;
pub use ports::named_port_set;
pub use validate::{canonical_net, parse_cron};

use std::fmt;
use std::path::Path;

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
    match registers::read_capped(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => load_str(&text, path),
            Err(e) => {
                let bytes = e.as_bytes();
                let good =
                    std::str::from_utf8(&bytes[..e.utf8_error().valid_up_to()]).unwrap_or("");
                let line = good.matches('\n').count() as u64 + 1;
                let column = good.rsplit('\n').next().unwrap_or("").chars().count() as u64 + 1;
                Err(ConfigErrors {
                    problems: vec![Problem::at(
                        path,
                        line,
                        column,
                        "the config file is not valid utf-8",
                    )],
                })
            }
        },
        Err(err) => Err(ConfigErrors {
            problems: vec![Problem::new(
                path,
                format!("cannot read the config file: {err}"),
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
    // An empty document is an empty map: report the missing `segments`, not a parse error.
    let text = if text.trim().is_empty() { "{}" } else { text };
    // First every unknown key, from a tree of the whole file; then the typed parse, which
    // ignores them.
    match serde_saphyr::from_str::<keys::Tree>(text) {
        Ok(tree) => keys::check_config(&tree, path, &mut problems),
        Err(e) => {
            return Err(ConfigErrors {
                problems: vec![registers::yaml_problem(path, &e)],
            });
        }
    }
    let mut file = match serde_saphyr::from_str::<raw::ConfigFile>(text) {
        Ok(file) => file,
        Err(e) => {
            problems.push(registers::yaml_problem(path, &e));
            return Err(ConfigErrors {
                problems: sort(problems, path),
            });
        }
    };
    let regs = registers::load_all(&mut file, path, &base, &mut problems);
    check_rule_dirs(&file, path, &base, &mut problems);
    check_trust(&file, path, &base, &mut problems);
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

/// Each `trust.ca_files` entry must be a readable PEM file of certificates that parse: a bad
/// one would otherwise drop TLS trust silently at scan time. RSA, EC and SM2 (GB/T 32918)
/// roots alike: parsed with x509-parser, which, unlike webpki, does not refuse SM2 keys.
fn check_trust(file: &raw::ConfigFile, path: &Path, base: &Path, problems: &mut Vec<Problem>) {
    for entry in file.trust.iter().flat_map(|t| &t.ca_files) {
        let full = base.join(&entry.value);
        let at = &entry.referenced;
        let mut fail =
            |message: String| problems.push(Problem::at(path, at.line(), at.column(), message));
        let bytes = match registers::read_capped(&full) {
            Ok(bytes) => bytes,
            Err(err) => {
                fail(format!("cannot read CA file `{}`: {err}", full.display()));
                continue;
            }
        };
        let (mut certificates, mut failed) = (0, false);
        for (index, pem) in x509_parser::pem::Pem::iter_from_buffer(&bytes).enumerate() {
            let pem = match pem {
                Ok(pem) => pem,
                Err(err) => {
                    fail(format!(
                        "CA file `{}` is not a PEM file: block {}: {err}",
                        full.display(),
                        index + 1
                    ));
                    failed = true;
                    break;
                }
            };
            if pem.label != "CERTIFICATE" && pem.label != "TRUSTED CERTIFICATE" {
                continue;
            }
            match pem.parse_x509() {
                Ok(_) => certificates += 1,
                Err(err) => {
                    let reason = match err {
                        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => {
                            x509_reason(&e)
                        }
                        x509_parser::nom::Err::Incomplete(_) => "it is truncated".to_string(),
                    };
                    fail(format!(
                        "CA file `{}`: certificate {} is not X.509: {reason}",
                        full.display(),
                        index + 1
                    ));
                    failed = true;
                }
            }
        }
        if certificates == 0 && !failed {
            fail(format!(
                "CA file `{}` holds no PEM certificate",
                full.display()
            ));
        }
    }
}

/// x509-parser's reason, without the parser's internals (`NomError(Eof)`).
fn x509_reason(error: &x509_parser::error::X509Error) -> String {
    use x509_parser::error::X509Error;
    match error {
        X509Error::Der(_) | X509Error::NomError(_) => "malformed DER".to_string(),
        other => registers::lowercase_first(&other.to_string()),
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
    // A problem found twice (by two checks of the same value) is printed once.
    problems.dedup();
    problems
}
