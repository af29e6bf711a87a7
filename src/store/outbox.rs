//! The durable mail outbox: bulletins and rectification notices waiting to be sent.
//!
//! A message is stored whole (the RFC 5322 text lettre built), with its envelope, before any
//! attempt to send it, so SMTP being down or the process restarting loses nothing. Each row
//! has a unique key (`period|kind|recipient`): enqueueing the same period's mail again does
//! nothing unless forced. States: `queued` (waiting, possibly after failed attempts, until
//! `next_attempt_at`), `sent`, `failed` (a permanent SMTP refusal or too many attempts).
//!
//! Exactly once: a sender claims a message ([`Store::claim_mail`], a lease with an owner and
//! an expiry) before sending it, and clears the lease when it records the outcome. A sender
//! killed mid-send leaves its lease; it expires, or is taken over at once by a later sender
//! that sees its holder is dead ([`Store::take_over_mail`]): the message is sent again (one
//! duplicate at most, under the same `Message-ID`), never lost.

use super::{Cells, Store, StoreError, timestamp};
use chrono::{DateTime, Utc};

/// A message to put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    /// `period|kind|recipient`.
    pub key: String,
    /// `bulletin` | `notice`.
    pub kind: String,
    pub period: String,
    /// Envelope sender (an address).
    pub sender: String,
    /// Envelope recipients (addresses).
    pub recipients: Vec<String>,
    pub subject: String,
    /// The whole message as it goes on the wire.
    pub message: String,
}

/// A message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMail {
    pub key: String,
    pub kind: String,
    pub period: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub message: String,
    pub state: OutboxState,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutboxState {
    Queued,
    Sent,
    Failed,
}

impl OutboxState {
    pub const ALL: [OutboxState; 3] = [OutboxState::Queued, OutboxState::Sent, OutboxState::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Queued => "queued",
            OutboxState::Sent => "sent",
            OutboxState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<OutboxState> {
        OutboxState::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// What [`Store::enqueue_mail`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new row.
    Added,
    /// The key was there and `force` replaced it (queued again, attempts reset).
    Replaced,
    /// The key was there already: nothing changed.
    Exists,
}

impl Store {
    /// Put a message in the outbox, due at `now`. A key already present is left alone unless
    /// `force`, which replaces the message and queues it again.
    pub async fn enqueue_mail(
        &self,
        mail: &NewMail,
        now: DateTime<Utc>,
        force: bool,
    ) -> Result<Enqueued, StoreError> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT key FROM outbox WHERE key = $1")
            .bind(&mail.key)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() && !force {
            return Ok(Enqueued::Exists);
        }
        let at = timestamp(now);
        sqlx::query(
            "INSERT INTO outbox (key, kind, period, sender, recipients, subject, message, state,
               attempts, created_at, next_attempt_at, sent_at, last_error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $8, NULL, NULL)
             ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, period = excluded.period,
               sender = excluded.sender, recipients = excluded.recipients,
               subject = excluded.subject, message = excluded.message, state = 'queued',
               attempts = 0, created_at = excluded.created_at,
               next_attempt_at = excluded.next_attempt_at, sent_at = NULL, last_error = NULL,
               lease_until = NULL, lease_owner = NULL",
        )
        .bind(&mail.key)
        .bind(&mail.kind)
        .bind(&mail.period)
        .bind(&mail.sender)
        .bind(serde_json::to_string(&mail.recipients)?)
        .bind(&mail.subject)
        .bind(&mail.message)
        .bind(&at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(if exists.is_some() {
            Enqueued::Replaced
        } else {
            Enqueued::Added
        })
    }

    /// Every message in the outbox, oldest first.
    pub async fn outbox(&self) -> Result<Vec<OutboxMail>, StoreError> {
        let rows = sqlx::query("SELECT * FROM outbox ORDER BY created_at, key")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(mail_from_row).collect()
    }

    /// Queued messages whose next attempt is due at `now` (all queued ones when `now` is
    /// `None`), oldest first.
    pub async fn outbox_due(
        &self,
        now: Option<DateTime<Utc>>,
    ) -> Result<Vec<OutboxMail>, StoreError> {
        // A far-future bound keeps one portable query for both cases.
        let bound = now.map_or_else(|| "9999".to_string(), timestamp);
        let rows = sqlx::query(
            "SELECT * FROM outbox WHERE state = 'queued' AND next_attempt_at <= $1
             ORDER BY created_at, key",
        )
        .bind(bound)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(mail_from_row).collect()
    }

    /// Messages per state (every state present, zero included).
    pub async fn outbox_counts(&self) -> Result<Vec<(OutboxState, u64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut counts: Vec<(OutboxState, u64)> =
            OutboxState::ALL.into_iter().map(|s| (s, 0)).collect();
        for r in &rows {
            let c = Cells::aggregate(r, "outbox");
            let state = c.parsed("state", OutboxState::parse)?;
            let n: u64 = c.int("n")?;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
                slot.1 = n;
            }
        }
        Ok(counts)
    }

