//! Queries the bulletin reads: what was scanned, seen, open and resolved between two instants,
//! and the document numbers of issued bulletins.
//!
//! Bounds are half-open `[from, to)` UTC instants; the bulletin turns its period's dates
//! (organisation calendar) into them. Timestamps are compared as text, which orders correctly
//! because the store writes them all in one RFC 3339 form.

use super::{Cells, Store, StoreError, finding_from_row, timestamp};
use crate::finding::Finding;
use chrono::{DateTime, Utc};

/// A scan run started in the period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodRun {
    pub id: String,
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub segments: Vec<String>,
    pub addresses: u64,
}

/// A host that answered in some scan of the period (placement as last recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodHost {
    pub ip: String,
    pub segment: String,
    pub network: String,
    pub department: Option<String>,
}

/// A service seen in the period: its latest observation there (the JSON the scan recorded).
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodService {
    pub ip: String,
    pub port: u16,
    pub seen_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

/// One lifecycle event of a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingEvent {
    pub fingerprint: String,
    pub at: DateTime<Utc>,
    pub event: String,
}

impl Store {
    /// Scan runs started in `[from, to)`, oldest first.
    pub async fn runs_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PeriodRun>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, state, started_at, segments, addresses FROM scan_runs
             WHERE started_at >= $1 AND started_at < $2 ORDER BY started_at, id",
        )
        .bind(timestamp(from))
        .bind(timestamp(to))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "scan_runs", "id");
                Ok(PeriodRun {
                    id: c.get("id")?,
                    state: c.get("state")?,
                    started_at: c.time("started_at")?,
                    segments: c.json("segments")?,
                    addresses: c.int("addresses")?,
                })
            })
            .collect()
    }

    /// Hosts that answered in a scan started in `[from, to)`, by segment and address.
    pub async fn hosts_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PeriodHost>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT h.ip, h.segment, h.network, h.department
             FROM observations o
             JOIN scan_runs r ON r.id = o.scan_id
             JOIN hosts h ON h.ip = o.ip
             WHERE o.kind = 'host' AND r.started_at >= $1 AND r.started_at < $2
             ORDER BY h.segment, h.ip",
        )
        .bind(timestamp(from))
        .bind(timestamp(to))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "hosts", "ip");
                Ok(PeriodHost {
                    ip: c.get("ip")?,
                    segment: c.get("segment")?,
                    network: c.get("network")?,
                    department: c.get("department")?,
                })
            })
            .collect()
    }

    /// Services seen in a scan started in `[from, to)`: the latest observation of each.
    pub async fn services_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PeriodService>, StoreError> {
        let rows = sqlx::query(
            "SELECT o.ip, o.port, o.data, r.started_at
             FROM observations o JOIN scan_runs r ON r.id = o.scan_id
             WHERE o.kind = 'service' AND o.port IS NOT NULL
               AND r.started_at >= $1 AND r.started_at < $2
             ORDER BY o.ip, o.port, r.started_at",
        )
        .bind(timestamp(from))
        .bind(timestamp(to))
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<PeriodService> = Vec::new();
        for r in &rows {
            let c = Cells::new(r, "observations", "ip");
            let service = PeriodService {
                ip: c.get("ip")?,
                port: c.int("port")?,
                seen_at: c.time("started_at")?,
                data: c.json("data")?,
            };
            // Ordered by address, port and time: a later row replaces the earlier one.
            match out.last_mut() {
                Some(last) if last.ip == service.ip && last.port == service.port => *last = service,
                _ => out.push(service),
            }
        }
        Ok(out)
    }

    /// Findings open at some time in `[from, to)`: first seen before `to`, and still open or
    /// resolved after `from`. (A finding resolved and later reopened counts as open since it
    /// was first seen: the store keeps the latest resolution only.)
    pub async fn findings_open_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Finding>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM findings
             WHERE first_seen < $2 AND (state = 'open' OR resolved_at >= $1)
             ORDER BY first_seen, fingerprint",
        )
        .bind(timestamp(from))
        .bind(timestamp(to))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(finding_from_row).collect()
    }

    /// Lifecycle events in `[from, to)`, oldest first.
    pub async fn finding_events_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<FindingEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT fingerprint, at, event FROM finding_events
             WHERE at >= $1 AND at < $2 ORDER BY at, fingerprint, event",
        )
        .bind(timestamp(from))
        .bind(timestamp(to))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "finding_events", "fingerprint");
                Ok(FindingEvent {
                    at: c.time("at")?,
                    event: c.get("event")?,
                    fingerprint: c.get("fingerprint")?,
                })
            })
            .collect()
    }

    /// The document number of the bulletin for `period`: the one it was first issued with (in
    /// any language), else the next of `year`. Records the issue for `lang`.
    pub async fn bulletin_number(
        &self,
        period: &str,
        year: i32,
        lang: &str,
        now: DateTime<Utc>,
    ) -> Result<u32, StoreError> {
        let mut tx = self.pool.begin().await?;
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT MIN(number) FROM bulletins WHERE period = $1")
                .bind(period)
                .fetch_one(&mut *tx)
                .await?;
        let number = match existing {
            Some(n) => n,
            None => {
                let last: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(number) FROM bulletins WHERE year = $1")
                        .bind(i64::from(year))
                        .fetch_one(&mut *tx)
                        .await?;
                last.unwrap_or(0) + 1
            }
        };
        sqlx::query(
            "INSERT INTO bulletins (period, lang, year, number, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (period, lang) DO NOTHING",
        )
        .bind(period)
        .bind(lang)
        .bind(i64::from(year))
        .bind(number)
        .bind(timestamp(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        u32::try_from(number).map_err(|_| StoreError::CorruptRow {
            table: "bulletins",
            column: "number".to_string(),
            row: period.to_string(),
            detail: format!("out of range: {number}"),
        })
    }
}
