//! The audit trail of the daemon's API: who did what, from where, with what outcome.
//!
//! Input: one [`AuditEntry`] per request the daemon answered (refusals included). Output: the
//! entries since an instant, oldest first, for `netpatrol audit`. Rows are only ever inserted.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use super::{Cells, Store, StoreError, timestamp};

/// One API action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// `operator`, `read`, `user:NAME`; for a refusal what was presented (`-` for nothing).
    pub principal: String,
    /// Client `ADDR:PORT`.
    pub peer: String,
    pub method: String,
    /// The path (no query string).
    pub route: String,
    pub status: u16,
    /// What the action started or why it was refused.
    pub detail: Option<String>,
}

/// Makes ids unique within a process; the process id and the time make them unique across
/// processes writing one store.
static SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Record one API action.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let id = format!(
            "{}-{}-{}",
            timestamp(entry.at),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sqlx::query(
            "INSERT INTO audit (id, at, principal, peer, method, route, status, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(timestamp(entry.at))
        .bind(&entry.principal)
        .bind(&entry.peer)
        .bind(&entry.method)
        .bind(&entry.route)
        .bind(i64::from(entry.status))
        .bind(&entry.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The actions recorded at or after `since` (all when `None`), oldest first.
    pub async fn audit_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, principal, peer, method, route, status, detail FROM audit
             WHERE at >= $1 ORDER BY at, id",
        )
        .bind(since.map_or_else(|| "0".to_string(), timestamp))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "audit", "id");
                Ok(AuditEntry {
                    at: c.time("at")?,
                    principal: c.get("principal")?,
                    peer: c.get("peer")?,
                    method: c.get("method")?,
                    route: c.get("route")?,
                    status: c.int("status")?,
                    detail: c.get("detail")?,
                })
            })
            .collect()
    }
}
