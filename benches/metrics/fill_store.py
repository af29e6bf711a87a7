#!/usr/bin/env python3
"""Fill a netpatrol store for the /metrics benchmark.

    fill_store.py DIR [--hosts 10000] [--services 50000] [--findings 100000]

Writes DIR/netpatrol.yaml (40 segments of 250 hosts on 127.40.0.0/16, ten departments, the
daemon on 127.0.0.1:$PORT, no scheduled scan) and DIR/netpatrol.db: the schema from
src/store/migrations, one complete scan run over every segment with its hosts, services (one in
ten a TLS endpoint with a certificate) and observations, probe errors, and findings (nine in
ten open). Only loopback addresses: the daemon never scans them (no schedule), and if it did it
would stay on loopback.
"""
import argparse, json, os, random, sqlite3, sys
from datetime import datetime, timedelta, timezone

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--hosts", type=int, default=10000)
p.add_argument("--services", type=int, default=50000)
p.add_argument("--findings", type=int, default=100000)
p.add_argument("--port", type=int, default=9750)
a = p.parse_args()
os.makedirs(a.dir, exist_ok=True)
rnd = random.Random(42)

SEGMENTS = 40
per_segment = (a.hosts + SEGMENTS - 1) // SEGMENTS
assert per_segment <= 254, "at most 254 hosts per /24 segment"
departments = ["d%02d" % i for i in range(10)]
networks = ["extranet", "metro", "other"]
with open(os.path.join(a.dir, "netpatrol.yaml"), "w") as f:
    f.write("organisation: {name: bench, timezone: Asia/Shanghai}\n")
    f.write("scan: {icmp: false, ports: [22, 80, 443, 3306, 8080], rate: 0, dns: {enabled: false}}\n")
    f.write("departments:\n")
    for d in departments:
        f.write("  - {id: %s, name: 部门%s, emails: [it@%s.example.gov.cn]}\n" % (d, d, d))
    f.write("segments:\n")
    for s in range(SEGMENTS):
        f.write("  - {name: seg%02d, network: %s, cidrs: [127.40.%d.0/24]}\n" % (s, networks[s % 3], s))
    f.write("projects:\n")
    for i in range(50):
        f.write("  - {id: XM-%03d, name: 项目%d, department: %s, stage: in_use, accepted_on: 2024-01-01,\n"
                "     assets: [127.40.%d.1], mlps: {level: 3, assessed_on: 2025-0%d-01}, crypto: {assessed_on: 2025-0%d-15}}\n"
                % (i, i, departments[i % 10], i % SEGMENTS, 1 + i % 9, 1 + i % 9))
    f.write("daemon: {listen: '127.0.0.1:%d'}\n" % a.port)

db = os.path.join(a.dir, "netpatrol.db")
if os.path.exists(db):
    os.remove(db)
c = sqlite3.connect(db)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)")
mig = os.path.join(root, "src", "store", "migrations")
now = datetime.now(timezone.utc)
ts = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)
for name in sorted(os.listdir(mig)):
    if name.endswith(".sql"):
        c.executescript(open(os.path.join(mig, name), encoding="utf-8").read())
        c.execute("INSERT INTO schema_migrations VALUES (?, ?)", (int(name.split("_")[0]), ts(now)))

run = "20260101T000000.000Z-bench"
segs = ["seg%02d" % s for s in range(SEGMENTS)]
c.execute("INSERT INTO scan_runs (id, started_at, finished_at, state, segments, probe_kinds, addresses, probes, report)"
          " VALUES (?, ?, ?, 'complete', ?, 'tcp,banner,tls', ?, ?, '{}')",
          (run, ts(now - timedelta(minutes=30)), ts(now - timedelta(minutes=5)), json.dumps(segs), a.hosts, a.hosts * 5))
hosts = []
for i in range(a.hosts):
    s = i // per_segment
    ip = "127.40.%d.%d" % (s, 1 + i % per_segment)
    dept = departments[rnd.randrange(10)] if rnd.random() < 0.9 else None
    hosts.append((ip, segs[s], networks[s % 3], dept))
