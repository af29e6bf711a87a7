#!/usr/bin/env python3
"""Simulated sensors for the city benchmark (benches/city.sh).

    sensors.py config DIR --sensors 50 --port PORT --store URL   # writes DIR/hub.yaml
    sensors.py post --hub http://127.0.0.1:PORT --sensors 50 [--prefix 16] [--live 0.05]
                    [--services 10] [--batch 256]

`config` writes the hub's config: one segment per sensor (a /16 of 127.128.0.0/9 each: data
only, the hub never scans a segment a sensor owns), ten departments, one sensor each with its
token in NETPATROL_CITY_TOKEN_NN (the tokens are `city-token-NN`).

`post` builds every sensor's scan first (one /PREFIX each, LIVE of its addresses alive, about
SERVICES open ports on each live host), then posts them all at once, every sensor on a thread
of its own, in the wire format a real `netpatrol sensor` sends: batch 0 (the run begins), one
batch per BATCH live hosts, the final batch (state complete, coverage, probe errors). It prints
one JSON line of figures: hosts, services, batches, bytes, the seconds from the first post to the
last final batch answered, and the rates. Traffic: HTTP to the hub on 127.0.0.1 only.
"""
import argparse, http.client, json, os, sys, threading, time, uuid
from datetime import datetime, timedelta, timezone

# Ten open ports per live host, as a city's servers show them (some trip exposure rules).
PORTS = [
    (22, "ssh", "OpenSSH", "8.9p1", "SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.10"),
    (80, "http", "nginx", "1.24.0", None),
    (443, "https", "nginx", "1.24.0", None),
    (8080, "http", "Apache Tomcat", "9.0.85", None),
    (3306, "mysql", "MySQL", "8.0.36", "J\\x00\\x00\\x00\\n8.0.36"),
    (6379, "redis", None, None, None),
    (9100, "jetdirect", None, None, None),
    (5432, "postgresql", None, None, None),
    (8443, "https-alt", None, None, None),
    (21, "ftp", "vsftpd", "3.0.5", "220 (vsFTPd 3.0.5)"),
]


