#!/usr/bin/env bash
# TLS at scale: one scan of 100 TLS 1.2 + 1.3 endpoints at once (formerly a timing test of the
# suite, which held no timing asserts; speed belongs here). Starts 100 TLS listeners (Python's
# ssl module, one process) on 127.110.60.1-100:8443 with a fresh self-signed certificate, then
# runs `netpatrol scan --probes tcp,tls` over them RUNS times (default 5) and prints the median
# wall time, the peak RSS and how many endpoints reported TLSv1.2 and TLSv1.3.
# Needs python3, openssl, GNU time. Traffic goes to 127.0.0.0/8 only.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${RUNS:-5}
bin=${NETPATROL_BIN:-$root/target/release/netpatrol}
[ -x "$bin" ] || (cd "$root" && cargo build --release --quiet)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=many.lab.test" \
  -addext "subjectAltName=DNS:many.lab.test" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

python3 - "$work" <<'PY' &
import asyncio, ssl, sys, os
work = sys.argv[1]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.load_cert_chain(os.path.join(work, "cert.pem"), os.path.join(work, "key.pem"))
async def serve(r, w):
    try:
        await asyncio.wait_for(r.read(1), 2)
    except Exception:
        pass
    w.close()
async def main():
    servers = [await asyncio.start_server(serve, "127.110.60.%d" % i, 8443, ssl=ctx) for i in range(1, 101)]
    open(os.path.join(work, "ready"), "w").close()
    await asyncio.Event().wait()
asyncio.run(main())
PY
while [ ! -e "$work/ready" ]; do sleep 0.1; done

cat > "$work/np.yaml" <<YAML
store: {path: $work/np.db}
scan: {icmp: false, ports: [8443], rate: 0, timeout_ms: 1500, dns: {enabled: false}}
segments: [{name: lo, network: other, cidrs: [127.110.60.0/25]}]
YAML
: > "$work/times"
for _ in $(seq "$runs"); do
  /usr/bin/time -f "%e %M" -o "$work/t" "$bin" scan -c "$work/np.yaml" --probes tcp,tls --format json > "$work/out.json" 2>/dev/null || true
  cat "$work/t" >> "$work/times"
done
ok=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(1 for h in r["hosts"] for s in h["services"] if s.get("tls") and {"TLSv1.2","TLSv1.3"} <= set(s["tls"]["versions"])))' "$work/out.json")
sort -n "$work/times" | awk -v ok="$ok" '{w[NR]=$1; if ($2>m) m=$2} END {printf "100 TLS endpoints: median %.2f s, peak %.1f MiB, %d endpoints with TLSv1.2 and TLSv1.3\n", w[int((NR+1)/2)], m/1024, ok}'