c.executemany("INSERT INTO hosts (ip, segment, network, department, ptr, first_seen, last_seen, last_scan)"
              " VALUES (?, ?, ?, ?, NULL, ?, ?, ?)", [(h[0], h[1], h[2], h[3], ts(now), ts(now), run) for h in hosts])
c.executemany("INSERT INTO observations (scan_id, ip, port, kind, data) VALUES (?, ?, NULL, 'host', ?)",
              [(run, h[0], '{"alive_by":["open_port"],"icmp_rtt_ms":null,"ptr":null}') for h in hosts])
ports = [22, 80, 443, 3306, 8080, 8443, 5432, 6379, 9200, 21]
services, obs = [], []
for j in range(a.services):
    ip = hosts[j % a.hosts][0]
    port = ports[j // a.hosts % len(ports)]
    tls = None
    if j % 10 == 0:
        days = rnd.randrange(-30, 700)
        tls = {"versions": rnd.choice([["TLSv1.2", "TLSv1.3"], ["TLSv1.0", "TLSv1.1", "TLSv1.2"], ["TLSv1.3"]]),
               "tlcp": rnd.random() < 0.1, "sm_suites": [], "weak_ciphers": [], "cipher_classes": {},
               "preferred_suites": {}, "tlcp_certs": [], "incomplete": [], "handshakes": 6, "elapsed_ms": 40,
               "cert": {"subject": "CN=x", "issuer": "CN=ca", "sans": [], "not_before": "2025-01-01T00:00:00Z",
                        "not_after": (now + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "days_left": days, "self_signed": False, "trusted": True, "hostname_match": True,
                        "key": "RSA-2048", "key_bits": 2048, "signature": "sha256WithRSAEncryption",
                        "serial": "01", "sha256": "00", "chain_len": 2}}
    data = {"port": port, "protocol": "tcp", "service": "https" if tls else "unknown", "product": None,
            "version": None, "banner": None, "connect_time": {"secs": 0, "nanos": 120000}, "tls": tls}
    services.append((ip, port, "tcp", data["service"], ts(now), ts(now), run))
    obs.append((run, ip, port, json.dumps(data, separators=(",", ":"))))
c.executemany("INSERT INTO services (ip, port, protocol, service, product, version, banner, first_seen, last_seen, last_scan)"
              " VALUES (?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?)", services)
c.executemany("INSERT INTO observations (scan_id, ip, port, kind, data) VALUES (?, ?, ?, 'service', ?)", obs)
c.executemany("INSERT INTO probe_errors (scan_id, probe, reason, count) VALUES (?, ?, ?, ?)",
              [(run, "tcp", "timeout", 1234), (run, "tls", "reset", 12), (run, "banner", "timeout", 77)])
rules = [("access.unapproved_host", "high"), ("access.unapproved_service", "medium"), ("tls.cert_expiring", "medium"),
         ("tls.cert_expired", "high"), ("tls.protocol_legacy", "high"), ("exposure.telnet", "high"),
         ("exposure.database", "high"), ("exposure.redis_unauthenticated", "critical"), ("http.missing_hsts", "low"),
         ("http.no_https_redirect", "low"), ("tls.cert_self_signed", "medium"), ("access.approval_unused", "info")]
findings = []
for k in range(a.findings):
    rule, sev = rules[k % len(rules)]
    ip, seg, _, dept = hosts[k % a.hosts]
    port = ports[(k // a.hosts) % len(ports)]
    first = now - timedelta(days=rnd.randrange(0, 400))
    due = (first + timedelta(days=30)).date().isoformat()
    state = "open" if k % 10 else "resolved"
    findings.append(("fp%06d" % k, rule, sev, "service", ip, port, seg, dept, None, None,
                     json.dumps({"zh": "问题", "en": "finding"}), json.dumps({"zh": "证据", "en": "evidence"}),
                     json.dumps(["办法第二十一条"]), ts(first), ts(now), due, state, 0))
c.executemany("INSERT INTO findings (fingerprint, rule, severity, subject, ip, port, segment, department, project, approval,"
              " title, evidence, basis, first_seen, last_seen, due, state, absent_scans)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", findings)
c.commit()
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
c.close()
print("%s: %d hosts, %d services, %d findings" % (db, a.hosts, a.services, a.findings))
