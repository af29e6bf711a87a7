//! Bulletin: the periodic network security bulletin (网络安全通报, 第二十三条) and each
//! department's rectification notice (限期整改通知), rendered and mailed.
//!
//! Stage: an output, after the store. Inputs: the store (scan runs, observations, findings and
//! their events), the config (segments, departments, projects, waivers) and the rules (titles,
//! remediation, both languages). Pipeline:
//!
//! - [`Period`]: a calendar month or a date range in the organisation's timezone, turned into
//!   UTC bounds;
//! - `model`: gathers what the period saw into a serializable model (sections 一 to 八,
//!   逾期未整改 and the appendix) — the only part that queries the store;
//! - `render`: minijinja templates (embedded from `templates/`, each overridable by a file of
//!   the same name in `bulletin.templates_dir`), compiled once when [`Templates::load`] runs,
//!   to HTML (auto-escaped), plain text and Markdown (their own escaping formatters), and the
//!   CSV appendix (UTF-8 with BOM, CRLF);
//! - `send`: composes the mail (text + HTML + CSV) and puts it in the store's durable outbox,
//!   once per period, kind and recipient; flushing sends what is queued with backoff.
//!
//! Output files, under `--out` or `bulletin.out_dir`: `网络安全通报-2026-11.{html,txt,md,csv}`
//! for Chinese, `network-security-bulletin-2026-11.*` for English (a range is written
//! `2026-11-03_2026-11-20`).
//!
//! Invariants: rendering never fails on data (templates were compiled at load; observed strings
//! are escaped for the format); a bulletin's number never changes once issued; mail is in the
//! outbox before any attempt to send it.

mod command;
mod model;
mod render;
mod send;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc};

use crate::config::Config;
use crate::output::mail::MailError;
use crate::rules::RuleSet;
use crate::store::{Store, StoreError};

pub use command::{BulletinArgs, bulletin_command, outbox_command};
pub use model::{Model, labels};
pub use render::{Rendered, Templates};
pub use send::{FlushOutcome, enqueue, flush};

