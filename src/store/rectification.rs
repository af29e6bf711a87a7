//! The rectification loop's records: departments' answers given through their capability
//! link, and the link key kept when the config names none.
//!
//! Input: one [`Answer`] per accepted form post. Output: the answers of a department (newest
//! last). Answers are only ever inserted; what the bureau decides later is another row or
//! state, never an edit of what the department said.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, NaiveDate, Utc};

use super::{Cells, Store, StoreError, timestamp};

/// What a department answered about one finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// 已整改: rectified.
    Done,
    /// 申请豁免: a waiver request (reason, proposed expiry).
    Waiver,
    /// 有异议: a dispute (reason).
    Dispute,
}

impl AnswerKind {
    pub const ALL: [AnswerKind; 3] = [AnswerKind::Done, AnswerKind::Waiver, AnswerKind::Dispute];

    /// As stored and posted: `done`, `waiver`, `dispute`.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerKind::Done => "done",
            AnswerKind::Waiver => "waiver",
            AnswerKind::Dispute => "dispute",
        }
    }

    pub fn parse(text: &str) -> Option<AnswerKind> {
        AnswerKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// One answer, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub at: DateTime<Utc>,
    pub department: String,
    pub period: String,
    pub fingerprint: String,
    pub kind: AnswerKind,
    /// Done: the optional note; waiver and dispute: the reason.
    pub note: Option<String>,
    /// Waiver: the expiry the department proposes.
    pub proposed_expiry: Option<NaiveDate>,
    /// Client `ADDR:PORT`.
    pub peer: String,
    /// `received` until the re-test or the operator decides.
    pub state: String,
}

/// A waiver the bureau approved (operator page), kept in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredException {
    /// The waiver request's answer id.
    pub id: String,
    pub rule: String,
    pub ip: Option<String>,
    pub port: Option<u16>,
    pub department: Option<String>,
    pub reason: String,
    pub approver: String,
    pub expires_on: NaiveDate,
}

/// Where a stored waiver says it was written (its `Waiver::at`), to tell it from the config's.
pub const STORED_WAIVER_FILE: &str = "(store: stored_exceptions)";

