#!/usr/bin/env bash
# TLS posture benchmark: netpatrol's TLS probe (`netpatrol probe tls`) against sslyze (and
# testssl.sh --fast when installed), side by side on loopback endpoints:
#
#   legacy   openssl s_server: TLS 1.0-1.2, NULL and anonymous suites, RSA-1024 / SHA-1
#            self-signed certificate
#   modern   openssl s_server: TLS 1.2 + 1.3, default suites, RSA-2048 / SHA-256 certificate
#            from a test CA
#   expired  openssl s_server: TLS 1.2 + 1.3, self-signed certificate that expired in 2021
#   pref     openssl s_server: TLS 1.2 only, three suites in server preference
#   tongsuo  Tongsuo s_server -enable_ntls: TLCP with an SM2 pair from an SM2 root, and TLS 1.2
#            + 1.3 with an RSA certificate from the test CA (sslyze cannot speak TLCP, nor the
#            RFC 8998 SM suites of TLS 1.3: only netpatrol lists those)
#
# Prints, per endpoint, the accepted suites per version of netpatrol and sslyze (identical or
# DIFFER, each suite only one tool lists then tried alone with openssl s_client as referee),
# the certificate verdicts of each tool (trusted, self-signed,
# expired, host name), and the wall time of each tool per endpoint; then netpatrol's peak
# memory (/usr/bin/time -v, maximum resident set) and the speed-up. sslyze runs its cipher
# suite scans of every version (SSL 2.0 to TLS 1.3, its full suite list) and certinfo, with
# the test CA as --certinfo_ca_file; netpatrol gets the same CA (and the SM2 root) through
# trust.ca_files.
#
# Measured (2 vCPU shared with other builds, release build, sslyze 6.3.1): netpatrol 0.008-0.04 s
# wall per endpoint (process start, config and system roots included; 11-109 handshakes), 15.8 MiB
# peak at most; sslyze 0.48-1.21 s: 33-53x. Suites identical except where sslyze does not offer a suite
# (TLS_DH_anon_WITH_CAMELLIA_*_SHA256; the RFC 8998 TLS 1.3 SM suites), which s_client confirms.
#
#   benches/tls/compare.sh                  # netpatrol, sslyze (testssl.sh if installed)
#   SKIP_TESTSSL=1 benches/tls/compare.sh   # without testssl.sh (~1 min per endpoint)
#
# Needs: openssl, python3 with venv (apt-get install -y openssl python3-venv); sslyze is
# installed into $HOME/.cache/netpatrol/sslyze-venv on first use (pip install sslyze); the
# Tongsuo endpoint uses NETPATROL_TONGSUO or builds Tongsuo with .ci/tongsuo.sh. Traffic goes
# to 127.113.30.0/24 only.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
profile=${PROFILE:-release}
for tool in openssl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y $tool)"; exit 2; }
done
venv="$HOME/.cache/netpatrol/sslyze-venv"
if [ ! -x "$venv/bin/sslyze" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q sslyze
fi
sslyze="$venv/bin/sslyze"
testssl_bin=$(command -v testssl || command -v testssl.sh || true)
[ -n "${SKIP_TESTSSL:-}" ] && testssl_bin=
tongsuo=${NETPATROL_TONGSUO:-$(bash "$root/.ci/tongsuo.sh")}
flag=$([ "$profile" = release ] && echo --release || true)
(cd "$root" && cargo build $flag --quiet --bin netpatrol)
netpatrol="${CARGO_TARGET_DIR:-$root/target}/$profile/netpatrol"

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"

# Certificates.
openssl req -x509 -newkey rsa:1024 -sha1 -nodes -days 365 -subj /CN=legacy.lab.test \
  -keyout legacy.key -out legacy.crt 2>/dev/null
# The CA and leaves carry the extensions RFC 5280 requires (sslyze's verifier, from
# cryptography, refuses a CA without keyUsage).
openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 3650 -subj "/CN=Bench Root CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -addext subjectKeyIdentifier=hash -keyout ca.key -out ca.crt 2>/dev/null
for name in modern pref tongsuo; do
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$name.lab.test" -keyout "$name.key" \
    -out "$name.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s.lab.test\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n' \
    "$name" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
    -sha256 -extfile "$name.ext" -out "$name.crt" 2>/dev/null
done
openssl req -new -newkey rsa:2048 -nodes -subj /CN=expired.lab.test -keyout expired.key \
  -out expired.csr 2>/dev/null
touch index.txt; echo 01 > serial
printf '[ca]\ndefault_ca = d\n[d]\ndatabase = %s/index.txt\nnew_certs_dir = %s\nserial = %s/serial\ndefault_md = sha256\npolicy = p\nemail_in_dn = no\n[p]\ncommonName = supplied\n' \
  "$work" "$work" "$work" > ca.cnf
openssl ca -batch -config ca.cnf -selfsign -keyfile expired.key -in expired.csr -out expired.crt \
  -startdate 20200101000000Z -enddate 20210101000000Z >/dev/null 2>&1
# The SM2 root and the TLCP pair, made by Tongsuo.
printf '[req]\ndistinguished_name=dn\n[dn]\n[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n[sign]\nkeyUsage=critical,digitalSignature\nsubjectAltName=DNS:tongsuo.lab.test\n[enc]\nkeyUsage=critical,keyEncipherment,dataEncipherment\nsubjectAltName=DNS:tongsuo.lab.test\n' > sm.cnf
"$tongsuo" ecparam -genkey -name SM2 -noout -out sm-root.key
"$tongsuo" req -config sm.cnf -new -x509 -key sm-root.key -sm3 -days 3650 -subj "/CN=Bench SM2 Root" \
  -extensions ca -out sm-root.crt
for role in sign enc; do
  "$tongsuo" ecparam -genkey -name SM2 -noout -out "sm-$role.key"
  "$tongsuo" req -config sm.cnf -new -key "sm-$role.key" -sm3 -subj "/CN=tongsuo.lab.test $role" \
    -out "sm-$role.csr"
  "$tongsuo" x509 -req -in "sm-$role.csr" -CA sm-root.crt -CAkey sm-root.key -sm3 -days 365 \
    -extfile sm.cnf -extensions "$role" -set_serial "0x$RANDOM" -out "sm-$role.crt" 2>/dev/null
done

cat > bench.yaml <<EOF
segments:
  - {name: bench, network: other, cidrs: [127.113.30.0/24]}
trust: {ca_files: ["$work/ca.crt", "$work/sm-root.crt"]}
EOF

# s_server sends what it reads on stdin to its client: give it a FIFO nobody writes to, held
# open on fd 3 (not /dev/null, where it stops at end of file, nor /dev/zero, which it would
# stream to every client).
mkfifo stdin.fifo
exec 3<>stdin.fifo
start_server() { # name binary addr args...
  local name=$1 bin=$2 addr=$3; shift 3
  "$bin" s_server -quiet -naccept 100000000 -accept "$addr" "$@" <&3 >/dev/null 2>"$name.log" &
  pids+=($!)
}
start_server legacy openssl 127.113.30.1:4431 -cert legacy.crt -key legacy.key -no_tls1_3 \
  -cipher 'ALL:eNULL:@SECLEVEL=0'
start_server modern openssl 127.113.30.2:4432 -cert modern.crt -key modern.key -cert_chain ca.crt
start_server expired openssl 127.113.30.3:4433 -cert expired.crt -key expired.key
start_server pref openssl 127.113.30.4:4434 -cert pref.crt -key pref.key -cert_chain ca.crt \
  -tls1_2 -serverpref -cipher 'ECDHE-RSA-AES256-GCM-SHA384:AES128-SHA:DHE-RSA-AES128-GCM-SHA256'
start_server tongsuo "$tongsuo" 127.113.30.5:4435 -cert tongsuo.crt -key tongsuo.key \
  -cert_chain ca.crt -enable_ntls -sign_cert sm-sign.crt -sign_key sm-sign.key \
  -enc_cert sm-enc.crt -enc_key sm-enc.key
names=(legacy modern expired pref tongsuo)
addrs=(127.113.30.1:4431 127.113.30.2:4432 127.113.30.3:4433 127.113.30.4:4434 127.113.30.5:4435)
for a in "${addrs[@]}"; do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null && break
    sleep 0.05
  done
done

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

# netpatrol, each endpoint alone: wall time and peak memory of the whole process.
for i in "${!names[@]}"; do
  n=${names[$i]}
  s=$(now)
  /usr/bin/time -v -o "np-$n.rusage" "$netpatrol" probe tls "${addrs[$i]}" -c bench.yaml \
    --name "$n.lab.test" --format json > "np-$n.json" 2>"np-$n.err" || true
  e=$(now)
  elapsed "$s" "$e" > "np-$n.time"
done

# sslyze, each endpoint alone: every version's full suite list and the certificate.
for i in "${!names[@]}"; do
  n=${names[$i]}
  s=$(now)
  "$sslyze" --sslv2 --sslv3 --tlsv1 --tlsv1_1 --tlsv1_2 --tlsv1_3 --certinfo \
    --certinfo_ca_file "$work/ca.crt" --json_out "sy-$n.json" --quiet \
    "$n.lab.test:${addrs[$i]#*:}{${addrs[$i]%:*}}" > "sy-$n.out" 2>&1 || true
  e=$(now)
  elapsed "$s" "$e" > "sy-$n.time"
done

# testssl.sh --fast, when installed, the endpoints in parallel.
if [ -n "$testssl_bin" ]; then
  ts_pids=()
  for i in "${!names[@]}"; do
    n=${names[$i]}
    (
      s=$(now)
      timeout 900 "$testssl_bin" --fast --quiet --warnings off --color 0 --add-ca "$work/ca.crt" \
        --jsonfile "ts-$n.json" "${addrs[$i]}" </dev/null > "ts-$n.out" 2>&1 || true
      e=$(now)
      elapsed "$s" "$e" > "ts-$n.time"
    ) &
    ts_pids+=($!)
  done
  wait "${ts_pids[@]}"
fi

export TONGSUO_BIN=$tongsuo
python3 - "$work" "${names[@]}" -- "${addrs[@]}" <<'PY'
import json, os, re, subprocess, sys
work = sys.argv[1]
sep = sys.argv.index("--")
names, addrs = sys.argv[2:sep], dict(zip(sys.argv[2:sep], sys.argv[sep + 1:]))
VERSIONS = ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
SY_KEYS = {"SSLv2": "ssl_2_0_cipher_suites", "SSLv3": "ssl_3_0_cipher_suites",
           "TLSv1.0": "tls_1_0_cipher_suites", "TLSv1.1": "tls_1_1_cipher_suites",
           "TLSv1.2": "tls_1_2_cipher_suites", "TLSv1.3": "tls_1_3_cipher_suites"}

def read(name):
    p = os.path.join(work, name)
    return open(p).read() if os.path.exists(p) else ""

def np_result(name):
    try:
        out = json.loads(read(f"np-{name}.json"))
    except ValueError:
        return None
    tls = out.get("facts") or {}
    cert = tls.get("cert") or {}
    suites = {v: s for v, s in (tls.get("accepted_suites") or {}).items()}
    verdicts = {
        "trusted": cert.get("trusted"),
        "self-signed": cert.get("self_signed"),
        "expired": cert.get("days_left", 0) < 0 if cert else None,
        "host name": cert.get("hostname_match"),
    }
    extra = {"handshakes, probe time": f"{tls.get('handshakes')}, {tls.get('elapsed_ms')} ms"}
    if tls.get("tlcp"):
        extra["TLCP suites"] = ", ".join(suites.get("TLCP", []))
        extra["TLCP certs trusted"] = [c.get("trusted") for c in tls.get("tlcp_certs", [])]
    return suites, verdicts, extra

def sy_result(name):
    try:
        doc = json.loads(read(f"sy-{name}.json"))
        scan = doc["server_scan_results"][0]["scan_result"]
    except (ValueError, KeyError, IndexError):
        return None
    suites = {}
    for v, key in SY_KEYS.items():
        r = (scan.get(key) or {}).get("result") or {}
        acc = [c["cipher_suite"]["name"] for c in r.get("accepted_cipher_suites", [])]
        if acc:
            suites[v] = acc
    info = ((scan.get("certificate_info") or {}).get("result") or {})
    deps = info.get("certificate_deployments") or [{}]
    d = deps[0]
    chain = d.get("received_certificate_chain") or [{}]
    leaf = chain[0]
    trusted = any(p.get("was_validation_successful") for p in d.get("path_validation_results", []))
    subject = (leaf.get("subject") or {}).get("rfc4514_string")
    issuer = (leaf.get("issuer") or {}).get("rfc4514_string")
    not_after = leaf.get("not_valid_after", "")
    import datetime
    try:
        expired = datetime.datetime.fromisoformat(not_after.replace("Z", "+00:00")) < datetime.datetime.now(datetime.timezone.utc)
    except ValueError:
        expired = None
    # sslyze 6 checks the name inside path validation: known (true) only when a path
    # validated; a failed validation says nothing about the name.
    host = True if trusted else None
    verdicts = {
        "trusted": trusted,
        "self-signed": subject is not None and subject == issuer,
        "expired": expired,
        "host name": host,
    }
    return suites, verdicts

def openssl_accepts(name, version, suite):
    """Whether an openssl s_client handshake with only `suite` at `version` succeeds: the
    referee for a suite only one tool lists."""
    binary = os.environ["TONGSUO_BIN"] if name == "tongsuo" else "openssl"
    table = subprocess.run([binary, "ciphers", "-stdname", "ALL:eNULL:@SECLEVEL=0"],
                           capture_output=True, text=True).stdout
    ossl = {l.split(" - ")[0].strip(): l.split(" - ")[1].split()[0]
            for l in table.splitlines() if " - " in l}
    flag = {"TLSv1.0": "-tls1", "TLSv1.1": "-tls1_1", "TLSv1.2": "-tls1_2", "TLSv1.3": "-tls1_3"}.get(version)
    if flag is None:
        return None
    args = [binary, "s_client", "-connect", addrs[name], flag]
    if version == "TLSv1.3":
        args += ["-ciphersuites", suite]
    elif suite in ossl:
        args += ["-cipher", ossl[suite] + ":@SECLEVEL=0"]
    else:
        return None
    r = subprocess.run(args, input="Q\n", capture_output=True, text=True, timeout=10)
    return re.search(r"Cipher is (?!\(NONE\))", r.stdout) is not None

def secs(prefix, name):
    t = read(f"{prefix}-{name}.time").strip()
    return float(t) if t else None

def rss(name):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", read(f"np-{name}.rusage"))
    return int(m.group(1)) if m else None

all_same = True
for name in names:
    print(f"== {name}")
    a, b = np_result(name), sy_result(name)
    if a is None or b is None:
        print(f"   no result: netpatrol {'ok' if a else 'FAILED'}, sslyze {'ok' if b else 'FAILED'}")
        all_same = False
        continue
    (na, nv, extra), (sa, sv) = a, b
    for v in VERSIONS:
        x, y = na.get(v, []), sa.get(v, [])
        if not x and not y:
            continue
        same = set(x) == set(y)
        mark = "identical" if same else "DIFFER"
        print(f"   {v:8} netpatrol {len(x):3}  sslyze {len(y):3}  {mark}")
        if not same:
            all_same = False
            for who, diff in (("netpatrol", set(x) - set(y)), ("sslyze", set(y) - set(x))):
                for suite in sorted(diff):
                    ok = openssl_accepts(name, v, suite)
                    referee = {True: "accepted", False: "refused", None: "not checkable"}[ok]
                    print(f"            only {who}: {suite} (openssl s_client: {referee})")
    for k in nv:
        verdict = "-" if sv[k] is None else ("agree" if nv[k] == sv[k] else "DIFFER")
        print(f"   {k:12} netpatrol {str(nv[k]):6} sslyze {str(sv[k]):6} {verdict}")
    for k, v in extra.items():
        print(f"   {k} (netpatrol only): {v}")
    tn, ts = secs("np", name), secs("sy", name)
    tt = secs("ts", name)
    speed = f"{ts / tn:.0f}x" if tn and ts else "-"
    mem = rss(name)
    print(f"   wall time    netpatrol {tn:.3f} s  sslyze {ts:.3f} s  ({speed})"
          + (f"  testssl.sh {tt:.1f} s" if tt else ""))
    print(f"   netpatrol peak memory {mem / 1024:.1f} MiB" if mem else "   netpatrol peak memory -")
print()
print("accepted suites identical on every endpoint both speak:",
      "yes" if all_same else "NO (see the suites only one tool lists, and the s_client referee)")
PY