#[derive(Debug, thiserror::Error)]
pub enum BulletinError {
    #[error("{0}")]
    Period(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read template {path}: {source}")]
    TemplateRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the CSV appendix: {0}")]
    Csv(#[from] csv::Error),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("no smtp section in the config: mail cannot be sent")]
    NoSmtp,
    #[error(transparent)]
    LinkKey(#[from] crate::rectify::KeyError),
}

/// The days a bulletin covers, both ends included, in the organisation's calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Whether it is exactly one calendar month.
    pub month: bool,
}

impl Period {
    /// The calendar month `year`-`month`.
    pub fn month(year: i32, month: u32) -> Option<Period> {
        let from = NaiveDate::from_ymd_opt(year, month, 1)?;
        let to = from.checked_add_months(Months::new(1))?.pred_opt()?;
        Some(Period {
            from,
            to,
            month: true,
        })
    }

    /// The month before the one `today` is in (the default period).
    pub fn previous_month(today: NaiveDate) -> Period {
        let first = today.with_day(1).unwrap_or(today);
        let prev = first.checked_sub_months(Months::new(1)).unwrap_or(first);
        Period::month(prev.year(), prev.month()).unwrap_or(Period {
            from: prev,
            to: prev,
            month: false,
        })
    }

    /// The month `today` is in, up to `today` (what the demo reports on).
    pub fn month_to_date(today: NaiveDate) -> Period {
        Period {
            from: today.with_day(1).unwrap_or(today),
            to: today,
            month: false,
        }
    }

    /// From the command line: `--period YYYY-MM`, or `--from DATE --to DATE`, or neither (the
    /// previous month of `today`).
    pub fn from_args(
        period: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        today: NaiveDate,
    ) -> Result<Period, BulletinError> {
        let bad = |m: String| BulletinError::Period(m);
        let date = |s: &str, flag: &str| {
            NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .map_err(|_| bad(format!("{flag} {s:?}: expected a date YYYY-MM-DD")))
        };
        match (period, from, to) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(bad(
                "--period cannot be combined with --from/--to".to_string(),
            )),
            (Some(p), None, None) => {
                let parsed = p
                    .trim()
                    .split_once('-')
                    .and_then(|(y, m)| Some((y.parse().ok()?, m.parse().ok()?)));
                parsed
                    .and_then(|(y, m)| Period::month(y, m))
                    .ok_or_else(|| bad(format!("--period {p:?}: expected a month YYYY-MM")))
            }
            (None, Some(f), Some(t)) => {
                let (from, to) = (date(f, "--from")?, date(t, "--to")?);
                if from > to {
                    return Err(bad(format!("--from {from} is after --to {to}")));
                }
                let month = from.day() == 1
                    && Period::month(from.year(), from.month()).is_some_and(|m| m.to == to);
                Ok(Period { from, to, month })
            }
            (None, Some(_), None) | (None, None, Some(_)) => {
                Err(bad("--from and --to go together".to_string()))
            }
            (None, None, None) => Ok(Period::previous_month(today)),
        }
    }

    /// The key the store and outbox know it by: `2026-11`, or `2026-11-03~2026-11-20`.
    pub fn key(&self) -> String {
        if self.month {
            self.from.format("%Y-%m").to_string()
        } else {
            format!("{}~{}", self.from, self.to)
        }
    }

    /// The key as it appears in file names.
    pub fn file_key(&self) -> String {
        self.key().replace('~', "_")
    }

    pub fn days(&self) -> u64 {
        u64::try_from((self.to - self.from).num_days() + 1).unwrap_or(1)
    }

    /// The period just before: the previous month, or as many days just before.
    pub fn previous(&self) -> Period {
        if self.month {
            return Period::previous_month(self.from);
        }
        let to = self.from.pred_opt().unwrap_or(self.from);
        let from = to
            .checked_sub_days(Days::new(self.days() - 1))
            .unwrap_or(to);
        Period {
            from,
            to,
            month: false,
        }
    }

    /// `[start, end)` in UTC: midnight starting `from` to midnight ending `to`, in `tz`.
    pub fn bounds(&self, tz: chrono_tz::Tz) -> (DateTime<Utc>, DateTime<Utc>) {
        let midnight = |d: NaiveDate| {
            let naive = d.and_hms_opt(0, 0, 0).unwrap_or_default();
            tz.from_local_datetime(&naive)
                .earliest()
                .map_or_else(|| naive.and_utc(), |t| t.with_timezone(&Utc))
        };
        let after = self.to.succ_opt().unwrap_or(self.to);
        (midnight(self.from), midnight(after))
    }
}

/// A built bulletin: its model and every rendering.
#[derive(Debug, Clone)]
pub struct Bulletin {
    pub period: Period,
    pub lang: String,
    pub number: u32,
    pub model: Model,
    pub rendered: Rendered,
    /// File name stem, e.g. `网络安全通报-2026-11`.
    pub stem: String,
}

/// Gather, number and render the bulletin of `period` in `lang`, as of `now`.
pub async fn build(
    config: &Config,
    rules: &RuleSet,
    store: &Store,
    templates: &Templates,
    period: &Period,
    lang: &str,
    now: DateTime<Utc>,
) -> Result<Bulletin, BulletinError> {
    let lang = if lang == "en" { "en" } else { "zh" };
    let number = store
        .bulletin_number(&period.key(), period.from.year(), lang, now)
        .await?;
    let model = model::gather(config, rules, store, period, lang, number, now).await?;
    let rendered = templates.render(&model)?;
    let stem = match lang {
        "en" => format!("network-security-bulletin-{}", period.file_key()),
        _ => format!("网络安全通报-{}", period.file_key()),
    };
    Ok(Bulletin {
        period: period.clone(),
        lang: lang.to_string(),
        number,
        model,
        rendered,
        stem,
    })
}

impl Bulletin {
    /// Write the HTML, text, Markdown and CSV files under `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, BulletinError> {
        let fail = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BulletinError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(fail(dir))?;
        let files: [(&str, &[u8]); 4] = [
            ("html", self.rendered.html.as_bytes()),
            ("txt", self.rendered.text.as_bytes()),
            ("md", self.rendered.markdown.as_bytes()),
            ("csv", &self.rendered.csv),
        ];
        let mut written = Vec::new();
        for (ext, bytes) in files {
            let path = dir.join(format!("{}.{ext}", self.stem));
            // Beside, then renamed; no symlink followed (`write_file`).
            crate::output::write_file(&path, bytes).map_err(fail(&path))?;
            written.push(path);
        }
        Ok(written)
    }
}