impl StoredException {
    /// The waiver the waiver machinery reads (scope: address, port, department).
    pub fn waiver(&self) -> crate::config::Waiver {
        crate::config::Waiver {
            rule: self.rule.clone(),
            ip: self
                .ip
                .as_deref()
                .and_then(|t| t.parse::<std::net::IpAddr>().ok())
                .map(ipnet::IpNet::from),
            port: self.port,
            segment: None,
            department: self.department.clone(),
            project: None,
            reason: self.reason.clone(),
            approver: self.approver.clone(),
            expires_on: self.expires_on,
            at: crate::problem::Position {
                file: std::path::PathBuf::from(STORED_WAIVER_FILE),
                line: None,
                column: None,
                key: Some(self.id.clone()),
            },
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The link key kept in the store, made by `fresh` (hex) the first time. Two processes
    /// racing agree: the first insert wins and both read it back.
    pub async fn link_key_or_create(&self, fresh: String) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO link_keys (id, key_hex, created_at) VALUES ('default', $1, $2)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(fresh)
        .bind(timestamp(Utc::now()))
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT id, key_hex FROM link_keys WHERE id = 'default'")
            .fetch_one(&self.pool)
            .await?;
        Cells::new(&row, "link_keys", "id").get("key_hex")
    }

    /// Record one answer; returns its id.
    pub async fn record_answer(&self, answer: &Answer) -> Result<String, StoreError> {
        let id = format!(
            "{}-{}-{}",
            timestamp(answer.at),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sqlx::query(
            "INSERT INTO rectification_answers
               (id, at, department, period, fingerprint, kind, note, proposed_expiry, peer, state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&id)
        .bind(timestamp(answer.at))
        .bind(&answer.department)
        .bind(&answer.period)
        .bind(&answer.fingerprint)
        .bind(answer.kind.as_str())
        .bind(&answer.note)
        .bind(
            answer
                .proposed_expiry
                .map(|d| d.format("%Y-%m-%d").to_string()),
        )
        .bind(&answer.peer)
        .bind(&answer.state)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Set what became of answer `id` (`retest_passed`, `retest_failed`, ...).
    pub async fn set_answer_state(&self, id: &str, state: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE rectification_answers SET state = $2 WHERE id = $1")
            .bind(id)
            .bind(state)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Resolve the open finding `fingerprint` now, on a passed re-test (复测通过): only that
    /// row. Returns whether it was open. (No `finding_events` row: those name a scan run, and
    /// a re-test records none; the answer's state says why it closed.)
    pub async fn resolve_by_retest(
        &self,
        fingerprint: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE findings SET state = 'resolved', resolved_at = $2
             WHERE fingerprint = $1 AND state = 'open'",
        )
        .bind(fingerprint)
        .bind(timestamp(at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every answer `department` gave, oldest first.
    pub async fn answers(&self, department: &str) -> Result<Vec<Answer>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, department, period, fingerprint, kind, note, proposed_expiry, peer, state
             FROM rectification_answers WHERE department = $1 ORDER BY at, id",
        )
        .bind(department)
        .fetch_all(&self.pool)
        .await?;
        Ok(answers_of(&rows)?.into_iter().map(|(_, a)| a).collect())
    }

    /// Waiver requests and disputes with their ids, oldest first; only those still
    /// `received` (undecided) unless `all`.
    pub async fn requests(&self, all: bool) -> Result<Vec<(String, Answer)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, department, period, fingerprint, kind, note, proposed_expiry, peer, state
             FROM rectification_answers
             WHERE kind IN ('waiver', 'dispute') AND ($1 = 1 OR state = 'received')
             ORDER BY at, id",
        )
        .bind(i64::from(all))
        .fetch_all(&self.pool)
        .await?;
        answers_of(&rows)
    }

    /// Approve waiver request `id`: keep `exception` and mark the answer `approved`, in one
    /// transaction. Returns false (and changes nothing) when `id` is no undecided request.
    pub async fn approve_waiver(&self, exception: &StoredException) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE rectification_answers SET state = 'approved'
             WHERE id = $1 AND kind = 'waiver' AND state = 'received'",
        )
        .bind(&exception.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO stored_exceptions
               (id, rule, ip, port, department, reason, approver, expires_on, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&exception.id)
        .bind(&exception.rule)
        .bind(&exception.ip)
        .bind(exception.port.map(i64::from))
        .bind(&exception.department)
        .bind(&exception.reason)
        .bind(&exception.approver)
        .bind(exception.expires_on.format("%Y-%m-%d").to_string())
        .bind(timestamp(Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deny request `id` (a waiver request or a dispute). Returns false when it is no
    /// undecided request.
    pub async fn deny_request(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE rectification_answers SET state = 'denied'
             WHERE id = $1 AND kind IN ('waiver', 'dispute') AND state = 'received'",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every answer of every department, oldest first (for the loop's metrics).
    pub async fn all_answers(&self) -> Result<Vec<Answer>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, department, period, fingerprint, kind, note, proposed_expiry, peer, state
             FROM rectification_answers ORDER BY at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(answers_of(&rows)?.into_iter().map(|(_, a)| a).collect())
    }

    /// Put the stored waivers in force in `config`, beside (never instead of) the ones its
    /// file declares: what `bulletin` and `scan` read, as the daemon does.
    pub async fn add_stored_waivers(
        &self,
        config: &mut crate::config::Config,
    ) -> Result<(), StoreError> {
        let stored = self.stored_exceptions().await?;
        config
            .exceptions
            .retain(|w| w.at.file != std::path::Path::new(STORED_WAIVER_FILE));
        config
            .exceptions
            .extend(stored.iter().map(StoredException::waiver));
        Ok(())
    }

    /// The approved waivers kept in the store.
    pub async fn stored_exceptions(&self) -> Result<Vec<StoredException>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, rule, ip, port, department, reason, approver, expires_on
             FROM stored_exceptions ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "stored_exceptions", "id");
                let port: Option<i64> = c.get("port")?;
                let expires: String = c.get("expires_on")?;
                Ok(StoredException {
                    id: c.get("id")?,
                    rule: c.get("rule")?,
                    ip: c.get("ip")?,
                    port: match port {
                        None => None,
                        Some(p) => Some(
                            u16::try_from(p)
                                .map_err(|_| c.bad("port", format!("not a port: {p}")))?,
                        ),
                    },
                    department: c.get("department")?,
                    reason: c.get("reason")?,
                    approver: c.get("approver")?,
                    expires_on: NaiveDate::parse_from_str(&expires, "%Y-%m-%d")
                        .map_err(|_| c.bad("expires_on", format!("not a day: {expires:?}")))?,
                })
            })
            .collect()
    }
}

/// Answer rows with their ids.
fn answers_of(rows: &[sqlx::any::AnyRow]) -> Result<Vec<(String, Answer)>, StoreError> {
    {
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "rectification_answers", "id");
                let kind: String = c.get("kind")?;
                let expiry: Option<String> = c.get("proposed_expiry")?;
                let id: String = c.get("id")?;
                Ok((
                    id,
                    Answer {
                        at: c.time("at")?,
                        department: c.get("department")?,
                        period: c.get("period")?,
                        fingerprint: c.get("fingerprint")?,
                        kind: AnswerKind::parse(&kind)
                            .ok_or_else(|| c.bad("kind", format!("unknown answer {kind:?}")))?,
                        note: c.get("note")?,
                        proposed_expiry: match expiry {
                            None => None,
                            Some(text) => {
                                Some(NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(
                                    |_| c.bad("proposed_expiry", format!("not a day: {text:?}")),
                                )?)
                            }
                        },
                        peer: c.get("peer")?,
                        state: c.get("state")?,
                    },
                ))
            })
            .collect()
    }
}
