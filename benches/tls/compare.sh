#!/usr/bin/env bash
# TLS posture benchmark: netpatrol's TLS probe against testssl.sh --fast, side by side on
# loopback, on three openssl s_server configurations:
#
#   legacy   TLS 1.0-1.2, NULL and anonymous suites, RSA-1024 / SHA-1 self-signed certificate
#   modern   TLS 1.2 + 1.3, default suites, RSA-2048 / SHA-256 certificate from a test CA
#   expired  TLS 1.2 + 1.3, self-signed certificate that expired in 2021
#
# Prints, per server, the verdicts of both tools on versions, weak suites and certificate
# problems (agree / DIFFER), and the wall time of each tool. The CA of `modern` is handed to
# netpatrol as a ca_file; testssl.sh gets it with --add-ca.
#
# Expected difference: testssl.sh --fast does not report the legacy server's NULL and
# anonymous suites (it skips them in fast mode); netpatrol does.
# Measured (2 vCPU, loaded by a parallel build, debug build of the example): netpatrol
# 0.07-0.11 s wall per endpoint (process start and system roots included; the probe itself
# 26-79 ms, 11-48 handshakes), testssl.sh --fast 266-275 s per endpoint, three in parallel.
#
#   benches/tls/compare.sh                  # testssl.sh and netpatrol
#   SKIP_TESTSSL=1 benches/tls/compare.sh   # netpatrol only (testssl.sh --fast takes ~1 min
#                                           # per server)
#
# Needs: openssl, python3, testssl.sh (apt-get install -y openssl testssl.sh). Traffic goes to
# 127.0.30.0/24 only.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
profile=${PROFILE:-release}
for tool in openssl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y $tool)"; exit 2; }
done
testssl_bin=$(command -v testssl || command -v testssl.sh || true)
if [ -z "${SKIP_TESTSSL:-}" ] && [ -z "$testssl_bin" ]; then
  echo "missing testssl.sh (apt-get install -y testssl.sh), or set SKIP_TESTSSL=1"; exit 2
fi
flag=$([ "$profile" = release ] && echo --release || true)
(cd "$root" && cargo build $flag --quiet --example tls_posture)
posture="${CARGO_TARGET_DIR:-$root/target}/$profile/examples/tls_posture"

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"

# Certificates.
openssl req -x509 -newkey rsa:1024 -sha1 -nodes -days 365 -subj /CN=legacy.lab.test \
  -keyout legacy.key -out legacy.crt 2>/dev/null
openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 3650 -subj "/CN=Bench Root CA" \
  -addext basicConstraints=critical,CA:TRUE -keyout ca.key -out ca.crt 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -subj /CN=modern.lab.test -keyout modern.key \
  -out modern.csr 2>/dev/null
printf 'subjectAltName=DNS:modern.lab.test\n' > modern.ext
openssl x509 -req -in modern.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
  -sha256 -extfile modern.ext -out modern.crt 2>/dev/null
cat modern.crt ca.crt > modern-chain.crt
openssl req -new -newkey rsa:2048 -nodes -subj /CN=expired.lab.test -keyout expired.key \
  -out expired.csr 2>/dev/null
touch index.txt; echo 01 > serial
printf '[ca]\ndefault_ca = d\n[d]\ndatabase = %s/index.txt\nnew_certs_dir = %s\nserial = %s/serial\ndefault_md = sha256\npolicy = p\nemail_in_dn = no\n[p]\ncommonName = supplied\n' \
  "$work" "$work" "$work" > ca.cnf
openssl ca -batch -config ca.cnf -selfsign -keyfile expired.key -in expired.csr -out expired.crt \
  -startdate 20200101000000Z -enddate 20210101000000Z >/dev/null 2>&1

# s_server sends what it reads on stdin to its client: give it a FIFO nobody writes to, held
# open on fd 3 (not /dev/null, where it stops at end of file, nor /dev/zero, which it would
# stream to every client).
mkfifo stdin.fifo
exec 3<>stdin.fifo
start_server() { # name addr cert key args...
  local name=$1 addr=$2 cert=$3 key=$4; shift 4
  openssl s_server -quiet -naccept 100000000 -accept "$addr" -cert "$cert" -key "$key" "$@" \
    <&3 >/dev/null 2>"$name.log" &
  pids+=($!)
}
start_server legacy 127.0.30.1:4431 legacy.crt legacy.key -no_tls1_3 -cipher 'ALL:eNULL:@SECLEVEL=0'
start_server modern 127.0.30.2:4432 modern.crt modern.key -cert_chain ca.crt
start_server expired 127.0.30.3:4433 expired.crt expired.key
names=(legacy modern expired)
addrs=(127.0.30.1:4431 127.0.30.2:4432 127.0.30.3:4433)
snis=(legacy.lab.test modern.lab.test expired.lab.test)
for a in "${addrs[@]}"; do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null && break
    sleep 0.05
  done
