#!/usr/bin/env bash
# Rate benchmark: the configured scan.rate against the rate achieved on the wire, for netpatrol
# (raw SYN scan, as root) and for nmap -sS --max-rate, on the same loopback targets in one run.
#
#   sudo benches/rate.sh                 # rates 100, 2000, 20000, 100000
#   RATES="2000 20000" sudo benches/rate.sh
#
# Targets: 127.110.100.0/24 (254 addresses; nothing listens there, so every SYN gets a RST) and
# as many ports as make each run last about three seconds at its rate. A sniffer (a raw socket
# of this script's own) timestamps every SYN to the /24 and prints the SYNs seen, the span from
# the first to the last, the achieved rate (SYNs / span) and the busiest one-second window,
# which must stay within the rate + 10%. Needs root, python3, nmap (apt-get install -y nmap).
# Traffic goes to 127.0.0.0/8 only.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${NETPATROL_BIN:-$root/target/release/netpatrol}
rates=${RATES:-100 2000 20000 100000}
[ "$(id -u)" = 0 ] || { echo "run as root (raw sockets for the SYN scan and the sniffer)"; exit 2; }
[ -x "$bin" ] || (cd "$root" && cargo build --release --quiet)
for tool in nmap python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nmap python3)"; exit 2; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Room for bursts in the sniffer's receive buffer.
sysctl -qw net.core.rmem_max=67108864 || true

cat > "$work/sniff.py" <<'PY'
import socket, sys, time, signal
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
s.settimeout(0.2)
stop = False
def end(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, end)
open(sys.argv[1], "w").close()
at = []
while not stop:
    try:
        p = s.recv(128)
    except socket.timeout:
        continue
    except InterruptedError:
        continue
    ihl = (p[0] & 15) * 4
    if len(p) >= ihl + 14 and p[16] == 127 and p[17] == 110 and p[18] == 100 and p[ihl + 13] & 0x12 == 0x02:
        at.append(time.monotonic())
n = len(at)
span = at[-1] - at[0] if n > 1 else 0.0
best, j = 0, 0
for i in range(n):
    while j < n and at[j] < at[i] + 1.0:
        j += 1
    best = max(best, j - i)
print(f"{n} {span:.3f} {(n / span) if span else 0:.0f} {best}")
PY

# wire NAME RATE CMD...: runs CMD under the sniffer; prints one row.
wire() {
  local name=$1 rate=$2; shift 2
  rm -f "$work/ready"
  python3 "$work/sniff.py" "$work/ready" > "$work/sniff.out" &
  local sniffer=$!
  while [ ! -e "$work/ready" ]; do sleep 0.05; done
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > /dev/null 2>&1
  t1=$(date +%s.%N)
  sleep 0.3
  kill -TERM "$sniffer"; wait "$sniffer" || true
  read -r syns span achieved busiest < "$work/sniff.out"
  awk -v n="$name" -v r="$rate" -v s="$syns" -v sp="$span" -v a="$achieved" -v b="$busiest" -v w="$(echo "$t1 - $t0" | bc)" \
    'BEGIN {printf "%-10s rate %6d  SYNs %7d  span %6.2f s  achieved %7d/s (%5.1f%%)  busiest 1 s %7d (%5.1f%%)  wall %5.2f s\n", n, r, s, sp, a, 100*a/r, b, 100*b/r, w}'
}

echo "== configured vs achieved rate (SYN scan of 127.110.100.0/24, closed ports)"
for rate in $rates; do
  ports=$(( (rate * 3 + 253) / 254 ))
  [ "$ports" -ge 1 ] || ports=1
  cat > "$work/rate.yaml" <<YAML
store: {path: $work/rate-$rate.db}
scan: {icmp: false, ports: ["1-$ports"], rate: $rate, concurrency: 512, timeout_ms: 250, retries: 0, dns: {enabled: false}}
segments: [{name: lo, network: other, cidrs: [127.110.100.0/24]}]
YAML
  wire netpatrol "$rate" "$bin" scan -c "$work/rate.yaml" --probes tcp --format json
  wire nmap "$rate" nmap -sS -n -Pn --max-retries 0 -p "1-$ports" --max-rate "$rate" 127.110.100.0/24
done
