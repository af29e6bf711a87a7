//! The `bulletin` and `outbox` commands (docs/cli.md). Errors reach the user here, one
//! line each; 64 for a bad config or usage, 1 for a runtime failure or mail still queued.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::Utc;

use super::{Period, Templates, build, enqueue, flush};
use crate::config::Config;
use crate::rules::RuleSet;
use crate::store::{OutboxState, Store};

use crate::cli::EXIT_USAGE;

/// Arguments of `netpatrol bulletin`.
#[derive(Debug, Clone, Default)]
pub struct BulletinArgs {
    pub period: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub out: Option<PathBuf>,
    pub lang: Option<String>,
    pub send: bool,
    pub force: bool,
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("netpatrol: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn failure(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("netpatrol: {message}");
    ExitCode::FAILURE
}

/// `netpatrol bulletin -c FILE [--period YYYY-MM | --from DATE --to DATE] [--out DIR]
/// [--lang zh|en] [--send [--force]]`.
pub async fn bulletin_command(config_path: &Path, args: BulletinArgs) -> ExitCode {
    let loaded = match crate::app::compile(config_path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let (config, rules) = (&loaded.config, &loaded.rules);
    let lang = args
        .lang
        .clone()
        .unwrap_or_else(|| config.bulletin.lang.clone());
    if lang != "zh" && lang != "en" {
        return usage(format!("unknown --lang {lang:?}: expected zh or en"));
    }
    let now = Utc::now();
    let today = now
        .with_timezone(&config.organisation.timezone)
        .date_naive();
    let period = match Period::from_args(
        args.period.as_deref(),
        args.from.as_deref(),
        args.to.as_deref(),
        today,
    ) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    if args.send && config.smtp.is_none() {
        return usage("--send needs an smtp section in the config");
    }
    if args.force && !args.send {
        return usage("--force only applies with --send");
    }
    let templates = &loaded.templates;
    let store = match Store::connect(&config.store).await {
        Ok(s) => s,
        Err(e) => return failure(e),
    };
    let link_key = loaded.access.link_key.as_ref();
    // Waivers approved on the operator page count as the config's do.
    let mut config = config.clone();
    if let Err(e) = store.add_stored_waivers(&mut config).await {
        store.close().await;
        return failure(e);
    }
    let code = bulletin_run(
        &config, rules, &store, templates, &period, &lang, &args, now, link_key,
    )
    .await;
    store.close().await;
    code
}

#[allow(clippy::too_many_arguments)]
async fn bulletin_run(
    config: &Config,
    rules: &RuleSet,
    store: &Store,
    templates: &Templates,
    period: &Period,
    lang: &str,
    args: &BulletinArgs,
    now: chrono::DateTime<Utc>,
    link_key: Option<&crate::rectify::LinkKey>,
) -> ExitCode {
    let bulletin = match build(config, rules, store, templates, period, lang, now).await {
        Ok(b) => b,
        Err(e) => return failure(e),
    };
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| config.bulletin.out_dir.clone());
    match bulletin.write(&dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
        }
        Err(e) => return failure(e),
    }
    if !args.send {
        return ExitCode::SUCCESS;
    }
    let queued = match enqueue(
        config, store, &bulletin, templates, args.force, now, link_key,
    )
    .await
    {
        Ok(n) => n,
        Err(e) => return failure(e),
    };
    eprintln!("netpatrol: {queued} message(s) queued for {}", period.key());
    let outcome = match flush(config, store, Some(Utc::now())).await {
        Ok(o) => o,
        Err(e) => return failure(e),
    };
    eprintln!(
        "netpatrol: {} sent, {} still queued, {} failed",
        outcome.sent, outcome.retry, outcome.failed
    );
    // Exit 1 while any of this period's mail is not sent.
    match store.outbox().await {
        Ok(all) => {
            let unsent: Vec<_> = all
                .iter()
                .filter(|m| m.period == period.key() && m.state != OutboxState::Sent)
                .collect();
            for m in &unsent {
                eprintln!(
                    "netpatrol: {} to {}: {} ({})",
                    m.kind,
                    m.recipients.join(", "),
                    m.state.as_str(),
                    m.last_error.as_deref().unwrap_or("-")
                );
            }
            if unsent.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => failure(e),
    }
}

/// `netpatrol outbox [--flush]`: list the mail not yet sent; `--flush` first tries every
/// queued message now (the operator's explicit retry; the daemon keeps to the backoff).
/// Exit 1 while something is still queued.
pub async fn outbox_command(config_path: Option<&Path>, do_flush: bool) -> ExitCode {
    let Some(path) = config_path else {
        return usage("no config: give -c FILE or set NETPATROL_CONFIG");
    };
    let loaded = match crate::app::compile(path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let config = &loaded.config;
    let store = match Store::connect(&config.store).await {
        Ok(s) => s,
        Err(e) => return failure(e),
    };
    let code = outbox_run(config, &store, do_flush).await;
    store.close().await;
    code
}

async fn outbox_run(config: &Config, store: &Store, do_flush: bool) -> ExitCode {
    if do_flush {
        if config.smtp.is_none() {
            eprintln!("netpatrol: no smtp section in the config: nothing can be sent");
        } else {
            match flush(config, store, None).await {
                Ok(o) => eprintln!(
                    "netpatrol: {} sent, {} still queued, {} failed",
                    o.sent, o.retry, o.failed
                ),
                Err(e) => return failure(e),
            }
        }
    }
    let all = match store.outbox().await {
        Ok(a) => a,
        Err(e) => return failure(e),
    };
    let tz = config.organisation.timezone;
    let local =
        |t: chrono::DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    let unsent: Vec<_> = all
        .iter()
        .filter(|m| m.state != OutboxState::Sent)
        .collect();
    if !unsent.is_empty() {
        println!("STATE   TRIES  NEXT ATTEMPT      KIND      PERIOD   TO / SUBJECT / LAST ERROR");
    }
    for m in &unsent {
        println!(
            "{:<7} {:>5}  {:<16}  {:<8}  {:<7}  {}",
            m.state.as_str(),
            m.attempts,
            if m.state == OutboxState::Queued {
                local(m.next_attempt_at)
            } else {
                "-".to_string()
            },
            m.kind,
            m.period,
            m.recipients.join(", ")
        );
        println!("{:>52}{}", "", m.subject);
        if let Some(e) = &m.last_error {
            println!("{:>52}{}", "", e);
        }
    }
    let count = |s: OutboxState| all.iter().filter(|m| m.state == s).count();
    let queued = count(OutboxState::Queued);
    println!(
        "{} queued, {} failed, {} sent",
        queued,
        count(OutboxState::Failed),
        count(OutboxState::Sent)
    );
    if queued > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