/// The daemon's monthly job: build `period`'s bulletin ([`scheduled_period`]: the previous
/// month) as at `now`, in the configured language, write it to `bulletin.out_dir`, queue its mail (once per period) and flush what is due.
/// `templates` are the ones compiled with the config (`config::Loaded`), not re-read.
pub async fn scheduled(
    config: &Config,
    rules: &RuleSet,
    templates: &Templates,
    store: &Store,
    link_key: Option<&crate::rectify::LinkKey>,
    period: &Period,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let period = period.clone();
    let bulletin = build(
        config,
        rules,
        store,
        templates,
        &period,
        &config.bulletin.lang,
        now,
    )
    .await?;
    let files = bulletin.write(&config.bulletin.out_dir)?;
    tracing::info!(period = %period.key(), files = files.len(), "bulletin written");
    if config.smtp.is_some() {
        let queued = enqueue(config, store, &bulletin, templates, false, now, link_key).await?;
        tracing::info!(period = %period.key(), queued, "bulletin mail queued");
        flush_due(config, store).await?;
    }
    Ok(())
}

/// The period a bulletin built by `bulletin.cron` at `now` covers: the previous month, in the
/// organisation's timezone.
pub fn scheduled_period(config: &Config, now: chrono::DateTime<Utc>) -> Period {
    let today = now
        .with_timezone(&config.organisation.timezone)
        .date_naive();
    Period::previous_month(today)
}

/// The daemon's retry job: send the queued mail whose next attempt is due. Without an `smtp`
/// section there is nothing to do.
pub async fn flush_due(config: &Config, store: &Store) -> anyhow::Result<FlushOutcome> {
    if config.smtp.is_none() {
        return Ok(FlushOutcome::default());
    }
    let outcome = flush(config, store, Some(Utc::now())).await?;
    if outcome.sent + outcome.failed > 0 || outcome.retry > 0 {
        tracing::info!(
            sent = outcome.sent,
            retry = outcome.retry,
            failed = outcome.failed,
            "outbox flushed"
        );
    }
    Ok(outcome)
}

/// What the demo writes: the bulletin of the current month so far, in the configured
/// language, under `dir`. Returns the files written.
pub async fn demo(
    config: &Config,
    rules: &RuleSet,
    templates: &Templates,
    store: &Store,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let now = Utc::now();
    let today = now
        .with_timezone(&config.organisation.timezone)
        .date_naive();
    let bulletin = build(
        config,
        rules,
        store,
        templates,
        &Period::month_to_date(today),
        &config.bulletin.lang,
        now,
    )
    .await?;
    Ok(bulletin.write(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn periods_from_arguments() {
        let today = d("2026-12-01");
        let p = Period::from_args(None, None, None, today).unwrap();
        assert_eq!(
            (p.from, p.to, p.key()),
            (d("2026-11-01"), d("2026-11-30"), "2026-11".into())
        );
        let p = Period::from_args(Some("2026-02"), None, None, today).unwrap();
        assert_eq!(p.to, d("2026-02-28"));
        assert_eq!(p.previous().key(), "2026-01");
        let p = Period::from_args(None, Some("2026-11-03"), Some("2026-11-20"), today).unwrap();
        assert_eq!(p.key(), "2026-11-03~2026-11-20");
        assert_eq!(
            p.previous(),
            Period {
                from: d("2026-10-16"),
                to: d("2026-11-02"),
                month: false
            }
        );
        assert!(Period::from_args(Some("2026-13"), None, None, today).is_err());
        assert!(Period::from_args(None, Some("2026-11-03"), None, today).is_err());
        assert!(Period::from_args(None, Some("2026-11-20"), Some("2026-11-03"), today).is_err());
        let jan = Period::from_args(None, None, None, d("2026-01-15")).unwrap();
        assert_eq!(jan.key(), "2025-12");
    }

    #[test]
    fn bounds_are_local_midnights() {
        let p = Period::month(2026, 11).unwrap();
        let (a, b) = p.bounds(chrono_tz::Asia::Shanghai);
        assert_eq!(a.to_rfc3339(), "2026-10-31T16:00:00+00:00");
        assert_eq!(b.to_rfc3339(), "2026-11-30T16:00:00+00:00");
    }
}