    /// Claim queued message `key` for `owner` until `until`: true when no one else holds an
    /// unexpired lease on it (then only `owner` sends it). One conditional UPDATE, so two
    /// flushes racing for a message cannot both win (portable SQL: no row locks needed).
    pub async fn claim_mail(
        &self,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE outbox SET lease_until = $1, lease_owner = $2
             WHERE key = $3 AND state = 'queued' AND (lease_until IS NULL OR lease_until < $4)",
        )
        .bind(timestamp(until))
        .bind(owner)
        .bind(key)
        .bind(timestamp(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Who holds the lease on queued message `key`, if anyone.
    pub async fn mail_lease_owner(&self, key: &str) -> Result<Option<String>, StoreError> {
        let owner: Option<Option<String>> = sqlx::query_scalar(
            "SELECT lease_owner FROM outbox WHERE key = $1 AND state = 'queued'",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(owner.flatten())
    }

    /// Take over the lease `dead` held on `key` (its holder is known to have died): true when
    /// it was still `dead`'s.
    pub async fn take_over_mail(
        &self,
        key: &str,
        dead: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE outbox SET lease_until = $1, lease_owner = $2
             WHERE key = $3 AND state = 'queued' AND lease_owner = $4",
        )
        .bind(timestamp(until))
        .bind(owner)
        .bind(key)
        .bind(dead)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Record a successful delivery (and drop the lease).
    pub async fn mail_sent(&self, key: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = $2,
               last_error = NULL, lease_until = NULL, lease_owner = NULL WHERE key = $1",
        )
        .bind(key)
        .bind(timestamp(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Record a failed attempt: queued again for `next_attempt_at`, or `failed` for good when
    /// `next_attempt_at` is `None`.
    pub async fn mail_failed(
        &self,
        key: &str,
        error: &str,
        next_attempt_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let state = match next_attempt_at {
            Some(_) => OutboxState::Queued,
            None => OutboxState::Failed,
        };
        sqlx::query(
            "UPDATE outbox SET state = $2, attempts = attempts + 1,
               next_attempt_at = COALESCE($3, next_attempt_at), last_error = $4,
               lease_until = NULL, lease_owner = NULL WHERE key = $1",
        )
        .bind(key)
        .bind(state.as_str())
        .bind(next_attempt_at.map(timestamp))
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn mail_from_row(r: &sqlx::any::AnyRow) -> Result<OutboxMail, StoreError> {
    let c = Cells::new(r, "outbox", "key");
    Ok(OutboxMail {
        key: c.get("key")?,
        kind: c.get("kind")?,
        period: c.get("period")?,
        sender: c.get("sender")?,
        recipients: c.json("recipients")?,
        subject: c.get("subject")?,
        message: c.get("message")?,
        state: c.parsed("state", OutboxState::parse)?,
        attempts: c.int("attempts")?,
        created_at: c.time("created_at")?,
        next_attempt_at: c.time("next_attempt_at")?,
        sent_at: c.opt_time("sent_at")?,
        last_error: c.get("last_error")?,
    })
}
