//! Mail of a bulletin: composed, put in the outbox once per period, kind and recipient, and
//! flushed with exponential backoff.
//!
//! Kinds: `bulletin` (the whole bulletin to each of `bulletin.recipients`) and `notice` (each
//! department's own items to its register emails, when `bulletin.notify_departments`; its
//! `leader_emails` copied when the notice carries items overdue by
//! `bulletin.escalate_after_days` or more). The operator page queues a third kind,
//! `decision` (a denied waiver request or a closed dispute, to the department). The
//! outbox key is `period|kind|recipient` (recipient: the address, or the department id), so
//! building a period again never queues its mail twice unless forced.

use chrono::{DateTime, Utc};

use super::{Bulletin, BulletinError, Templates};
use crate::config::Config;
use crate::output::mail::{self, Attached, Letter, Mailer};
use crate::store::{Enqueued, NewMail, Store};

/// First retry after this long; doubled after each failure.
const BACKOFF_FIRST_SECS: i64 = 60;
/// Retries never wait longer than this.
const BACKOFF_MAX_SECS: i64 = 6 * 3600;
/// After this many attempts a message is `failed` for good.
const MAX_ATTEMPTS: u32 = 12;

/// What a flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushOutcome {
    pub sent: usize,
    /// Failed this time, queued for a later attempt.
    pub retry: usize,
    /// Failed for good.
    pub failed: usize,
    /// Still queued after the flush (due later, or retrying).
    pub queued: usize,
}

/// The wait before attempt `attempts + 1`, after `attempts` failures.
pub fn backoff(attempts: u32) -> chrono::Duration {
    let exp = attempts.saturating_sub(1).min(20);
    let secs = BACKOFF_FIRST_SECS
        .saturating_mul(1i64 << exp)
        .min(BACKOFF_MAX_SECS);
    chrono::Duration::seconds(secs)
}

