//! `netpatrol audit [-c FILE] [--since DATE] [--lang zh|en]`: the API actions the daemon
//! recorded (等级保护 2.0 安全审计), oldest first, as a table with Chinese headers by default.
//!
//! Input: the store named by the config, a start day (organisation calendar) or instant.
//! Output: one line per action: time (organisation timezone), principal, peer, method, route,
//! status, detail. Exit 0; 64 for a bad config or date; 1 when the store cannot be read.

use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, Utc};
use unicode_width::UnicodeWidthStr;

use crate::cli::EXIT_USAGE;
use crate::store::{AuditEntry, Store};

/// Parse `--since`: `YYYY-MM-DD` (midnight in `tz`) or an RFC 3339 instant.
pub fn parse_since(text: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    day.and_hms_opt(0, 0, 0)?
        .and_local_timezone(tz)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// The table of `entries`, times in `tz`, headers in Chinese unless `en`.
pub fn table(entries: &[AuditEntry], tz: chrono_tz::Tz, en: bool) -> String {
    let headers: [&str; 7] = if en {
        ["TIME", "WHO", "FROM", "METHOD", "ROUTE", "STATUS", "DETAIL"]
    } else {
        [
            "时间",
            "身份",
            "来源地址",
            "方法",
            "路径",
            "状态",
            "操作内容",
        ]
    };
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            [
                e.at.with_timezone(&tz)
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string(),
                e.principal.clone(),
                e.peer.clone(),
                e.method.clone(),
                e.route.clone(),
                e.status.to_string(),
                e.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = headers.map(UnicodeWidthStr::width);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.width());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(widths[i] - cell.width() + 2));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(&headers);
    for r in &rows {
        out.push_str(&line(&r.each_ref().map(String::as_str)));
    }
    out
}

/// The command.
pub async fn audit_command(
    config_path: Option<&Path>,
    since: Option<&str>,
    lang: Option<&str>,
) -> ExitCode {
    let Some(path) = config_path else {
        eprintln!("netpatrol: no config: give -c FILE or set NETPATROL_CONFIG");
        return ExitCode::from(EXIT_USAGE);
    };
    let en = match lang {
        None | Some("zh") => false,
        Some("en") => true,
        Some(other) => {
            eprintln!("netpatrol: unknown language {other:?} (zh or en)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let loaded = match crate::app::compile(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let config = &loaded.config;
    let tz = config.organisation.timezone;
    let since = match since {
        None => None,
        Some(text) => match parse_since(text, tz) {
            Some(t) => Some(t),
            None => {
                eprintln!("netpatrol: invalid --since {text:?}: expected YYYY-MM-DD or RFC 3339");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let store = match Store::connect(&config.store).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("netpatrol: {e}");
            return ExitCode::FAILURE;
        }
    };
    let entries = store.audit_since(since).await;
    store.close().await;
    match entries {
        Ok(entries) => {
            print!("{}", table(&entries, tz, en));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netpatrol: {e}");
            ExitCode::FAILURE
        }
    }
}
