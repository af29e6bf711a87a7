//! Several hubs on one PostgreSQL store: two real `netpatrol daemon` processes on one fresh
//! database of the real server. Scheduled scans run once per tick whichever hub is up, the
//! bulletin once per period, an on-demand scan asked of one hub is answered by the other, and
//! when the leader is killed the other hub takes the schedules over and closes the run the
//! dead one left `running`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::daemon::{Daemon, READ_ENV, TOKEN, TOKEN_ENV, post, signal, wait_for};
use crate::support::store::with_postgres_blocking;

/// A hub's config: one small loopback segment with one listener, scanned every two seconds,
/// the bulletin due every second (so the test sees many ticks of one period).
fn hub_yaml(store: &str, port: u16) -> impl Fn(&Path, SocketAddr) -> String {
    let store = store.to_string();
    move |dir, listen| {
        format!(
            "{store}scan: {{icmp: false, ports: [{port}], timeout_ms: 300, dns: {{enabled: false}}}}\n\
             segments:\n  - {{name: lab, network: other, cidrs: [127.122.0.0/30]}}\n\
             \x20 - {{name: remote, network: other, cidrs: [127.122.1.0/30]}}\n\
             sensors:\n  - {{id: far, segments: [remote], token_env: {FAR_ENV}}}\n\
             daemon:\n  listen: {listen}\n  api_token_env: {TOKEN_ENV}\n  read_token_env: {READ_ENV}\n\
             \x20 scans:\n    - {{cron: \"*/2 * * * * *\"}}\n\
             bulletin: {{cron: \"* * * * * *\", out_dir: \"{}\"}}\n",
            dir.join("bulletins").display()
        )
    }
}

const FAR_ENV: &str = "NETPATROL_TEST_FAR_TOKEN";
const FAR_TOKEN: &str = "far-sensor-token";

fn hub(store: &str, port: u16) -> Daemon {
    Daemon::start_with(
        "127.0.0.1",
        hub_yaml(store, port),
        &[(TOKEN_ENV, TOKEN), (FAR_ENV, FAR_TOKEN)],
    )
}

fn leader(d: &Daemon) -> f64 {
    d.metric("netpatrol_leader").unwrap_or(-1.0)
}

