#!/usr/bin/env bash
# /metrics benchmark: a store with 10,000 hosts, 50,000 services and 100,000 findings behind an
# idle daemon; times GET /metrics (median of 20) and reads the daemon's resident memory.
# Goal: median < 200 ms, RSS < 100 MiB.
#
#   benches/metrics/run.sh                # release build
#   RUNS=50 HOSTS=10000 benches/metrics/run.sh
#
# Needs python3 and curl. Traffic stays on 127.0.0.1 (the daemon has no scheduled scan).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${RUNS:-20}
bin=${NETPATROL_BIN:-$root/target/release/netpatrol}
[ -x "$bin" ] || (cd "$root" && cargo build --release --quiet)
for tool in python3 curl; do command -v $tool >/dev/null || { echo "missing $tool"; exit 2; }; done
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
python3 "$root/benches/metrics/fill_store.py" "$work" --port "$port" \
  --hosts "${HOSTS:-10000}" --services "${SERVICES:-50000}" --findings "${FINDINGS:-100000}"
"$bin" daemon -c "$work/netpatrol.yaml" 2>"$work/daemon.log" &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
# The first scrape reads every run's observations; later ones reuse them until a scan is recorded.
cold=$(curl -sf -o "$work/metrics.txt" -w '%{time_total}' "http://127.0.0.1:$port/metrics")
echo "first (cold) GET /metrics: $(python3 -c "print('%.1f ms' % ($cold * 1000))")"
echo "series: $(grep -vc '^#' "$work/metrics.txt"), bytes: $(wc -c <"$work/metrics.txt")"
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }  # user + system, clock ticks (1/100 s)
cpu0=$(cpu)
times=()
for _ in $(seq "$runs"); do
  times+=("$(curl -sf -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/metrics")")
done
printf '%s\n' "${times[@]}" | sort -n | python3 -c '
import sys; t = [float(x) * 1000 for x in sys.stdin.read().split()]
print("GET /metrics over %d runs: median %.1f ms, min %.1f ms, max %.1f ms" % (len(t), t[len(t) // 2], t[0], t[-1]))'
echo "daemon CPU per scrape: $(( ($(cpu) - cpu0) * 10 / runs )) ms (machine load: $(cut -d' ' -f1 /proc/loadavg))"
sleep 1
echo "idle daemon after the scrapes: $(grep VmRSS /proc/$pid/status), $(grep VmHWM /proc/$pid/status)"
kill -TERM $pid; wait $pid && echo "daemon exited 0 on SIGTERM"