done

# netpatrol: each endpoint alone (time of one full posture), then all three at once.
for i in 0 1 2; do
  s=$(date +%s.%N)
  "$posture" "${addrs[$i]}" --sni "${snis[$i]}" ca.crt > "np-${names[$i]}.json" 2>/dev/null
  e=$(date +%s.%N)
  python3 -c "print(f'{$e-$s:.3f}')" > "np-${names[$i]}.time"
done

# testssl.sh --fast, the three servers in parallel (each is a separate s_server).
if [ -z "${SKIP_TESTSSL:-}" ]; then
  ts_pids=()
  for i in 0 1 2; do
    (
      s=$(date +%s.%N)
      timeout 900 "$testssl_bin" --fast --quiet --warnings off --color 0 --add-ca "$work/ca.crt" \
        --jsonfile "ts-${names[$i]}.json" "${addrs[$i]}" </dev/null > "ts-${names[$i]}.out" 2>&1 || true
      e=$(date +%s.%N)
      python3 -c "print(f'{$e-$s:.3f}')" > "ts-${names[$i]}.time"
    ) &
    ts_pids+=($!)
  done
  wait "${ts_pids[@]}"
fi

python3 - "$work" <<'PY'
import json, os, sys
work = sys.argv[1]
names = ["legacy", "modern", "expired"]

def np_verdicts(name):
    line = open(os.path.join(work, f"np-{name}.json")).read().strip().splitlines()[0]
    tls = json.loads(line)["tls"] or {}
    cert = tls.get("cert") or {}
    classes = set(c for cs in tls.get("cipher_classes", {}).values() for c in cs)
    key = cert.get("key", "")
    bits = cert.get("key_bits", 0)
    return {
        "versions": " ".join(v.replace("TLSv", "TLS") for v in tls.get("versions", [])),
        "NULL": "null" in classes,
        "aNULL": "anon" in classes,
        "EXPORT": "export" in classes,
        "RC4": "rc4" in classes,
        "3DES": "3des" in classes,
        "expired": cert.get("days_left", 0) < 0,
        "self-signed": cert.get("self_signed"),
        "trusted": cert.get("trusted"),
        "weak key": (key.startswith("RSA") and bits < 2048),
        "weak signature": any(h in cert.get("signature", "") for h in ("sha1", "md5", "SHA1")),
    }

def ts_verdicts(name):
    path = os.path.join(work, f"ts-{name}.json")
    if not os.path.exists(path):
        return None
    try:
        items = json.load(open(path))
    except ValueError:
        return None
    f = {}
    for it in items:
        f.setdefault(it.get("id", ""), it.get("finding", ""))
    offered = lambda k: f.get(k, "").startswith("offered")
    vers = [n for k, n in (("SSLv3", "SSLv3"), ("TLS1", "TLS1.0"), ("TLS1_1", "TLS1.1"),
                           ("TLS1_2", "TLS1.2"), ("TLS1_3", "TLS1.3")) if offered(k)]
    chain = f.get("cert_chain_of_trust", "")
    return {
        "versions": " ".join(vers),
        "NULL": offered("cipherlist_NULL"),
        "aNULL": offered("cipherlist_aNULL"),
        "EXPORT": offered("cipherlist_EXPORT"),
        "RC4": offered("RC4") or "RC4" in f.get("cipherlist_LOW", "") ,
        "3DES": offered("cipherlist_3DES_IDEA"),
        "expired": "expired" in f.get("cert_expirationStatus", "").lower(),
        "self-signed": "self signed" in chain.lower() or "self-signed" in f.get("cert_caIssuers", "").lower(),
        "trusted": chain.startswith("passed"),
        "weak key": any(s in f.get("cert_keySize", "") for s in ("1024", " 512", " 768")),
        "weak signature": any(s in f.get("cert_signatureAlgorithm", "").upper() for s in ("SHA1", "MD5")),
    }

def t(prefix, name):
    p = os.path.join(work, f"{prefix}-{name}.time")
    return open(p).read().strip() + " s" if os.path.exists(p) else "-"

rows = []
for name in names:
    a, b = np_verdicts(name), ts_verdicts(name)
    for k in a:
        tv = "-" if b is None else b[k]
        verdict = "-" if b is None else ("agree" if a[k] == tv else "DIFFER")
        rows.append((name, k, str(a[k]), str(tv), verdict))
    rows.append((name, "wall time", t("np", name), t("ts", name), ""))
w = [max(len(r[i]) for r in rows + [("server", "aspect", "netpatrol", "testssl.sh", "")]) for i in range(5)]
fmt = "  ".join("{:<%d}" % x for x in w)
print(fmt.format("server", "aspect", "netpatrol", "testssl.sh", ""))
for r in rows:
    print(fmt.format(*r))
PY
