//! The one compile step: a config path in, a [`Loaded`] that can run out, or every problem.
//!
//! Shaped like vector's `src/config/compiler.rs`: a table of contents of named checks (`CHECKS`
//! lists them in order), each adding what it compiled or the problems it found. Every command
//! (`check-config`, `scan`, `bulletin`, `outbox`, `demo`), the daemon's start and every SIGHUP
//! go through [`Loaded::compile`], so what `check-config` accepts no later command rejects for a
//! config reason, and a reload refuses exactly what `check-config` would.
//!
//! The checks: the config file and its registers with every cross-check between them, numbers
//! within bounds, cron expressions (croner, organisation timezone) and trust anchors (the
//! `config` module proper); then the rules (built-in pack, `rules.dirs`, overrides and waivers
//! naming loaded rules), the schedules compiled, the bulletin templates compiled with
//! minijinja, and the secrets the config says it needs. A secret that is missing where the
//! config merely works less (an HTTP listener without an API token: POST is refused) is a
//! *warning*: printed, not fatal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use croner::Cron;

use super::{Config, ConfigErrors, Problem, parse_cron};
use crate::bulletin::{BulletinError, Templates};
use crate::daemon::access::Access;
use crate::rules::RuleSet;

/// The checks that run on a validated config, by name, in order: the table of contents of the
/// compile step. (Config and registers come first, in `config::load`: everything below reads
/// the validated [`Config`].) Each adds what it compiled to the [`Compiler`] or its problems;
/// every check runs, whatever the ones before it found. A new thing to prove at load (the
/// daemon's `web_config`, its read token) is a check here and a field of [`Loaded`].
const CHECKS: &[(&str, Check)] = &[
    ("rules", check_rules),
    ("schedules", check_schedules),
    ("templates", check_templates),
    ("access", check_access),
    ("secrets", check_secrets),
    ("hub", check_hub),
];

/// One check of the compile step.
type Check = fn(&mut Compiler);

/// What the checks have compiled so far.
struct Compiler {
    config: Config,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    rules: Option<RuleSet>,
    schedule: Option<Schedule>,
    templates: Option<Templates>,
    access: Access,
}

fn check_rules(c: &mut Compiler) {
    match RuleSet::load(&c.config) {
        Ok(rules) => c.rules = Some(rules),
        Err(more) => c.problems.extend(more),
    }
}

fn check_schedules(c: &mut Compiler) {
    c.schedule = schedule(&c.config, &mut c.problems);
}

fn check_templates(c: &mut Compiler) {
    match Templates::load(&c.config) {
        Ok(t) => c.templates = Some(t),
        Err(error) => c.problems.push(template_problem(&c.config, error)),
    }
}

/// The daemon's tokens (operator, read) and its web config (TLS files, bcrypt users).
fn check_access(c: &mut Compiler) {
    match Access::load(&c.config.daemon, &c.config.sensors) {
        Ok(access) => c.access = access,
        Err(more) => c
            .problems
            .extend(more.into_iter().map(|m| Problem::new(&c.config.source, m))),
    }
}

fn check_secrets(c: &mut Compiler) {
    secrets(&c.config, &c.access, &mut c.problems, &mut c.warnings);
}

/// On a sensor (`hub:`): its token set, the trust anchors, client certificate and key
/// readable as PEM. On a hub (`sensors:`): a sensor without its token is a warning (its
/// requests are refused).
fn check_hub(c: &mut Compiler) {
    for s in &c.config.sensors {
        if !c.access.sensors.iter().any(|(id, _)| id == &s.id) {
            let var = &s.token_env;
            c.warnings.push(Problem::new(
                &c.config.source,
                format!(
                    "warning: sensor `{}`: neither {var} nor {var}_FILE is set: its requests will be refused",
                    s.id
                ),
            ));
        }
    }
    let Some(hub) = &c.config.hub else {
        return;
    };
    let var = &hub.token_env;
    match secret(var) {
        Ok(Some(_)) => {}
        Ok(None) => c.problems.push(Problem::new(
            &c.config.source,
            format!("hub.token_env: neither {var} nor {var}_FILE is set: the sensor has no token for its hub"),
        )),
        Err(p) => c.problems.push(Problem::new(&c.config.source, p)),
    }
    if let Err(message) = crate::sensor::upload::client_tls(hub) {
        c.problems.push(Problem::new(&c.config.source, message));
    }
}

/// The compiled schedules of a config.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// `daemon.scans`: cron and segments (empty = all).
    pub scans: Vec<(Cron, Vec<String>)>,
    /// `bulletin.cron`.
    pub bulletin: Cron,
}

/// A config that can run: everything a command or the daemon needs, proven at load.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub rules: RuleSet,
    pub schedule: Schedule,
    pub templates: Arc<Templates>,
    /// The daemon's tokens and web config.
    pub access: Access,
    /// What works less than the operator may think (a listener without a token), to print.
    pub warnings: Vec<Problem>,
}

impl Loaded {
    /// Load and compile the config at `path`: every check, every problem found.
    pub fn compile(path: &Path) -> Result<Loaded, Vec<Problem>> {
        Loaded::finish(super::load(path))
    }

    /// Compile config text as if read from `path` (tests, tools).
    pub fn compile_str(text: &str, path: &Path) -> Result<Loaded, Vec<Problem>> {
        Loaded::finish(super::load_str(text, path))
    }

    /// Compile an already validated config (the demo's, which the lab builds in memory).
    pub fn from_config(config: Config) -> Result<Loaded, Vec<Problem>> {
        Loaded::finish(Ok(config))
    }

