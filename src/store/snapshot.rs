//! Read queries for the daemon: the latest state that `/metrics` and the JSON API show.
//!
//! Input: the tables written by [`Store::record`]. Output: small aggregates (counts grouped by
//! bounded labels), the rows the API lists, and the state of one run. Nothing here writes.
//! Aggregation happens in SQL where it can, so a scrape stays cheap however many findings the
//! store holds; the SQL stays portable (no SQLite-only functions; `LIKE` is only a pre-filter).

use std::collections::{BTreeMap, BTreeSet};

use super::{Backend, Cells, Store, StoreError, StoredRun, finding_from_row, run_from_row};
use crate::finding::Finding;
use chrono::{DateTime, NaiveDate, Utc};

/// The latest complete scan that covered a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestRun {
    pub id: String,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Hosts and services of one scan, counted by where they sit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementCount {
    pub segment: String,
    pub network: String,
    pub department: Option<String>,
    pub hosts: i64,
    pub services: i64,
}

/// One service observation of a scan that holds TLS facts (its `data` is the JSON the scan
/// recorded, a serialised `ServiceObservation`).
#[derive(Debug, Clone)]
pub struct TlsRow {
    pub ip: String,
    pub port: u16,
    pub segment: String,
    pub department: Option<String>,
    pub data: String,
}

/// Open findings of one rule, severity and department.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingCount {
    pub rule: String,
    pub severity: String,
    pub department: Option<String>,
    pub count: i64,
    /// Of which `due` is before the day asked about.
    pub overdue: i64,
}

/// Filters of `GET /api/v1/findings`; `None` = any.
#[derive(Debug, Clone, Default)]
pub struct FindingFilter {
    pub department: Option<String>,
    pub severity: Option<String>,
    pub rule: Option<String>,
}

/// Rows read per page when looking for the latest run of each segment.
const RUN_PAGE: i64 = 100;