/// Queue the bulletin's mail: the bulletin to each recipient, and each department with open
/// items its notice. Returns how many messages were added (or replaced, when `force`).
///
/// With `daemon.public_url` set, each notice carries its department's rectification link
/// (`crate::rectify`), signed with `link_key` (the configured key, `daemon.link_key_env`)
/// or else the key kept in the store, valid [`crate::rectify::LINK_VALID_DAYS`] days.
pub async fn enqueue(
    config: &Config,
    store: &Store,
    bulletin: &Bulletin,
    templates: &Templates,
    force: bool,
    now: DateTime<Utc>,
    link_key: Option<&crate::rectify::LinkKey>,
) -> Result<usize, BulletinError> {
    let smtp = config.smtp.as_ref().ok_or(BulletinError::NoSmtp)?;
    let links = match &config.daemon.public_url {
        None => None,
        Some(url) => Some((
            url.as_str(),
            match link_key {
                Some(k) => k.clone(),
                None => crate::rectify::stored_key(store).await?,
            },
        )),
    };
    let model = &bulletin.model;
    let period = bulletin.period.key();
    let csv_name = |stem: &str| format!("{stem}.csv");
    let csv_type = "text/csv; charset=utf-8".to_string();
    let mut queued = 0;
    for to in &config.bulletin.recipients {
        let subject = if model.zh {
            format!(
                "【{}】{}（{}）",
                model.t["title"], model.number_label, model.period.label
            )
        } else {
            format!(
                "[{}] {} ({})",
                model.t["title"], model.number_label, model.period.label
            )
        };
        let letter = Letter {
            from: smtp.from.clone(),
            to: vec![to.clone()],
            cc: Vec::new(),
            subject,
            text: bulletin.rendered.text.clone(),
            html: bulletin.rendered.html.clone(),
            attachments: vec![Attached {
                filename: csv_name(&bulletin.stem),
                content_type: csv_type.clone(),
                body: bulletin.rendered.csv.clone(),
            }],
        };
        let key = format!("{period}|bulletin|{to}");
        queued += put(store, &letter, key, "bulletin", &period, force, now).await?;
    }
    if config.bulletin.notify_departments {
        for dept in &model.rectification {
            if dept.emails.is_empty() {
                if !dept.id.is_empty() {
                    tracing::warn!(department = %dept.id, "no emails in the register: notice not mailed");
                }
                continue;
            }
            let link = links.as_ref().and_then(|(url, key)| {
                let link = crate::rectify::Link {
                    department: dept.id.clone(),
                    period: period.clone(),
                    expires: now + chrono::Duration::days(crate::rectify::LINK_VALID_DAYS),
                };
                match key.sign(&link) {
                    Ok(token) => Some(crate::rectify::page_url(url, &token)),
                    Err(error) => {
                        tracing::warn!(department = %dept.id, %error, "no rectification link for this notice");
                        None
                    }
                }
            });
            let notice = templates.render_notice_with_link(model, dept, link.as_deref())?;
            let subject = if model.zh {
                format!(
                    "【{}】{}（{}）",
                    model.t["notice_title"], dept.name, model.period.label
                )
            } else {
                format!(
                    "[{}] {} ({})",
                    model.t["notice_title"], dept.name, model.period.label
                )
            };
            let stem = if model.zh {
                format!("限期整改通知-{}-{}", dept.id, bulletin.period.file_key())
            } else {
                format!(
                    "rectification-notice-{}-{}",
                    dept.id,
                    bulletin.period.file_key()
                )
            };
            // Escalation: items overdue by `bulletin.escalate_after_days` copy the leadership.
            let cc = if dept.escalated > 0 {
                dept.leader_emails
                    .iter()
                    .filter(|l| !dept.emails.contains(l))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            let letter = Letter {
                from: smtp.from.clone(),
                to: dept.emails.clone(),
                cc,
                subject,
                text: notice.text,
                html: notice.html,
                attachments: vec![Attached {
                    filename: csv_name(&stem),
                    content_type: csv_type.clone(),
                    body: notice.csv,
                }],
            };
            let key = format!("{period}|notice|{}", dept.id);
            queued += put(store, &letter, key, "notice", &period, force, now).await?;
        }
    }
    Ok(queued)
}

async fn put(
    store: &Store,
    letter: &Letter,
    key: String,
    kind: &str,
    period: &str,
    force: bool,
    now: DateTime<Utc>,
) -> Result<usize, BulletinError> {
    let composed = mail::compose(letter)?;
    let mail = NewMail {
        key,
        kind: kind.to_string(),
        period: period.to_string(),
        sender: composed.sender,
        recipients: composed.recipients,
        subject: composed.subject,
        message: composed.message,
    };
    Ok(match store.enqueue_mail(&mail, now, force).await? {
        Enqueued::Added | Enqueued::Replaced => 1,
        Enqueued::Exists => 0,
    })
}

/// Send queued mail: what is due at `due` (every queued message when `None`). A failure
/// keeps the message queued with a backoff, or marks it failed when the server refused it
/// for good or it ran out of attempts.
pub async fn flush(
    config: &Config,
    store: &Store,
    due: Option<DateTime<Utc>>,
) -> Result<FlushOutcome, BulletinError> {
    let smtp = config.smtp.as_ref().ok_or(BulletinError::NoSmtp)?;
    let mut outcome = FlushOutcome::default();
    let pending = store.outbox_due(due).await?;
    if !pending.is_empty() {
        let mailer = Mailer::new(smtp, &config.trust)?;
        let owner = lease_owner();
        for m in pending {
            if !claim(store, &m.key, &owner).await? {
                tracing::info!(key = %m.key, "mail being sent by another flush; skipped");
                continue;
            }
            let message = with_message_id(&m.message, &message_id(&m));
            match mailer.send(&m.sender, &m.recipients, &message).await {
                Ok(()) => {
                    store.mail_sent(&m.key, Utc::now()).await?;
                    tracing::info!(key = %m.key, "mail sent");
                    outcome.sent += 1;
                }
                Err(error) => {
                    let attempts = m.attempts + 1;
                    let next = (!error.is_permanent() && attempts < MAX_ATTEMPTS)
                        .then(|| Utc::now() + backoff(attempts));
                    // A bounded, single-line reason: it is shown by `outbox` and kept.
                    let reason: String = mail::header_safe(&error.to_string())
                        .chars()
                        .take(500)
                        .collect();
                    store.mail_failed(&m.key, &reason, next).await?;
                    tracing::warn!(key = %m.key, attempts, error = %reason, "mail not sent");
                    if next.is_some() {
                        outcome.retry += 1;
                    } else {
                        outcome.failed += 1;
                    }
                }
            }
        }
    }
    outcome.queued = store
        .outbox_counts()
        .await?
        .into_iter()
        .find(|(s, _)| *s == crate::store::OutboxState::Queued)
        .map_or(0, |(_, n)| usize::try_from(n).unwrap_or(usize::MAX));
    Ok(outcome)
}

/// How long a claimed message is reserved for its sender: longer than one SMTP exchange can
/// take (each step is bounded by the mailer's timeout), so a slow send is not sent twice.
const LEASE: chrono::Duration = chrono::Duration::minutes(10);

/// This process's lease owner name: `host/pid/start`, so a later flush on the same host can
/// tell that the holder died (its pid is gone) and take the message over at once.
fn lease_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string());
    format!(
        "{host}/{}/{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or(0)
    )
}

