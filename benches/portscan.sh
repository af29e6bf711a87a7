#!/usr/bin/env bash
# Port-scan benchmark: netpatrol `scan --probes tcp` against nmap -sS and -sT (and RustScan when
# it is on the PATH), side by side on loopback, in one run so machine drift cancels out.
# netpatrol runs at `rate: 0` (as fast as it goes) and at the default rate (2,000 attempts per
# second, run once: it takes rate-bound time by design, about 33 s for 65,535 ports).
# As root netpatrol and nmap -sS send raw SYNs; otherwise netpatrol connect-scans and nmap -sS
# is skipped. As root, with a C compiler, a minimal raw SYN sender and receiver (the kernel's
# SYN->RST path with next to nothing else) gives the floor of the 256 x 1024 job.
#
#   benches/portscan.sh            # 5 runs each, median wall time and peak RSS
#   RUNS=3 benches/portscan.sh
#   DEFAULT_RATE_MANY=1 benches/portscan.sh   # also 256 x 1024 at the default rate (~131 s)
#
# Jobs (BENCHMARKS.md): 1 host x all 65,535 ports; 256 hosts x ports 1-1024. Listeners are
# started on 127.0.0.1 and 127.0.1.0/24 so there is something to find; the open ports each tool
# finds are compared. Needs: nmap, python3, GNU time (apt-get install -y nmap time).
# Traffic goes to 127.0.0.0/8 only.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-5}
bin=${NETPATROL_BIN:-$root/target/release/netpatrol}
[ -x "$bin" ] || (cd "$root" && cargo build --release --quiet)
for tool in nmap python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nmap time python3)"; exit 2; }
done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

# Listeners: a few on 127.0.0.1 (some in the ephemeral range, where self-connects happen) and
# one or two on a handful of 127.0.1.x hosts.
python3 - "$work/ready" <<'PY' &
import socket, sys, select
addrs = [("127.0.0.1", p) for p in (7, 1022, 8081, 33000, 45000, 60999)]
addrs += [("127.0.1.%d" % h, p) for h, p in ((1, 22), (1, 80), (17, 443), (99, 1000), (200, 1024), (254, 8))]
socks = []
for a in addrs:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(a); s.listen(4096); s.setblocking(False); socks.append(s)
open(sys.argv[1], "w").close()
while True:
    for s in select.select(socks, [], [])[0]:
        try:
            c, _ = s.accept(); c.close()
        except OSError:
            pass
PY
while [ ! -e "$work/ready" ]; do sleep 0.1; done

cat > "$work/one.yaml" <<YAML
store: {path: $work/one.db}
scan: {icmp: false, ports: all, rate: 0, concurrency: 512, timeout_ms: 250, retries: 0, dns: {enabled: false}}
segments: [{name: lo, network: other, cidrs: [127.0.0.1/32]}]
YAML
cat > "$work/one-default.yaml" <<YAML
store: {path: $work/one-default.db}
scan: {icmp: false, ports: all, concurrency: 512, timeout_ms: 250, retries: 0, dns: {enabled: false}}
segments: [{name: lo, network: other, cidrs: [127.0.0.1/32]}]
YAML
cat > "$work/many-default.yaml" <<YAML
store: {path: $work/many-default.db}
scan: {icmp: false, ports: ["1-1024"], concurrency: 512, timeout_ms: 250, retries: 0, dns: {enabled: false}}
segments: [{name: lo, network: other, cidrs: [127.0.1.0/24]}]
YAML
cat > "$work/many.yaml" <<YAML
store: {path: $work/many.db}
scan: {icmp: false, ports: ["1-1024"], rate: 0, concurrency: 512, timeout_ms: 250, retries: 0, dns: {enabled: false}}
segments: [{name: lo, network: other, cidrs: [127.0.1.0/24]}]
YAML

# measure NAME CMD...: runs CMD $runs times; prints the median wall time and the peak RSS.
measure() {
  local name=$1; shift
  : > "$work/times"
  for _ in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -o "$work/t" "$@" > "$work/$name.out" 2>/dev/null
    cat "$work/t" >> "$work/times"
  done
  sort -n "$work/times" | awk -v n="$name" '{w[NR]=$1; if ($2>m) m=$2} END {printf "%-34s median %6.2f s   peak %6.1f MiB\n", n, w[int((NR+1)/2)], m/1024}'
}

# open ports as "ip:port" lines
nmap_open() { awk '/Ports:/ {ip=$2; n=split($0, a, /Ports: /); split(a[2], p, /, /); for (i in p) if (p[i] ~ /\/open\//) {split(p[i], q, "/"); print ip ":" q[1]}}' "$1" | sort; }
np_open() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); [print(h["ip"] + ":" + str(s["port"])) for h in r["hosts"] for s in h["services"]]' "$1" | sort; }

root_user=false; [ "$(id -u)" = 0 ] && root_user=true

echo "== 1 host, all 65,535 ports"
measure nmap-sT-one nmap -sT -n -Pn -p- -oG - 127.0.0.1
if $root_user; then measure nmap-sS-one nmap -sS -n -Pn -p- -oG - 127.0.0.1; fi
nmap_open "$work/nmap-sT-one.out" > "$work/nmap-one.open"
measure netpatrol-one "$bin" scan -c "$work/one.yaml" --probes tcp --format json
np_open "$work/netpatrol-one.out" > "$work/np-one.open"
runs_saved=$runs; runs=1
measure netpatrol-one-default-rate "$bin" scan -c "$work/one-default.yaml" --probes tcp --format json
runs=$runs_saved
if command -v rustscan >/dev/null; then measure rustscan-one rustscan -a 127.0.0.1 -r 1-65535 -b 4500 -g; fi

echo "== 256 hosts x ports 1-1024"
measure nmap-sT-many nmap -sT -n -p 1-1024 -oG - 127.0.1.0/24
if $root_user; then measure nmap-sS-many nmap -sS -n -p 1-1024 -oG - 127.0.1.0/24; fi
nmap_open "$work/nmap-sT-many.out" > "$work/nmap-many.open"
measure netpatrol-many "$bin" scan -c "$work/many.yaml" --probes tcp --format json
np_open "$work/netpatrol-many.out" > "$work/np-many.open"
if [ -n "${DEFAULT_RATE_MANY:-}" ]; then
  runs_saved=$runs; runs=1
  measure netpatrol-many-default-rate "$bin" scan -c "$work/many-default.yaml" --probes tcp --format json
  runs=$runs_saved
fi

if $root_user && command -v cc >/dev/null; then
  # The floor: a minimal C raw SYN sender and receiver (benches/floor/synfloor.c) over the
  # same job shape on an address block where nothing listens.
  cc -O2 -pthread -o "$work/synfloor" "$root/benches/floor/synfloor.c"
  measure synfloor-many "$work/synfloor" 127.110.102 1024
fi

echo "== agreement on open ports"
for job in one many; do
  if diff -q "$work/nmap-$job.open" "$work/np-$job.open" >/dev/null; then
    echo "$job: identical ($(wc -l < "$work/np-$job.open") open ports)"
  else
    echo "$job: DIFFERENT"; diff "$work/nmap-$job.open" "$work/np-$job.open" || true
  fi
done