impl Store {
    /// Whether the store answers (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Changes whenever a run is recorded: the number of finished runs and the latest end.
    pub async fn runs_version(&self) -> Result<(i64, Option<String>), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MAX(finished_at) AS last FROM scan_runs WHERE state <> 'running'",
        )
        .fetch_one(&self.pool)
        .await?;
        let c = Cells::aggregate(&row, "scan_runs");
        Ok((c.get("n")?, c.get("last")?))
    }

    /// One run's row, if the store has it.
    pub async fn run(&self, id: &str) -> Result<Option<StoredRun>, StoreError> {
        let row =
            sqlx::query("SELECT id, state, started_at, finished_at FROM scan_runs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// For each segment named, the latest complete scan that covered it. Segments never
    /// scanned completely are absent. Reads runs newest first, a page at a time, and stops as
    /// soon as every segment is placed.
    pub async fn latest_complete_runs(
        &self,
        segments: &[&str],
    ) -> Result<BTreeMap<String, LatestRun>, StoreError> {
        let mut wanted: BTreeSet<&str> = segments.iter().copied().collect();
        let mut out = BTreeMap::new();
        let mut offset = 0i64;
        while !wanted.is_empty() {
            let rows = sqlx::query(
                "SELECT id, segments, finished_at FROM scan_runs WHERE state = 'complete'
                 ORDER BY started_at DESC, id DESC LIMIT $1 OFFSET $2",
            )
            .bind(RUN_PAGE)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            offset += rows.len() as i64;
            for r in rows {
                let c = Cells::new(&r, "scan_runs", "id");
                let covered: Vec<String> = c.json("segments")?;
                let run = LatestRun {
                    id: c.get("id")?,
                    finished_at: c.opt_time("finished_at")?,
                };
                for name in covered {
                    if wanted.remove(name.as_str()) {
                        out.insert(name, run.clone());
                    }
                }
            }
        }
        Ok(out)
    }

    /// For each segment named, the coverage ratio (probes answered or failed remotely over
    /// probes planned) of the latest finished scan that covered it, whatever its state.
    /// Segments never scanned, or only before coverage was measured, are absent.
    pub async fn latest_coverage(
        &self,
        segments: &[&str],
    ) -> Result<BTreeMap<String, f64>, StoreError> {
        let mut wanted: BTreeSet<&str> = segments.iter().copied().collect();
        let mut out = BTreeMap::new();
        let mut offset = 0i64;
        while !wanted.is_empty() {
            let rows = sqlx::query(
                "SELECT id, segments, planned, answered, failed_remote FROM scan_runs
                 WHERE state <> 'running' ORDER BY started_at DESC, id DESC LIMIT $1 OFFSET $2",
            )
            .bind(RUN_PAGE)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            offset += rows.len() as i64;
            for r in rows {
                let c = Cells::new(&r, "scan_runs", "id");
                let covered: Vec<String> = c.json("segments")?;
                let planned: Option<i64> = c.get("planned")?;
                let answered: Option<i64> = c.get("answered")?;
                let remote: Option<i64> = c.get("failed_remote")?;
                let ratio = match (planned, answered, remote) {
                    (Some(0), _, _) => Some(1.0),
                    (Some(p), Some(a), Some(f)) => Some((a + f) as f64 / p as f64),
                    _ => None,
                };
                for name in covered {
                    if wanted.remove(name.as_str())
                        && let Some(ratio) = ratio
                    {
                        out.insert(name, ratio);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Hosts and services that scan `scan_id` saw, counted by segment, network and department
    /// (one pass over the scan's observations).
    pub async fn placement_counts(&self, scan_id: &str) -> Result<Vec<PlacementCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT h.segment AS segment, h.network AS network, h.department AS department,
                    SUM(CASE WHEN o.kind = 'host' THEN 1 ELSE 0 END) AS hosts,
                    SUM(CASE WHEN o.kind = 'service' THEN 1 ELSE 0 END) AS services
             FROM observations o JOIN hosts h ON h.ip = o.ip
             WHERE o.scan_id = $1
             GROUP BY h.segment, h.network, h.department",
        )
        .bind(scan_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::aggregate(r, "observations");
                Ok(PlacementCount {
                    segment: c.get("segment")?,
                    network: c.get("network")?,
                    department: c.get("department")?,
                    hosts: c.get("hosts")?,
                    services: c.get("services")?,
                })
            })
            .collect()
    }

    /// Service observations of scan `scan_id` that hold TLS facts.
    pub async fn tls_observations(&self, scan_id: &str) -> Result<Vec<TlsRow>, StoreError> {
        // The NOT LIKE skips plaintext services without parsing their JSON; a row it lets
        // through with no TLS facts is skipped by the caller.
        let rows = sqlx::query(
            "SELECT o.ip AS ip, o.port AS port, o.data AS data, h.segment AS segment,
                    h.department AS department
             FROM observations o JOIN hosts h ON h.ip = o.ip
             WHERE o.scan_id = $1 AND o.kind = 'service' AND o.data NOT LIKE '%\"tls\":null%'",
        )
        .bind(scan_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let c = Cells::new(r, "observations", "ip");
            // A service observation without a port names no endpoint: nothing to export.
            let Some(port) = c.opt_int("port")? else {
                continue;
            };
            out.push(TlsRow {
                ip: c.get("ip")?,
                port,
                segment: c.get("segment")?,
                department: c.get("department")?,
                data: c.get("data")?,
            });
        }
        Ok(out)
    }

    /// Open findings counted by rule, severity and department, with how many are overdue
    /// (`due` before `today`, the organisation's calendar day). Reads the
    /// `findings_open_by_rule` index only.
    pub async fn open_finding_counts(
        &self,
        today: NaiveDate,
    ) -> Result<Vec<FindingCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT rule, severity, department, COUNT(*) AS n,
                    SUM(CASE WHEN due < $1 THEN 1 ELSE 0 END) AS overdue
             FROM findings WHERE state = 'open'
             GROUP BY rule, severity, department",
        )
        .bind(today.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::aggregate(r, "findings");
                Ok(FindingCount {
                    rule: c.get("rule")?,
                    severity: c.get("severity")?,
                    department: c.get("department")?,
                    count: c.get("n")?,
                    overdue: c.get("overdue")?,
                })
            })
            .collect()
    }

    /// Open findings no department has answered yet, counted by department and rule.
    pub async fn open_unanswered_counts(
        &self,
    ) -> Result<Vec<(Option<String>, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT department, rule, COUNT(*) AS n FROM findings f
             WHERE state = 'open' AND NOT EXISTS
               (SELECT 1 FROM rectification_answers a WHERE a.fingerprint = f.fingerprint)
             GROUP BY department, rule",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::aggregate(r, "findings");
                Ok((c.get("department")?, c.get("rule")?, c.get("n")?))
            })
            .collect()
    }

    /// Open findings of `rule` counted by segment and department.
    pub async fn open_findings_by_segment(
        &self,
        rule: &str,
    ) -> Result<Vec<(Option<String>, Option<String>, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT segment, department, COUNT(*) AS n FROM findings
             WHERE state = 'open' AND rule = $1
             GROUP BY segment, department",
        )
        .bind(rule)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::aggregate(r, "findings");
                Ok((c.get("segment")?, c.get("department")?, c.get("n")?))
            })
            .collect()
    }

    /// Open findings matching `filter`, most severe first, then oldest first.
    pub async fn open_findings(&self, filter: &FindingFilter) -> Result<Vec<Finding>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM findings
             WHERE state = 'open'
               AND ($1 IS NULL OR department = $1)
               AND ($2 IS NULL OR severity = $2)
               AND ($3 IS NULL OR rule = $3)
             ORDER BY first_seen, fingerprint",
        )
        .bind(&filter.department)
        .bind(&filter.severity)
        .bind(&filter.rule)
        .fetch_all(&self.pool)
        .await?;
        let mut findings = rows
            .iter()
            .map(finding_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        Ok(findings)
    }

    /// Probe errors over every recorded scan, summed by probe and reason.
    pub async fn probe_error_totals(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT probe, reason, CAST(SUM(count) AS BIGINT) AS n FROM probe_errors GROUP BY probe, reason",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::aggregate(r, "probe_errors");
                Ok((c.get("probe")?, c.get("reason")?, c.get("n")?))
            })
            .collect()
    }

    /// Outbox messages counted by state; `None` while the store has no outbox table.
    pub async fn outbox_by_state(&self) -> Result<Option<Vec<(String, i64)>>, StoreError> {
        let exists: Option<String> = sqlx::query_scalar(match self.backend {
            Backend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
            }
            Backend::Postgres => {
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = 'outbox'"
            }
        })
        .fetch_optional(&self.pool)
        .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::aggregate(r, "outbox");
                Ok((c.get("state")?, c.get("n")?))
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}