/// Bulletin files a hub wrote.
fn bulletins(d: &Daemon) -> usize {
    std::fs::read_dir(d.dir.path().join("bulletins"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// Rows of one query on the test database.
fn rows(url: &str, sql: &'static str) -> Vec<(String, Option<String>, Option<String>)> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut conn = PgConnection::connect(url).await.expect("connect");
        let rows: Vec<(String, Option<String>, Option<String>)> =
            sqlx::query_as(sql).fetch_all(&mut conn).await.expect(sql);
        let _ = conn.close().await;
        rows
    })
}

#[test]
fn two_hubs_on_one_postgres_run_each_tick_once_and_one_bulletin_per_period() {
    with_postgres_blocking(|store| {
        let yaml = store.yaml();
        let url = store.settings.url.clone().expect("a PostgreSQL URL");
        // One real service in the segment, so every scan records a host.
        let listener = std::net::TcpListener::bind("127.122.0.1:0").expect("listener");
        let port = listener.local_addr().unwrap().port();

        let a = hub(&yaml, port);
        let b = hub(&yaml, port);
        // Exactly one of them leads.
        let (first, second) = wait_for("one leader", Duration::from_secs(30), || {
            match (leader(&a), leader(&b)) {
                (1.0, 0.0) => Some((a.addr, b.addr)),
                (0.0, 1.0) => Some((b.addr, a.addr)),
                _ => None,
            }
        });
        let (lead, mut other) = if first == a.addr { (a, b) } else { (b, a) };
        assert_eq!(second, other.addr);

        // An on-demand scan asked of the hub that does not lead, read back from the leader.
        let r = post(other.addr, "/api/v1/scans", Some(TOKEN), "{}");
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.json()["id"].as_str().unwrap().to_string();
        let done = lead.wait_scan(&id);
        assert_eq!(done["state"], "complete", "{done}");
        assert_eq!(done["origin"], "api");

        // An on-demand scan of the sensor's segment asked of one hub is in the sensor's
        // assignment on the other (the sensor may reach either).
        let r = post(
            other.addr,
            "/api/v1/scans",
            Some(TOKEN),
            r#"{"segments": ["remote"]}"#,
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let handed = r.json()["sensors"][0]["request"]
            .as_str()
            .expect("handed to the sensor")
            .to_string();
        let assignment = crate::daemon::get_as(
            lead.addr,
            "/api/v1/sensors/far/assignment",
            Some(&format!("Bearer {FAR_TOKEN}")),
        );
        assert_eq!(assignment.status, 200, "{}", assignment.body);
        // (The first scan, of every segment, handed the sensor a request too.)
        let listed: Vec<String> = assignment.json()["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect();
        assert_eq!(listed.len(), 2, "{}", assignment.body);
        assert!(listed.contains(&handed), "{}", assignment.body);
        let queued = crate::daemon::get(lead.addr, &format!("/api/v1/scans/{handed}")).json();
        assert_eq!(queued["state"], "queued", "{queued}");
        assert_eq!(queued["sensor"], "far", "{queued}");

        // Several scheduled ticks while both hubs run.
        let count = |sql: &'static str| rows(&url, sql).len();
        wait_for("three scheduled scans", Duration::from_secs(60), || {
            (count("SELECT id, scan_id, due FROM scan_jobs WHERE origin = 'schedule' AND state = 'complete'") >= 3)
                .then_some(())
        });
        assert_eq!(bulletins(&lead) + bulletins(&other), bulletins(&lead));

        // The leader dies mid-way (SIGKILL: no goodbye); the other takes over.
        signal(&lead.child, "KILL");
        wait_for("the other hub to lead", Duration::from_secs(60), || {
            (leader(&other) == 1.0).then_some(())
        });
        // Scheduled scans from both hubs: the killed leader's before, the new one's after.
        wait_for(
            "a scheduled scan run by the new leader",
            Duration::from_secs(60),
            || {
                let hubs: std::collections::BTreeSet<Option<String>> = rows(
                    &url,
                    "SELECT id, claimed_by, due FROM scan_jobs
                 WHERE origin = 'schedule' AND state = 'complete'",
                )
                .into_iter()
                .map(|(_, by, _)| by)
                .collect();
                (hubs.len() == 2).then_some(())
            },
        );
        signal(&other.child, "TERM");
        let status = other.child.wait().expect("the second hub exits");
        assert!(status.success(), "{status:?}\n{}", other.log());

        // Each tick of the scan schedule queued one job, and each job produced one run.
        let jobs = rows(
            &url,
            "SELECT id, due, scan_id FROM scan_jobs WHERE origin = 'schedule' ORDER BY due",
        );
        let mut ticks = std::collections::BTreeSet::new();
        for (id, due, _) in &jobs {
            assert!(
                ticks.insert(due.clone()),
                "tick {due:?} queued twice ({id})"
            );
        }
        let taken = rows(
            &url,
            "SELECT key, due, taken_by FROM schedule_ticks WHERE key LIKE 'scan %'",
        );
        assert!(
            jobs.len() <= taken.len(),
            "{} jobs, {} ticks",
            jobs.len(),
            taken.len()
        );
        let runs = rows(
            &url,
            "SELECT j.id, j.scan_id, r.id FROM scan_jobs j JOIN scan_runs r ON r.id = j.scan_id
             WHERE j.origin = 'schedule'",
        );
        let mut seen = std::collections::BTreeSet::new();
        for (job, run, _) in &runs {
            assert!(seen.insert(run.clone()), "run {run:?} of two jobs ({job})");
        }
        // No run is left `running`: the killed hub's, if it had one, was closed by the other.
        let running = rows(
            &url,
            "SELECT id, state, owner FROM scan_runs WHERE state = 'running'",
        );
        assert!(running.is_empty(), "runs left running: {running:?}");

        // One bulletin per period: a tick every second on two hubs built it once.
        let bulletin_ticks = rows(
            &url,
            "SELECT key, due, taken_by FROM schedule_ticks WHERE key = 'bulletin'",
        );
        assert_eq!(bulletin_ticks.len(), 1, "{bulletin_ticks:?}");
        assert!(
            bulletins(&lead) + bulletins(&other) > 0,
            "a bulletin was written"
        );
        assert!(
            bulletins(&lead) == 0 || bulletins(&other) == 0,
            "both hubs wrote the bulletin: {} and {} files",
            bulletins(&lead),
            bulletins(&other)
        );
        drop(listener);
    });
}
