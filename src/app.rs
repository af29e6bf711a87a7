//! Commands: wiring of config, scope, probes, store and outputs for each CLI command.
//!
//! Errors reach the user here, as one line each; exit codes as docs/cli.md lists them
//! (64 for a bad config or usage, 1 for a runtime failure, 3 when `--fail-on` matched).

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, Format};
use crate::config::{self, Config};
use crate::lab::Lab;
use crate::observation::RunState;
use crate::output::report;
use crate::pass::{PassError, scan_and_record};
use crate::probe::ProbeKind;
use crate::rules::{RuleSet, Severity};
use crate::scan::ScanRequest;
use crate::scope::Limits;
use crate::store::Store;

pub use crate::cli::{EXIT_FAIL_ON, EXIT_USAGE};

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Scan {
            config,
            segments,
            probes,
            format,
            output,
            fail_on,
        } => {
            let probes = match parse_probes(probes.as_deref()) {
                Ok(p) => p,
                Err(message) => {
                    eprintln!("netpatrol: {message}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let loaded = match compile(&config) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            let request = ScanRequest { segments, probes };
            match scan_command(
                &loaded.config,
                &loaded.rules,
                &request,
                format,
                output.as_deref(),
                fail_on,
            )
            .await
            {
                Ok(code) => code,
                Err(error) => {
                    eprintln!("netpatrol: {}", error_chain(&error));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { once, out } => match demo(once, &out).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("netpatrol: {}", error_chain(&error));
                ExitCode::FAILURE
            }
        },
        Command::Daemon { config } => crate::daemon::run(&config).await,
        Command::Sensor { config } => crate::sensor::run(&config).await,
        Command::Probe {
            what,
            endpoint,
            config,
            name,
            format,
            lang,
        } => probe_command(what, endpoint, config.as_deref(), name, format, lang).await,
        Command::Bulletin {
            config,
            period,
            from,
            to,
            out,
            lang,
            send,
            force,
        } => {
            let args = crate::bulletin::BulletinArgs {
                period,
                from,
                to,
                out,
                lang,
                send,
                force,
            };
            crate::bulletin::bulletin_command(&config, args).await
        }
        Command::Outbox { config, flush } => {
            crate::bulletin::outbox_command(config.as_deref(), flush).await
        }
        Command::Audit {
            config,
            since,
            lang,
        } => {
            crate::daemon::audit::audit_command(
                config.as_deref(),
                since.as_deref(),
                lang.as_deref(),
            )
            .await
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    match compile(path) {
        Ok(loaded) => {
            config::print_problems(&loaded.warnings);
            let (config, rules) = (&loaded.config, &loaded.rules);
            println!(
                "{}: ok ({} segments, {} departments, {} approvals, {} projects, {} ports, {} rules, {} waivers)",
                path.display(),
                config.segments.len(),
                config.departments.len(),
                config.approvals.len(),
                config.projects.len(),
                config.scan.ports.len(),
                rules.rules().len(),
                config.exceptions.len(),
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `--probes a,b,c` into a set; absent = every probe.
pub fn parse_probes(list: Option<&str>) -> Result<BTreeSet<ProbeKind>, String> {
    let Some(list) = list else {
        return Ok(ProbeKind::ALL.into_iter().collect());
    };
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            ProbeKind::parse(s).ok_or_else(|| {
                format!(
                    "unknown probe {s:?} in --probes (known: icmp, tcp, dns, banner, tls, http)"
                )
            })
        })
        .collect()
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} probes ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Cancel `token` on Ctrl-C (SIGINT) or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        eprintln!("netpatrol: stopping; the scan is recorded as incomplete");
        token.cancel();
    });
}

/// The one compile step (`config::Loaded::compile`); on failure every problem on stderr, one a
/// line. Its warnings are `check-config`'s and the daemon's to print (they are about serving
/// and mail, noise for a one-off scan).
pub fn compile(path: &Path) -> Result<config::Loaded, ExitCode> {
    match config::Loaded::compile(path) {
        Ok(loaded) => Ok(loaded),
        Err(problems) => {
            config::print_problems(&problems);
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// An error and its causes, each once: a cause whose text its wrapper already shows (a
/// `thiserror` message with `{source}`) is not repeated.
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn scan_command(
    config: &Config,
    rules: &RuleSet,
    request: &ScanRequest,
    format: Option<Format>,
    output: Option<&Path>,
    fail_on: Option<Severity>,
) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&config.store).await?;
    // Waivers approved on the operator page count as the config's do.
    let mut config = config.clone();
    store.add_stored_waivers(&mut config).await?;
    let config = &config;
    let limits = Limits::for_process(config.scan.rate, config.scan.concurrency);
    let cancel = CancellationToken::new();
    cancel_on_signal(cancel.clone());
    let result = scan_and_record(
        config,
        rules,
        &store,
        request,
        limits,
        progress_bar(),
        cancel.clone(),
    )
    .await;
    store.close().await;
    let (observations, report) = match result {
        Ok(done) => done,
        Err(error) => {
            // Not recorded (a full disk, say): the report is still printed or written, and the
            // command fails.
            if let Some(PassError::NotRecorded { report, .. }) = error.downcast_ref::<PassError>() {
                write_report(config, report, format, output)?;
            }
            return Err(error);
        }
    };
    write_report(config, &report, format, output)?;
    if observations.run.state == RunState::Incomplete {
        return Ok(ExitCode::FAILURE);
    }
    if let Some(threshold) = fail_on
        && report
            .findings
            .iter()
            .filter(|f| f.waiver.is_none())
            .any(|f| f.severity >= threshold)
    {
        return Ok(ExitCode::from(EXIT_FAIL_ON));
    }
    Ok(ExitCode::SUCCESS)
}

/// `netpatrol probe`: 64 for a bad config or an address it may not probe, 1 when the probe
/// failed, else 0.
async fn probe_command(
    what: crate::cli::ProbeWhat,
    endpoint: std::net::SocketAddr,
    config: Option<&Path>,
    name: Option<String>,
    format: Option<Format>,
    lang: Option<String>,
) -> ExitCode {
    use crate::probe_cmd::{self, Kind};
    let loaded = match config {
        Some(path) => match compile(path) {
            Ok(loaded) => Some(loaded),
            Err(code) => return code,
        },
        None => None,
    };
    let config = loaded.as_ref().map(|l| &l.config);
    let kind = match what {
        crate::cli::ProbeWhat::Tls => Kind::Tls,
        crate::cli::ProbeWhat::Http => Kind::Http,
        crate::cli::ProbeWhat::Service => Kind::Service,
    };
    let outcome = match probe_cmd::run(kind, endpoint, config, name).await {
        Ok(o) => o,
        Err(error) => {
            eprintln!("netpatrol: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let lang = lang
        .or_else(|| config.map(|c| c.bulletin.lang.clone()))
        .unwrap_or_else(|| "zh".into());
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    });
    match format {
        Format::Json => match serde_json::to_string_pretty(&outcome) {
            Ok(j) => println!("{j}"),
            Err(error) => {
                eprintln!("netpatrol: {error}");
                return ExitCode::FAILURE;
            }
        },
        Format::Table => print!("{}", probe_cmd::text(&outcome, &lang)),
    }
    if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Print the report (table on a terminal, JSON otherwise) or write it to `output`.
fn write_report(
    config: &Config,
    report: &report::Report,
    format: Option<Format>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let to_terminal = output.is_none() && std::io::stdout().is_terminal();
    let format = format.unwrap_or(if to_terminal {
        Format::Table
    } else {
        Format::Json
    });
    let text = match format {
        Format::Table => report::table(config, report, to_terminal),
        Format::Json => serde_json::to_string_pretty(report)? + "\n",
    };
    match output {
        Some(path) => crate::output::write_file(path, text.as_bytes())
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

/// Serve `/metrics`, `/healthz` and the API of the demo on 127.0.0.1:9750 (or a free port when
/// that one is taken) until `stop`.
async fn serve_demo(
    loaded: &config::Loaded,
    store: &Store,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut loaded = crate::daemon::Loaded::from(loaded.clone());
    // The API needs a token; without one in the environment the demo makes one up.
    let token = match &loaded.access.operator {
        Some(t) => t.clone(),
        None => {
            let t = crate::daemon::access::random_token()
                .map_err(|_| anyhow::anyhow!("demo daemon: no randomness for a token"))?;
            loaded.access.operator = Some(t.clone());
            t
        }
    };
    let daemon = crate::daemon::Daemon::new(loaded, store.clone());
    daemon.refresh_waivers().await?;
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:9750").await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    eprintln!(
        "netpatrol demo: metrics at http://{addr}/metrics, API at http://{addr}/api/v1/findings (curl -H 'Authorization: Bearer {token}' http://{addr}/api/v1/findings)"
    );
    // A department's rectification page, as its notice would link it: the first department
    // with open findings.
    let config = &daemon.current().config;
    let open = store.open_findings(&Default::default()).await?;
    if let Some(dept) = config.departments.iter().find(|d| {
        open.iter()
            .any(|f| f.department.as_deref() == Some(d.id.as_str()))
    }) {
        let key = daemon.link_key().await?;
        let now = chrono::Utc::now();
        let today = now
            .with_timezone(&config.organisation.timezone)
            .date_naive();
        let token = key.sign(&crate::rectify::Link {
            department: dept.id.clone(),
            period: crate::bulletin::Period::month_to_date(today).key(),
            expires: now + chrono::Duration::days(crate::rectify::LINK_VALID_DAYS),
        })?;
        eprintln!(
            "netpatrol demo: rectification page of {} ({}): {}",
            dept.name,
            dept.id,
            crate::rectify::page_url(&format!("http://{addr}"), &token)
        );
    }
    // The bureau's side: waiver requests and disputes the departments send from their page.
    eprintln!(
        "netpatrol demo: operator page: {} (sign in with the API token above)",
        crate::rectify::operator_url(&format!("http://{addr}"))
    );
    tokio::spawn(daemon.clone().scheduler(stop.clone()));
    tokio::spawn(crate::daemon::api::serve(listener, daemon, stop));
    Ok(())
}

async fn demo(once: bool, out: &Path) -> anyhow::Result<()> {
    let lab = Lab::start()
        .await
        .context("cannot start the demo network")?;
    if lab.shift != 0 {
        eprintln!(
            "netpatrol demo: well-known ports are taken or need root here; the simulated services listen {} ports higher",
            lab.shift
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let loaded = config::Loaded::from_config(lab.config(out)?).map_err(|problems| {
        anyhow::anyhow!(
            "the demo config does not compile:\n{}",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let (config, rules) = (&loaded.config, &loaded.rules);
    let store = Store::connect(&config.store).await?;
    let limits = Limits::for_process(config.scan.rate, config.scan.concurrency);
    let cancel = CancellationToken::new();
    cancel_on_signal(cancel.clone());
    eprintln!(
        "netpatrol demo: {} simulated services on 127.20.0.0/16; store {}",
        lab.endpoints().len(),
        config.store.describe()
    );
    let mut serving = false;
    loop {
        let (_, report) = scan_and_record(
            config,
            rules,
            &store,
            &ScanRequest::all(),
            limits.clone(),
            progress_bar(),
            cancel.clone(),
        )
        .await?;
        print!(
            "{}",
            report::table(config, &report, std::io::stdout().is_terminal())
        );
        let path: PathBuf = out.join("last-scan.json");
        crate::output::write_file(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        eprintln!("netpatrol demo: report written to {}", path.display());
        let written = crate::bulletin::demo(config, rules, &loaded.templates, &store, out).await?;
        for file in written {
            eprintln!("netpatrol demo: bulletin written to {}", file.display());
        }
        if once || cancel.is_cancelled() {
            break;
        }
        if !serving {
            serving = true;
            serve_demo(&loaded, &store, cancel.clone()).await?;
        }
        eprintln!("netpatrol demo: next scan in 60 s; Ctrl-C stops");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
    }
    store.close().await;
    lab.stop().await;
    Ok(())
}
