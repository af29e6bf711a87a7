//! Sensors and hub in the store (migration 0010).
//!
//! Hub side: `sensor_batches` keeps every batch a sensor posted, whole, keyed by its id, so a
//! batch sent again is recognised ([`Received::Duplicate`]) and a scan is assembled from its
//! batches when its final one is in; the run is begun (`scan_runs.sensor` set, `running`) in
//! the same transaction as the scan's first batch, and recorded once by
//! [`Store::record_once`]. `sensor_contacts` holds each sensor's last contact and backlog.
//!
//! Sensor side: `sensor_outbox` holds the batches waiting for the hub, in the order they were
//! made (`n`), and the sent ones of scans whose final batch is not sent yet (a sensor killed
//! mid-scan finds them at start and closes the scan with an `incomplete` final batch);
//! `sensor_assignment` caches the last assignment fetched.

use chrono::{DateTime, Utc};

use super::{Cells, Store, StoreError, timestamp};
use crate::observation::ScanRun;

/// What the hub made of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Stored now (and the run begun, for a scan's first batch).
    New,
    /// A batch with this id was stored before: nothing was done.
    Duplicate,
}

/// A sensor as the hub last heard from it.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorContact {
    pub sensor: String,
    pub last_contact: DateTime<Utc>,
    /// Batches the sensor said were waiting in its outbox.
    pub backlog: u64,
}

/// A batch waiting in a sensor's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxBatch {
    pub batch: String,
    pub scan_id: String,
    pub seq: u64,
    pub is_final: bool,
    pub request: Option<String>,
    pub created_at: String,
    /// The batch's JSON, as it goes to the hub (its `backlog` is set when sent).
    pub payload: String,
}

/// What a hub stores of one received batch.
#[derive(Debug, Clone)]
pub struct IncomingBatch<'a> {
    pub batch: &'a str,
    pub sensor: &'a str,
    pub run: &'a ScanRun,
    pub seq: u64,
    pub is_final: bool,
    pub hosts: u64,
    pub refused: u64,
    pub backlog: u64,
    pub payload: &'a str,
}