    fn finish(config: Result<Config, ConfigErrors>) -> Result<Loaded, Vec<Problem>> {
        // Rules, templates and schedules read the validated config: a config that does not
        // validate stops here, with all of its own problems.
        let config = config.map_err(|e| e.problems)?;
        let mut c = Compiler {
            config,
            problems: Vec::new(),
            warnings: Vec::new(),
            rules: None,
            schedule: None,
            templates: None,
            access: Access::default(),
        };
        for (name, check) in CHECKS {
            let before = c.problems.len();
            check(&mut c);
            tracing::debug!(
                check = name,
                problems = c.problems.len() - before,
                "config check"
            );
        }
        match (c.rules, c.schedule, c.templates) {
            (Some(rules), Some(schedule), Some(templates)) if c.problems.is_empty() => Ok(Loaded {
                config: c.config,
                rules,
                schedule,
                templates: Arc::new(templates),
                access: c.access,
                warnings: c.warnings,
            }),
            _ => Err(dedup(c.problems)),
        }
    }
}

/// Problems once each, in the order found.
fn dedup(problems: Vec<Problem>) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::with_capacity(problems.len());
    for p in problems {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The crons, compiled as the scheduler runs them. Validation already parsed each with its
/// position; a failure here would be a bug, still reported rather than panicking.
fn schedule(config: &Config, problems: &mut Vec<Problem>) -> Option<Schedule> {
    let mut cron = |what: &str, text: &str| match parse_cron(text) {
        Ok(c) => Some(c),
        Err(error) => {
            problems.push(Problem::new(
                &config.source,
                format!("{what}: invalid cron `{text}`: {error}"),
            ));
            None
        }
    };
    let scans: Option<Vec<_>> = config
        .daemon
        .scans
        .iter()
        .map(|s| cron("daemon.scans", &s.cron).map(|c| (c, s.segments.clone())))
        .collect();
    let bulletin = cron("bulletin.cron", &config.bulletin.cron);
    Some(Schedule {
        scans: scans?,
        bulletin: bulletin?,
    })
}

/// A template that does not compile, at its file and line.
fn template_problem(config: &Config, error: BulletinError) -> Problem {
    match error {
        BulletinError::TemplateRead { path, source } => Problem::new(
            &path,
            format!(
                "cannot read the template: {}",
                super::registers::io_message(&source)
            ),
        ),
        BulletinError::Template { name, source } => {
            let file = config
                .bulletin
                .templates_dir
                .as_ref()
                .map(|d| d.join(&name))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from("templates").join(&name));
            let message = match source.detail() {
                Some(detail) => format!("template does not compile: {}: {detail}", source.kind()),
                None => format!("template does not compile: {}", source.kind()),
            };
            let line = source.line().unwrap_or(0) as u64;
            Problem::at(&file, line, 0, message)
        }
        other => Problem::new(&config.source, other.to_string()),
    }
}

/// What the secrets mean for the config: a listener without the operator token, or mail
/// naming a password variable that is not set, is a warning; a password file that cannot be
/// read an error. (The tokens themselves are read by the access check.)
fn secrets(
    config: &Config,
    access: &Access,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) {
    let var = &config.daemon.api_token_env;
    if config.daemon.listen.is_some() && access.operator.is_none() {
        let message = format!(
            "warning: daemon.listen is set but neither {var} nor {var}_FILE is: POST /api/v1/scans will be refused"
        );
        warnings.push(match &config.daemon.listen_at {
            Some(at) => at.problem(message),
            None => Problem::new(&config.source, message),
        });
    }
    if let Some(smtp) = &config.smtp
        && let Some(var) = &smtp.password_env
    {
        match secret(var) {
            Ok(Some(_)) => {}
            Ok(None) => warnings.push(Problem::new(
                &config.source,
                format!(
                    "warning: smtp.password_env names {var}, which is not set: mail will be sent without authentication and may be refused"
                ),
            )),
            Err(message) => problems.push(Problem::new(&config.source, message)),
        }
    }
    if let Some(var) = &config.store.password_env {
        match secret(var) {
            Ok(Some(_)) => {}
            Ok(None) => warnings.push(Problem::new(
                &config.source,
                format!(
                    "warning: store.password_env names {var}, which is not set: opening the PostgreSQL store will fail"
                ),
            )),
            Err(message) => problems.push(Problem::new(&config.source, message)),
        }
    }
}

/// A secret: the variable `var`, else the file named by `var_FILE` (systemd credentials,
/// secret mounts). Surrounding whitespace is not part of it; an empty one counts as none.
pub fn secret(var: &str) -> Result<Option<String>, String> {
    let clean = |t: &str| Some(t.trim().to_string()).filter(|t| !t.is_empty());
    if let Ok(value) = std::env::var(var) {
        return Ok(clean(&value));
    }
    match std::env::var(format!("{var}_FILE")) {
        Ok(file) => match super::registers::read_capped(Path::new(&file)) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Ok(clean(&text)),
                Err(_) => Err(format!("the secret in {file} ({var}_FILE) is not utf-8")),
            },
            Err(err) => Err(format!(
                "cannot read the secret {var} from {file} ({var}_FILE): {err}"
            )),
        },
        Err(_) => Ok(None),
    }
}

/// Problems on stderr, one a line, each ending in a newline.
pub fn print_problems(problems: &[Problem]) {
    use std::io::Write;
    let mut text = String::new();
    for p in problems {
        text.push_str(&p.to_string());
        text.push('\n');
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