/// Whether the lease holder `owner` is a process of this host that no longer runs.
fn holder_is_dead(owner: &str) -> bool {
    let mut parts = owner.split('/');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    host == here
        && pid.parse::<u32>().is_ok_and(|p| p != std::process::id())
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Claim `key` for `owner`; take over a lease whose holder died on this host.
async fn claim(store: &Store, key: &str, owner: &str) -> Result<bool, BulletinError> {
    let now = Utc::now();
    if store.claim_mail(key, owner, now, now + LEASE).await? {
        return Ok(true);
    }
    match store.mail_lease_owner(key).await? {
        Some(holder) if holder_is_dead(&holder) => {
            tracing::warn!(key, holder = %holder, "the last sender of this mail died; sending it again");
            Ok(store
                .take_over_mail(key, &holder, owner, now + LEASE)
                .await?)
        }
        _ => Ok(false),
    }
}

/// A stable `Message-ID` for an outbox message: from its key and when it was queued (a
/// forced re-send is a new message), at the sender's domain. The same on every attempt, so
/// recipients can drop a duplicate.
pub fn message_id(m: &crate::store::OutboxMail) -> String {
    let seed = format!("{}\n{}", m.key, crate::store::timestamp(m.created_at));
    let digest = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let domain = m
        .sender
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
        .unwrap_or("netpatrol.invalid");
    format!("<{hex}.netpatrol@{domain}>")
}

/// `message` with `Message-ID: id` as its first header, replacing one it may carry.
pub fn with_message_id(message: &str, id: &str) -> String {
    let (head, body) = message.split_once("\r\n\r\n").unwrap_or((message, ""));
    let mut out = format!("Message-ID: {id}\r\n");
    let mut skipping = false;
    for line in head.split("\r\n") {
        let continuation = line.starts_with(' ') || line.starts_with('\t');
        if continuation && skipping {
            continue;
        }
        skipping = line
            .split_once(':')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("message-id"));
        if !skipping {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_put_first_and_replaces_one() {
        let m = "From: a@b\r\nMessage-ID: <old@x>\r\n foo\r\nSubject: s\r\n\r\nbody\r\n";
        let out = with_message_id(m, "<new@b>");
        assert_eq!(
            out,
            "Message-ID: <new@b>\r\nFrom: a@b\r\nSubject: s\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1).num_seconds(), 60);
        assert_eq!(backoff(2).num_seconds(), 120);
        assert_eq!(backoff(5).num_seconds(), 960);
        assert_eq!(backoff(30).num_seconds(), 6 * 3600);
    }
}