impl Store {
    /// Hub: store one batch and note the sensor's contact, in one transaction; begin the
    /// sensor's run (`running`, `scan_runs.sensor`) if this is its first batch here.
    pub async fn receive_batch(
        &self,
        incoming: &IncomingBatch<'_>,
        at: DateTime<Utc>,
    ) -> Result<Received, StoreError> {
        let now = timestamp(at);
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO sensor_batches (batch, sensor, scan_id, seq, is_final, received_at, hosts, refused, payload)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (batch) DO NOTHING",
        )
        .bind(incoming.batch)
        .bind(incoming.sensor)
        .bind(&incoming.run.id)
        .bind(incoming.seq as i64)
        .bind(i64::from(incoming.is_final))
        .bind(&now)
        .bind(incoming.hosts as i64)
        .bind(incoming.refused as i64)
        .bind(incoming.payload)
        .execute(&mut *tx)
        .await?;
        let received = if inserted.rows_affected() == 0 {
            Received::Duplicate
        } else {
            let run = incoming.run;
            sqlx::query(
                "INSERT INTO scan_runs (id, started_at, state, segments, probe_kinds, addresses, probes, sensor)
                 VALUES ($1, $2, 'running', $3, $4, $5, 0, $6)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&run.id)
            .bind(timestamp(run.started_at))
            .bind(serde_json::to_string(&run.segments)?)
            .bind(super::probe_kinds(run))
            .bind(run.addresses as i64)
            .bind(incoming.sensor)
            .execute(&mut *tx)
            .await?;
            Received::New
        };
        upsert_contact(&mut tx, incoming.sensor, &now, incoming.backlog).await?;
        tx.commit().await?;
        Ok(received)
    }

    /// Hub: note that `sensor` was heard from (an assignment fetched).
    pub async fn sensor_contact(
        &self,
        sensor: &str,
        at: DateTime<Utc>,
        backlog: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        match backlog {
            Some(b) => upsert_contact(&mut tx, sensor, &timestamp(at), b).await?,
            None => {
                sqlx::query(
                    "INSERT INTO sensor_contacts (sensor, last_contact, backlog) VALUES ($1, $2, 0)
                     ON CONFLICT (sensor) DO UPDATE SET last_contact = excluded.last_contact",
                )
                .bind(sensor)
                .bind(timestamp(at))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Hub: every sensor's last contact and backlog, by sensor id.
    pub async fn sensor_contacts(&self) -> Result<Vec<SensorContact>, StoreError> {
        let rows = sqlx::query(
            "SELECT sensor, last_contact, backlog FROM sensor_contacts ORDER BY sensor",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "sensor_contacts", "sensor");
                Ok(SensorContact {
                    sensor: c.get("sensor")?,
                    last_contact: c.time("last_contact")?,
                    backlog: c.int("backlog")?,
                })
            })
            .collect()
    }

    /// Hub: the payloads of a scan's batches, by sequence number.
    pub async fn scan_batches(&self, scan_id: &str) -> Result<Vec<(u64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT batch, seq, payload FROM sensor_batches WHERE scan_id = $1 ORDER BY seq, batch",
        )
        .bind(scan_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "sensor_batches", "batch");
                Ok((c.int("seq")?, c.get("payload")?))
            })
            .collect()
    }

    /// Hub: a run's state, if the run is known.
    pub async fn run_state(&self, run_id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar::<_, String>("SELECT state FROM scan_runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Hub: sensors' runs still `running` whose final batch is stored (a hub stopped between
    /// storing it and recording the run): (sensor, run id).
    pub async fn sensor_runs_to_finish(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.sensor AS sensor, r.id AS id FROM scan_runs r
             WHERE r.state = 'running' AND r.sensor IS NOT NULL
               AND EXISTS (SELECT 1 FROM sensor_batches b WHERE b.scan_id = r.id AND b.is_final = 1)
             ORDER BY r.started_at, r.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let c = Cells::new(r, "scan_runs", "id");
                Ok((c.get("sensor")?, c.get("id")?))
            })
            .collect()
    }

    /// Hub: each sensor's latest finished run's coverage, (answered + failed remotely) /
    /// planned, by sensor id (runs without planned probes are left out).
    pub async fn sensor_coverage(&self) -> Result<Vec<(String, f64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, sensor, planned, answered, failed_remote FROM scan_runs
             WHERE sensor IS NOT NULL AND state <> 'running' AND planned IS NOT NULL
             ORDER BY started_at DESC, id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<(String, f64)> = Vec::new();
        for r in &rows {
            let c = Cells::new(r, "scan_runs", "id");
            let sensor: String = c.get("sensor")?;
            if out.iter().any(|(s, _)| s == &sensor) {
                continue;
            }
            let planned: i64 = c.get("planned")?;
            if planned <= 0 {
                continue;
            }
            let answered: i64 = c.get::<Option<i64>>("answered")?.unwrap_or(0);
            let remote: i64 = c.get::<Option<i64>>("failed_remote")?.unwrap_or(0);
            out.push((sensor, (answered + remote) as f64 / planned as f64));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Sensor: put a batch in the outbox, after every batch made before it.
    pub async fn outbox_push(&self, batch: &OutboxBatch) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sensor_outbox (batch, n, scan_id, seq, is_final, request, created_at, payload)
             VALUES ($1, (SELECT COALESCE(MAX(n), 0) + 1 FROM sensor_outbox), $2, $3, $4, $5, $6, $7)",
        )
        .bind(&batch.batch)
        .bind(&batch.scan_id)
        .bind(batch.seq as i64)
        .bind(i64::from(batch.is_final))
        .bind(&batch.request)
        .bind(&batch.created_at)
        .bind(&batch.payload)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sensor: the oldest batch not sent yet.
    pub async fn outbox_next(&self) -> Result<Option<OutboxBatch>, StoreError> {
        let row = sqlx::query(
            "SELECT batch, scan_id, seq, is_final, request, created_at, payload FROM sensor_outbox
             WHERE sent_at IS NULL ORDER BY n LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(outbox_from_row).transpose()
    }

    /// Sensor: batches not sent yet.
    pub async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sensor_outbox WHERE sent_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    /// Sensor: mark a batch sent (`outcome`: how the hub answered). Once a scan's final
    /// batch is sent, the scan's rows are no longer needed and are deleted.
    pub async fn outbox_sent(
        &self,
        batch: &str,
        at: DateTime<Utc>,
        outcome: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE sensor_outbox SET sent_at = $2, outcome = $3 WHERE batch = $1")
            .bind(batch)
            .bind(timestamp(at))
            .bind(outcome)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM sensor_outbox WHERE sent_at IS NOT NULL AND scan_id IN
               (SELECT scan_id FROM sensor_outbox WHERE is_final = 1 AND sent_at IS NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sensor: drop batches made before `before` (unsent ones older than `hub.keep_hours`);
    /// how many were dropped.
    pub async fn outbox_prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM sensor_outbox WHERE created_at < $1")
            .bind(timestamp(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Sensor: scans with batches in the outbox but no final batch (the sensor was killed
    /// mid-scan): each scan's first batch and the next sequence number.
    pub async fn outbox_open_scans(&self) -> Result<Vec<(OutboxBatch, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT batch, scan_id, seq, is_final, request, created_at, payload FROM sensor_outbox o
             WHERE seq = (SELECT MIN(seq) FROM sensor_outbox m WHERE m.scan_id = o.scan_id)
               AND NOT EXISTS (SELECT 1 FROM sensor_outbox f WHERE f.scan_id = o.scan_id AND f.is_final = 1)
             ORDER BY n",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let first = outbox_from_row(r)?;
            let max: i64 =
                sqlx::query_scalar("SELECT MAX(seq) FROM sensor_outbox WHERE scan_id = $1")
                    .bind(&first.scan_id)
                    .fetch_one(&self.pool)
                    .await?;
            out.push((first, max.max(0) as u64 + 1));
        }
        Ok(out)
    }

    /// Sensor: the on-demand requests some batch in the outbox answers.
    pub async fn outbox_requests(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT request FROM sensor_outbox WHERE request IS NOT NULL ORDER BY request",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sensor: keep the assignment just fetched (its JSON).
    pub async fn save_assignment(
        &self,
        sensor: &str,
        at: DateTime<Utc>,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sensor_assignment (sensor, fetched_at, body) VALUES ($1, $2, $3)
             ON CONFLICT (sensor) DO UPDATE SET fetched_at = excluded.fetched_at, body = excluded.body",
        )
        .bind(sensor)
        .bind(timestamp(at))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sensor: the last assignment fetched, if any: (when, JSON).
    pub async fn cached_assignment(
        &self,
        sensor: &str,
    ) -> Result<Option<(DateTime<Utc>, String)>, StoreError> {
        let row =
            sqlx::query("SELECT sensor, fetched_at, body FROM sensor_assignment WHERE sensor = $1")
                .bind(sensor)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref()
            .map(|r| {
                let c = Cells::new(r, "sensor_assignment", "sensor");
                Ok((c.time("fetched_at")?, c.get("body")?))
            })
            .transpose()
    }
}

async fn upsert_contact(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    sensor: &str,
    at: &str,
    backlog: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sensor_contacts (sensor, last_contact, backlog) VALUES ($1, $2, $3)
         ON CONFLICT (sensor) DO UPDATE SET last_contact = excluded.last_contact, backlog = excluded.backlog",
    )
    .bind(sensor)
    .bind(at)
    .bind(backlog as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn outbox_from_row(r: &sqlx::any::AnyRow) -> Result<OutboxBatch, StoreError> {
    let c = Cells::new(r, "sensor_outbox", "batch");
    Ok(OutboxBatch {
        batch: c.get("batch")?,
        scan_id: c.get("scan_id")?,
        seq: c.int("seq")?,
        is_final: c.get::<i64>("is_final")? != 0,
        request: c.get("request")?,
        created_at: c.get("created_at")?,
        payload: c.get("payload")?,
    })
}
