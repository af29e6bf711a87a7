#!/usr/bin/env bash
# City benchmark: SENSORS simulated sensors (default 50) each post one scan of a /16 (65,536
# addresses, 5% live, 10 services per live host: 164,000 hosts and 1.6 million services for
# 50) into one hub (`netpatrol daemon`, release build) on PostgreSQL. Measures the ingest
# (first post to every run recorded), GET /metrics (first and median of 5), the bulletin
# (`netpatrol bulletin` for today), the database size and the hub's peak memory.
# Goal: 50 districts' day ingested in under 10 minutes, /metrics under 1 s.
#
#   benches/city.sh                         # 50 sensors
#   SENSORS=5 benches/city.sh               # a quick look
#   BULLETIN=0 benches/city.sh              # without the bulletin (about a minute and 8 GiB for 50)
#   NETPATROL_BENCH_PG=postgres://postgres@127.0.0.1:5432/test benches/city.sh
#
# Needs python3, curl, psql and a PostgreSQL server (the development machines run one at
# 127.0.0.1:5432); a database np_city_bench is created and dropped. Traffic: HTTP to the hub
# on 127.0.0.1 only; the hub scans nothing (every segment belongs to a sensor).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
sensors=${SENSORS:-50}
admin=${NETPATROL_BENCH_PG:-postgres://postgres@127.0.0.1:5432/test}
db=np_city_bench
bin=${NETPATROL_BIN:-$root/target/release/netpatrol}
[ -x "$bin" ] || (cd "$root" && cargo build --release --quiet)
for tool in python3 curl psql; do command -v $tool >/dev/null || { echo "missing $tool"; exit 2; }; done
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
store="${admin%/*}/$db"
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
psql -q "$admin" -c "CREATE DATABASE $db" >/dev/null

python3 "$root/benches/city/sensors.py" config "$work" --sensors "$sensors" --port "$port" --store "$store"
for i in $(seq 0 $((sensors - 1))); do
  export "NETPATROL_CITY_TOKEN_$(printf %02d "$i")=city-token-$(printf %02d "$i")"
done
export NETPATROL_CITY_API_TOKEN=city-api-token
"$bin" check-config -c "$work/hub.yaml" >/dev/null
RUST_LOG=netpatrol=warn "$bin" daemon -c "$work/hub.yaml" 2>"$work/hub.log" &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

echo "== ingest: $sensors sensors, one /16 scan each"
t0=$(date +%s.%N)
python3 "$root/benches/city/sensors.py" post --hub "http://127.0.0.1:$port" --sensors "$sensors" | tee "$work/post.json"
# Every run recorded (the final batch may be assessed after it was answered).
until [ "$(psql -tAq "$store" -c "SELECT COUNT(*) FROM scan_runs WHERE state = 'complete'")" -ge "$sensors" ]; do
  kill -0 "$pid" || { cat "$work/hub.log"; exit 1; }
  sleep 1
done
t1=$(date +%s.%N)
build=$(python3 -c "import json; print(json.load(open('$work/post.json'))['build_seconds'])")
python3 - "$t0" "$t1" "$build" "$store" <<'PY'
import subprocess, sys
t0, t1, build, store = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
q = lambda sql: subprocess.check_output(["psql", "-tAq", store, "-c", sql], text=True).strip()
hosts, services = int(q("SELECT COUNT(*) FROM hosts")), int(q("SELECT COUNT(*) FROM services"))
findings = int(q("SELECT COUNT(*) FROM findings"))
secs = t1 - t0 - build
print("recorded: %d hosts, %d services, %d findings in %.1f s (posting included, payload building excluded): %.0f hosts/s, %.0f services/s"
      % (hosts, services, findings, secs, hosts / secs, services / secs))
PY
echo "hub peak memory: $(grep VmHWM /proc/$pid/status | awk '{printf "%.0f MiB", $2/1024}')"

echo "== GET /metrics"
auth="Authorization: Bearer $NETPATROL_CITY_API_TOKEN"
cold=$(curl -sf -H "$auth" -o "$work/metrics.txt" -w '%{time_total}' "http://127.0.0.1:$port/metrics")
echo "first: $(python3 -c "print('%.2f s' % $cold)"), $(grep -vc '^#' "$work/metrics.txt") series, $(wc -c <"$work/metrics.txt") bytes"
times=()
for _ in 1 2 3 4 5; do
  times+=("$(curl -sf -H "$auth" -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/metrics")")
done
printf '%s\n' "${times[@]}" | sort -n | python3 -c '
import sys; t = [float(x) for x in sys.stdin.read().split()]
print("median of %d: %.2f s (min %.2f, max %.2f)" % (len(t), t[len(t) // 2], t[0], t[-1]))'

if [ "${BULLETIN:-1}" != 0 ]; then
  echo "== bulletin (today, zh)"
  today=$(TZ=Asia/Shanghai date +%F)
  /usr/bin/time -f "%e s, peak %M KiB" "$bin" bulletin -c "$work/hub.yaml" --from "$today" --to "$today" \
    --out "$work/bulletins" 2>&1 >/dev/null | tail -1
  ls -la "$work/bulletins" | tail -n +4 | awk '{print "  " $5 " bytes  " $9}'
fi

echo "== database"
psql -tAq "$store" -c "SELECT 'size: ' || pg_size_pretty(pg_database_size('$db'))"
kill -TERM "$pid"; wait "$pid" && echo "hub exited 0 on SIGTERM"; pid=
