//! The rectification loop's records: departments' answers given through their capability
//! link, and the link key kept when the config names none.
//!
//! Input: one [`Answer`] per accepted form post; one [`Decision`] per waiver request or
//! dispute the bureau decides (operator page or API). Output: the answers of a department
//! (newest last), the undecided requests, the decisions, the stored exceptions (waivers and
//! rule overrides) the waiver machinery reads. Answers are only ever inserted; what the bureau
//! decides later is another row (`rectification_decisions`) and the answer's state, never an
//! edit of what the department said.

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

/// What a stored exception is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceptionKind {
    /// An approved waiver (a waiver request, or a dispute turned into one): until its expiry.
    Waiver,
    /// A rule override: a dispute upheld, the rule is off for that locus (address, port,
    /// department); it has no expiry of its own ([`override_expires`]).
    Override,
}

impl ExceptionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExceptionKind::Waiver => "waiver",
            ExceptionKind::Override => "override",
        }
    }
}

/// The last day of a rule override: none in practice (9999-12-31).
pub fn override_expires() -> NaiveDate {
    NaiveDate::from_ymd_opt(9999, 12, 31).unwrap_or(NaiveDate::MAX)
}

/// A waiver or rule override the bureau decided (operator page or API), kept in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredException {
    /// The answer (waiver request or dispute) it decides.
    pub id: String,
    pub kind: ExceptionKind,
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

/// What the bureau decided about a waiver request or a dispute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    /// A waiver request approved: a waiver.
    Approved,
    /// A waiver request denied (the department is told, with the note).
    Denied,
    /// A dispute closed with a note: the finding stands.
    Closed,
    /// A dispute turned into a waiver.
    Waived,
    /// A dispute turned into a rule override.
    Overridden,
}

impl DecisionKind {
    pub const ALL: [DecisionKind; 5] = [
        DecisionKind::Approved,
        DecisionKind::Denied,
        DecisionKind::Closed,
        DecisionKind::Waived,
        DecisionKind::Overridden,
    ];

    /// As stored, and the answer's state after it.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Approved => "approved",
            DecisionKind::Denied => "denied",
            DecisionKind::Closed => "closed",
            DecisionKind::Waived => "waived",
            DecisionKind::Overridden => "overridden",
        }
    }

    pub fn parse(text: &str) -> Option<DecisionKind> {
        DecisionKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The kind of answer it decides.
    pub fn decides(self) -> AnswerKind {
        match self {
            DecisionKind::Approved | DecisionKind::Denied => AnswerKind::Waiver,
            _ => AnswerKind::Dispute,
        }
    }

    /// Whether the department hears of it by mail (its request or dispute was not granted).
    pub fn notifies(self) -> bool {
        matches!(self, DecisionKind::Denied | DecisionKind::Closed)
    }
}

/// One decision, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub answer_id: String,
    pub at: DateTime<Utc>,
    pub kind: DecisionKind,
    /// Who decided, as the audit names them (`operator`, `user:NAME`).
    pub actor: String,
    pub note: Option<String>,
    /// Approved, waived: the waiver's last day.
    pub expires_on: Option<NaiveDate>,
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

    /// Record `decision` about the undecided request it names, and keep `exception` (a
    /// waiver or rule override) when given, in one transaction. Returns false (and changes
    /// nothing) when the answer is no undecided request of the kind the decision decides.
    pub async fn decide(
        &self,
        decision: &Decision,
        exception: Option<&StoredException>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE rectification_answers SET state = $2
             WHERE id = $1 AND kind = $3 AND state = 'received'",
        )
        .bind(&decision.answer_id)
        .bind(decision.kind.as_str())
        .bind(decision.kind.decides().as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO rectification_decisions (answer_id, at, decision, actor, note, expires_on)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&decision.answer_id)
        .bind(timestamp(decision.at))
        .bind(decision.kind.as_str())
        .bind(&decision.actor)
        .bind(&decision.note)
        .bind(
            decision
                .expires_on
                .map(|d| d.format("%Y-%m-%d").to_string()),
        )
        .execute(&mut *tx)
        .await?;
        if let Some(exception) = exception {
            sqlx::query(
                "INSERT INTO stored_exceptions
                   (id, rule, ip, port, department, reason, approver, expires_on, created_at, kind)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
            .bind(exception.kind.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Every decision, by the id of the answer it decides.
    pub async fn decisions(
        &self,
    ) -> Result<std::collections::HashMap<String, Decision>, StoreError> {
        let rows = sqlx::query(
            "SELECT answer_id, at, decision, actor, note, expires_on FROM rectification_decisions",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "rectification_decisions", "answer_id");
                let kind: String = c.get("decision")?;
                let expires: Option<String> = c.get("expires_on")?;
                let d = Decision {
                    answer_id: c.get("answer_id")?,
                    at: c.time("at")?,
                    kind: DecisionKind::parse(&kind)
                        .ok_or_else(|| c.bad("decision", format!("unknown decision {kind:?}")))?,
                    actor: c.get("actor")?,
                    note: c.get("note")?,
                    expires_on: match expires {
                        None => None,
                        Some(t) => Some(
                            NaiveDate::parse_from_str(&t, "%Y-%m-%d")
                                .map_err(|_| c.bad("expires_on", format!("not a day: {t:?}")))?,
                        ),
                    },
                };
                Ok((d.answer_id.clone(), d))
            })
            .collect()
    }

    /// The bureau's latest note on each finding of `department` it decided a request about,
    /// by fingerprint (what the department's page shows beside the decision).
    pub async fn decision_notes(
        &self,
        department: &str,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.fingerprint AS fingerprint, d.note AS note, d.answer_id AS answer_id
             FROM rectification_decisions d
             JOIN rectification_answers a ON a.id = d.answer_id
             WHERE a.department = $1 AND d.note IS NOT NULL
             ORDER BY d.at, d.answer_id",
        )
        .bind(department)
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::HashMap::new();
        for r in &rows {
            let c = Cells::new(r, "rectification_decisions", "answer_id");
            out.insert(c.get("fingerprint")?, c.get("note")?);
        }
        Ok(out)
    }

    /// The answer `id` (any kind, any state), if there is one.
    pub async fn answer(&self, id: &str) -> Result<Option<Answer>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, department, period, fingerprint, kind, note, proposed_expiry, peer, state
             FROM rectification_answers WHERE id = $1",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(answers_of(&rows)?.into_iter().next().map(|(_, a)| a))
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
            "SELECT id, rule, ip, port, department, reason, approver, expires_on, kind
             FROM stored_exceptions ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "stored_exceptions", "id");
                let port: Option<i64> = c.get("port")?;
                let expires: String = c.get("expires_on")?;
                let kind: String = c.get("kind")?;
                Ok(StoredException {
                    id: c.get("id")?,
                    kind: match kind.as_str() {
                        "waiver" => ExceptionKind::Waiver,
                        "override" => ExceptionKind::Override,
                        other => {
                            return Err(c.bad("kind", format!("unknown exception kind {other:?}")));
                        }
                    },
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