def cidr(i, prefix):
    # /16s: 127.128.0.0/16, 127.129.0.0/16, ...
    assert prefix == 16, "segments are /16s of 127.128.0.0/9"
    return "127.%d.0.0/16" % (128 + i)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def config(a):
    os.makedirs(a.dir, exist_ok=True)
    lines = [
        "organisation: {name: 测试市大数据管理局, timezone: Asia/Shanghai}",
        "store: {url: \"%s\"}" % a.store,
        "departments:",
    ]
    for d in range(10):
        lines.append("  - {id: d%02d, name: 部门%02d, emails: [it@d%02d.example.gov.cn]}" % (d, d, d))
    lines.append("segments:")
    for i in range(a.sensors):
        lines.append(
            "  - {name: s%02d, network: departmental, department: d%02d, cidrs: [%s]}"
            % (i, i % 10, cidr(i, 16))
        )
    lines.append("sensors:")
    for i in range(a.sensors):
        lines.append(
            "  - {id: city-%02d, segments: [s%02d], token_env: NETPATROL_CITY_TOKEN_%02d}" % (i, i, i)
        )
    lines += [
        "daemon:",
        "  listen: 127.0.0.1:%d" % a.port,
        "  api_token_env: NETPATROL_CITY_API_TOKEN",
        "  max_queued_scans: 64",
        "bulletin: {out_dir: \"%s\"}" % os.path.join(a.dir, "bulletins"),
    ]
    with open(os.path.join(a.dir, "hub.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def service(port, name, product, version, banner):
    return {
        "port": port, "protocol": "tcp", "service": name, "product": product,
        "version": version, "banner": banner, "connect_time": {"secs": 0, "nanos": 310000},
        "tls": None, "http": None, "unauthenticated": None, "exposure_evidence": None,
        "failures": [],
    }


def scan_of(i, a, started):
    """Every batch body of sensor i's one scan, in order."""
    sensor, segment = "city-%02d" % i, "s%02d" % i
    addresses = 1 << (32 - a.prefix)
    step = max(1, round(1 / a.live))
    hosts = []
    for n in range(0, addresses, step):
        ip = "127.%d.%d.%d" % (128 + i, n >> 8, n & 255)
        services = [service(*p) for p in PORTS[: a.services]]
        hosts.append({
            "ip": ip, "segment": segment, "network": "departmental",
            "icmp_rtt": {"secs": 0, "nanos": 200000}, "alive_by": ["icmp", "open_port"],
            "ptr": None, "services": services,
        })
    run = {
        "id": "%s-%s" % (sensor, uuid.uuid4()), "started_at": iso(started), "finished_at": None,
        "segments": [segment], "addresses": addresses, "probes": 0,
        "probe_kinds": ["icmp", "tcp", "banner"], "state": "running",
        "coverage": {"planned": 0, "answered": 0, "failed_remote": 0, "failed_local": 0},
    }
    bodies = []

    def batch(seq, final, hs, run):
        return json.dumps({
            "batch": str(uuid.uuid4()), "sensor": sensor, "scan": run, "seq": seq,
            "final": final, "hosts": hs, "probe_errors": [], "backlog": 1,
        }, ensure_ascii=False).encode()

    bodies.append(batch(0, False, [], run))
    for k in range(0, len(hosts), a.batch):
        bodies.append(batch(len(bodies), False, hosts[k : k + a.batch], run))
    planned = addresses * (1 + a.services)
    done = dict(run, state="complete", finished_at=iso(started + timedelta(minutes=30)),
                probes=planned,
                coverage={"planned": planned, "answered": planned, "failed_remote": 0,
                          "failed_local": 0})
    bodies.append(batch(len(bodies), True, [], done))
    return sensor, len(hosts), len(hosts) * a.services, bodies


def post(a):
    host, port = a.hub.split("//")[1].split(":")
    assert host.startswith("127."), "the hub must be on loopback"
    started = datetime.now(timezone.utc) - timedelta(minutes=31)
    t = time.monotonic()
    scans = [scan_of(i, a, started) for i in range(a.sensors)]
    built = time.monotonic() - t
    errors = []
    latencies = []

    def send(i, sensor, bodies):
        token = "city-token-%02d" % i
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        for body in bodies:
            for attempt in range(20):
                try:
                    t0 = time.monotonic()
                    conn.request("POST", "/api/v1/sensors/%s/batches" % sensor, body,
                                 {"Authorization": "Bearer " + token,
                                  "Content-Type": "application/json"})
                    r = conn.getresponse()
                    text = r.read()
                    latencies.append(time.monotonic() - t0)
                    if r.status == 200:
                        break
                    errors.append("%s: %d %s" % (sensor, r.status, text[:200]))
                    return
                except (ConnectionError, http.client.HTTPException, OSError) as e:
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=600)
                    time.sleep(0.5)
            else:
                errors.append("%s: gave up" % sensor)
                return

    threads = [threading.Thread(target=send, args=(i, s[0], s[3])) for i, s in enumerate(scans)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t0
    hosts = sum(s[1] for s in scans)
    services = sum(s[2] for s in scans)
    latencies.sort()
    print(json.dumps({
        "sensors": a.sensors, "hosts": hosts, "services": services,
        "batches": sum(len(s[3]) for s in scans),
        "bytes": sum(len(b) for s in scans for b in s[3]),
        "build_seconds": round(built, 1), "ingest_seconds": round(elapsed, 1),
        "hosts_per_second": round(hosts / elapsed), "services_per_second": round(services / elapsed),
        "batch_latency_median_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "batch_latency_max_s": round(latencies[-1], 3) if latencies else None,
        "errors": errors[:5],
    }))
    return 1 if errors else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    c.add_argument("dir")
    c.add_argument("--sensors", type=int, default=50)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--store", required=True)
    q = sub.add_parser("post")
    q.add_argument("--hub", required=True)
    q.add_argument("--sensors", type=int, default=50)
    q.add_argument("--prefix", type=int, default=16)
    q.add_argument("--live", type=float, default=0.05)
    q.add_argument("--services", type=int, default=10)
    q.add_argument("--batch", type=int, default=256)
    a = p.parse_args()
    sys.exit(config(a) or 0 if a.cmd == "config" else post(a))


if __name__ == "__main__":
    main()
