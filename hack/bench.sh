#!/usr/bin/env bash
# hack/bench.sh — measure one basalt node against its peers on loopback; write docs/BENCHMARKS.md.
#
# What it does (`make bench` runs it):
#   1. installs nginx (nginx-light) and cfssl (golang-cfssl) from Debian if they are missing,
#      builds release binaries (machined, apid, trustd, basaltctl, basalt-loadgen,
#      basalt-signbench);
#   2. generates PKI and a control-plane config with `basaltctl gen` (apid on a free loopback
#      port, apid's per-client limits raised so the load is not throttled), starts machined,
#      which issues apid's certificate and runs apid; starts nginx from a generated config in the
#      temp dir (TLS 1.3, `ssl_verify_client on` against the same CA, apid's certificate,
#      `grpc_pass` to machined's socket with `talos-role: os:admin`);
#   3. gateway: Version through apid, through nginx and directly on machined's socket at
#      concurrency 1, 16 and 64 over one persistent connection, alternating paths, BENCH_ROUNDS
#      rounds; CPU per request of every server process (`--server-pid`); full mTLS handshakes
#      (a new connection per request) through apid and nginx at concurrency 1 and 4;
#   4. scaling: apid and nginx with 0, 100 and 1000 idle mTLS connections held open (each made
#      one call) while measuring at concurrency 16 on one more connection;
#   5. signer: trustd vs `cfssl serve`, both with an ECDSA P-256 CA (cfssl has no Ed25519),
#      P-256 CSRs, concurrency 1 and 16, alternating, BENCH_ROUNDS rounds; `openssl speed` for
#      P-256 and Ed25519 sign/verify per second on one core as the raw limit;
#   6. footprint: VmRSS idle and VmHWM (peak; for apid and nginx read before the scaling runs) of
#      apid, machined, nginx, trustd and cfssl; stripped binary sizes;
#   7. writes everything to a fresh temp dir; only when every step succeeded does it replace its
#      own JSON in docs/bench/ and regenerate docs/BENCHMARKS.md above its `<!-- notes -->` line.
#
# Traffic goes to 127.0.0.1 only; every step is bounded (request counts plus `timeout`), and the
# cleanup trap stops every process this script started. Knobs (environment):
#   BENCH_REQUESTS (10000 per gateway run), BENCH_ROUNDS (3), BENCH_HANDSHAKES (1000 per run),
#   BENCH_SIGN_REQUESTS (1000 per signer phase), BENCH_HOLD ("0 100 1000"),
#   BENCH_PROFILE (release; "debug" for a quick rehearsal), BENCH_OUT (docs/bench),
#   BENCH_DOC (docs/BENCHMARKS.md), BENCH_NO_BUILD=1 (use the binaries already in target/),
#   BENCH_NO_INSTALL=1 (never apt-get; fail if nginx or cfssl is missing), BENCH_KEEP=DIR (also
#   copy the raw JSON there), BENCH_STEP_TIMEOUT (180 s for any one measuring command),
#   BENCH_APID_BIN and BENCH_MACHINED_BIN (another build of either daemon, for an A/B).
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${BENCH_PROFILE:-release}
REQUESTS=${BENCH_REQUESTS:-10000}
HANDSHAKES=${BENCH_HANDSHAKES:-1000}
SIGN_REQUESTS=${BENCH_SIGN_REQUESTS:-1000}
ROUNDS=${BENCH_ROUNDS:-3}
read -r -a HOLDS <<<"${BENCH_HOLD:-0 100 1000}"
WARMUP=200
OUT=${BENCH_OUT:-docs/bench}
DOC=${BENCH_DOC:-docs/BENCHMARKS.md}
CARGO=${CARGO:-cargo}
# Upper bound of any one measuring command: a hung server fails the run instead of stalling it.
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-180}

# --- tools -----------------------------------------------------------------------------------
need_pkg() { # command, Debian package
    command -v "$1" >/dev/null 2>&1 && return 0
    [[ -z ${BENCH_NO_INSTALL:-} ]] || { echo "$1 is missing (apt-get install $2)" >&2; exit 1; }
    echo "== installing $2" >&2
    timeout 600 apt-get install -y -qq "$2" >&2 \
        || { timeout 300 apt-get update -qq >&2 && timeout 600 apt-get install -y -qq "$2" >&2; }
}
export DEBIAN_FRONTEND=noninteractive
# nginx installs into /usr/sbin, which a user's PATH may lack.
export PATH=$PATH:/usr/sbin:/sbin
need_pkg nginx nginx-light
need_pkg cfssl golang-cfssl
NGINX=$(command -v nginx)
CFSSL=$(command -v cfssl)

profile_flag=()
[[ $PROFILE == release ]] && profile_flag=(--release)
if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    echo "== building ($PROFILE)" >&2
    "$CARGO" build "${profile_flag[@]}" -p machined -p apid -p trustd -p basaltctl \
        -p basalt-loadgen -p basalt-signbench >&2
fi
BIN=target/$PROFILE

# --- process bookkeeping ---------------------------------------------------------------------
work=$(mktemp -d /tmp/bsbench.XXXXXX)
stage=$work/results # this run's JSON; moved to $OUT only if everything succeeded
mkdir -p "$stage"
mpid=""
nginx_pid=""
stop_pid() { # TERM, wait up to 10 s, then KILL
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
perf_load=""
cleanup() {
    stop_pid "$perf_load"
    stop_pid "$nginx_pid"
    stop_pid "$mpid"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1000 held connections plus the measuring ones need more descriptors than the usual 1024, in
# the load generator and in apid (which inherits this limit through machined).
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rss_kib() { # VmRSS (or another Vm… key) of a pid in KiB, 0 if it is gone
    awk -v key="${2:-VmRSS}:" '$1 == key {print $2; found=1} END {if (!found) print 0}' \
        "/proc/$1/status" 2>/dev/null || echo 0
}
sum_rss() { # key pid... — summed
    local key=$1 total=0; shift
    for p in "$@"; do total=$((total + $(rss_kib "$p" "$key"))); done
    echo "$total"
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
loadgen() { timeout "$STEP_TIMEOUT" "$BIN/basalt-loadgen" "$@"; }
# Runs a loadgen into $stage/NAME.json and fails the whole run if any call failed.
measure() { # name, loadgen args...
    local name=$1; shift
    loadgen "$@" --label "$name" >"$stage/$name.json"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(1 if r["errors"] or r["ok"] == 0 else 0)' \
        "$stage/$name.json" || { echo "$name had errors:" >&2; cat "$stage/$name.json" >&2; exit 1; }
}
wait_ready() { # what, pid to watch, loadgen target args...
    local what=$1 watch=$2; shift 2
    for _ in $(seq 200); do # at most ~20 s
        if loadgen "$@" --requests 1 --warmup 0 --timeout 1 2>/dev/null | grep -q '"ok": 1'; then
            return 0
        fi
        kill -0 "$watch" 2>/dev/null || { echo "$what exited" >&2; return 1; }
        sleep 0.1
    done
    echo "$what did not answer in 20 s" >&2
    return 1
}

# --- the node --------------------------------------------------------------------------------
echo "== starting a node in $work" >&2
"$BIN/basaltctl" gen secrets -o "$work/secrets.yaml" 2>/dev/null
"$BIN/basaltctl" gen config bench 127.0.0.1 --with-secrets "$work/secrets.yaml" -o "$work/cfg" 2>/dev/null
apid_port=$(free_port)
trustd_port=$(free_port)
# apid's default per-client limits (100 calls/s, 64 connections per address) would throttle a
# benchmark whose every call comes from one certificate on 127.0.0.1.
sed -i "s/^  type: controlplane\$/  type: controlplane\n  apid:\n    listen: 127.0.0.1:$apid_port\n  trustd:\n    listen: 127.0.0.1:$trustd_port\n  apidLimits: {requestsPerSecond: 1000000, burst: 1000000, maxInFlight: 100000, maxConnectionsPerAddress: 100000}/" \
    "$work/cfg/controlplane.yaml"
grep -q "listen: 127.0.0.1:$apid_port" "$work/cfg/controlplane.yaml" \
    || { echo "could not set machine.apid.listen" >&2; exit 1; }
socket="$work/run/machined.sock"
admin="$work/cfg/basaltconfig"

apid_bin=${BENCH_APID_BIN:-$BIN/apid}
machined_bin=${BENCH_MACHINED_BIN:-$BIN/machined}
BASALT_LOG=${BASALT_LOG:-warn} "$machined_bin" --config "$work/cfg/controlplane.yaml" \
    --state "$work/state" --socket "$socket" --apid-bin "$apid_bin" >"$work/machined.log" 2>&1 &
mpid=$!

to_apid=(--apid "127.0.0.1:$apid_port" --client-config "$admin")
to_machined=(--unix "$socket" --metadata talos-role=os:admin)
wait_ready apid "$mpid" "${to_apid[@]}" || { cat "$work/machined.log" >&2; exit 1; }
apid_pid=$(pgrep -P "$mpid" -x "$(basename "$apid_bin" | cut -c1-15)" | head -n1 || true)
[[ -n $apid_pid ]] || { echo "no apid child of machined $mpid" >&2; exit 1; }
machined_pid=$mpid

# --- nginx in front of the same machined -----------------------------------------------------
# apid's own certificate and client CA bundle, so both gateways present and accept the same.
nginx_port=$(free_port)
nginx_h2c_port=$(free_port)
ngx=$work/nginx
mkdir -p "$ngx"
cat >"$ngx/nginx.conf" <<EOF
# Generated by hack/bench.sh; everything stays in $ngx.
daemon off;
# machined trusts talos-role only from uids on its allow-list: ours.
user $(id -un) $(id -gn);
worker_processes auto;
pid $ngx/nginx.pid;
error_log $ngx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $ngx/body;
    proxy_temp_path $ngx/proxy;
    fastcgi_temp_path $ngx/fastcgi;
    uwsgi_temp_path $ngx/uwsgi;
    scgi_temp_path $ngx/scgi;
    client_max_body_size 32m;
    upstream machined {
        server unix:$socket;
        keepalive 64;
    }
    # Plaintext h2c on loopback: checks nginx's upstream to machined apart from its TLS.
    server {
        listen 127.0.0.1:$nginx_h2c_port http2;
        location / {
            grpc_pass grpc://machined;
            grpc_set_header talos-role os:admin;
        }
    }
    server {
        listen 127.0.0.1:$nginx_port ssl http2;
        ssl_protocols TLSv1.3;
        ssl_certificate $work/state/apid/server.crt;
        ssl_certificate_key $work/state/apid/server.key;
        ssl_client_certificate $work/state/apid/ca.pem;
        ssl_verify_client on;
        ssl_verify_depth 2;
        keepalive_requests 1000000;
        http2_max_requests 1000000;
        location / {
            grpc_pass grpc://machined;
            grpc_set_header talos-role os:admin;
        }
    }
}
EOF
"$NGINX" -p "$ngx" -c "$ngx/nginx.conf" -t 2>"$ngx/check.log" \
    || { cat "$ngx/check.log" >&2; exit 1; }
"$NGINX" -p "$ngx" -c "$ngx/nginx.conf" 2>>"$ngx/error.log" &
nginx_pid=$!
to_nginx=(--apid "127.0.0.1:$nginx_port" --client-config "$admin")
wait_ready "nginx's upstream (h2c)" "$nginx_pid" --h2c "127.0.0.1:$nginx_h2c_port" \
    || { cat "$ngx/error.log" >&2; exit 1; }
wait_ready "nginx (mTLS)" "$nginx_pid" "${to_nginx[@]}" || { cat "$ngx/error.log" >&2; exit 1; }
mapfile -t nginx_workers < <(pgrep -P "$nginx_pid")
((${#nginx_workers[@]} > 0)) || { echo "nginx has no workers" >&2; exit 1; }
nginx_pids=$(IFS=,; echo "$nginx_pid,${nginx_workers[*]}")

# --- idle footprint --------------------------------------------------------------------------
sleep 2
idle_apid=$(rss_kib "$apid_pid")
idle_machined=$(rss_kib "$mpid")
idle_nginx_master=$(rss_kib "$nginx_pid")
idle_nginx_workers=$(sum_rss VmRSS "${nginx_workers[@]}")
load_before=$(loadavg)

# --- gateway: apid vs nginx vs direct --------------------------------------------------------
# Rounds alternate the three paths so that each sees the same background load. machined's pid is
# in every --server-pid list: its CPU is reported apart from the gateway's.
for round in $(seq "$ROUNDS"); do
    for c in 1 16 64; do
        echo "== round $round, concurrency $c: apid, nginx, direct" >&2
        measure "apid-c$c-r$round" "${to_apid[@]}" --concurrency "$c" --requests "$REQUESTS" \
            --warmup "$WARMUP" --server-pid "$apid_pid,$mpid"
        measure "nginx-c$c-r$round" "${to_nginx[@]}" --concurrency "$c" --requests "$REQUESTS" \
            --warmup "$WARMUP" --server-pid "$nginx_pids,$mpid"
        measure "machined-c$c-r$round" "${to_machined[@]}" --concurrency "$c" \
            --requests "$REQUESTS" --warmup "$WARMUP" --server-pid "$mpid"
    done
done
load_gateway=$(loadavg)

for round in $(seq "$ROUNDS"); do
    for c in 1 4; do
        echo "== round $round: full mTLS handshakes, concurrency $c: apid, nginx" >&2
        measure "handshake-apid-c$c-r$round" "${to_apid[@]}" --new-connection --concurrency "$c" \
            --requests "$HANDSHAKES" --warmup 20 --server-pid "$apid_pid,$mpid"
        measure "handshake-nginx-c$c-r$round" "${to_nginx[@]}" --new-connection \
            --concurrency "$c" --requests "$HANDSHAKES" --warmup 20 --server-pid "$nginx_pids,$mpid"
    done
done

# Peak RSS under the gateway loads (VmHWM only grows: read it before the scaling runs).
hwm_apid=$(rss_kib "$apid_pid" VmHWM)
hwm_machined=$(rss_kib "$mpid" VmHWM)
hwm_nginx_master=$(rss_kib "$nginx_pid" VmHWM)
hwm_nginx_workers=$(sum_rss VmHWM "${nginx_workers[@]}")
max_hwm_nginx_worker=0
for p in "${nginx_workers[@]}"; do
    h=$(rss_kib "$p" VmHWM)
    ((h > max_hwm_nginx_worker)) && max_hwm_nginx_worker=$h
done

# --- scaling: idle connections held open -----------------------------------------------------
for hold in "${HOLDS[@]}"; do
    echo "== $hold idle connections held open, concurrency 16: apid, nginx" >&2
    measure "scaling-apid-hold$hold" "${to_apid[@]}" --hold "$hold" --concurrency 16 \
        --requests "$REQUESTS" --warmup "$WARMUP" --server-pid "$apid_pid"
    measure "scaling-nginx-hold$hold" "${to_nginx[@]}" --hold "$hold" --concurrency 16 \
        --requests "$REQUESTS" --warmup "$WARMUP" --server-pid "$nginx_pids"
done
load_after=$(loadavg)

# --- where apid's time goes ------------------------------------------------------------------
# A flat perf profile of apid during 6 s of concurrency 16 (skipped if perf cannot record here).
# The release build is stripped, so apid's own frames group under its binary unless
# BENCH_APID_BIN names a build with symbols (`cargo rustc --release -p apid --bin apid -- -C
# strip=none`); the kernel / libc / apid split is what the report shows either way.
if [[ -z ${BENCH_NO_PERF:-} ]] && command -v perf >/dev/null 2>&1; then
    echo "== perf profile of apid, concurrency 16" >&2
    loadgen "${to_apid[@]}" --concurrency 16 --duration 8 --warmup 0 --label perf >/dev/null &
    perf_load=$!
    sleep 1
    if timeout 30 perf record -F 1999 -p "$apid_pid" -o "$work/perf.data" -- sleep 6 \
        >"$work/perf.log" 2>&1; then
        timeout 60 perf report -i "$work/perf.data" --no-children --sort dso,sym --stdio \
            >"$work/perf-sym.txt" 2>/dev/null || true
        timeout 60 perf report -i "$work/perf.data" --no-children --sort dso --stdio \
            >"$work/perf-dso.txt" 2>/dev/null || true
        python3 hack/bench_perf.py "$work/perf-dso.txt" "$work/perf-sym.txt" \
            >"$stage/apid-perf.json"
    else
        echo "perf record failed (skipped): $(tail -n1 "$work/perf.log")" >&2
    fi
    wait "$perf_load" || true
    perf_load=""
fi

sleep 2
after_apid=$(rss_kib "$apid_pid")
after_machined=$(rss_kib "$mpid")
stop_pid "$nginx_pid"
nginx_pid=""
stop_pid "$mpid"
mpid=""

# --- signer: trustd vs cfssl -----------------------------------------------------------------
for round in $(seq "$ROUNDS"); do
    for server in trustd cfssl; do
        echo "== round $round: $server signing P-256 CSRs, concurrency 1 and 16" >&2
        timeout "$STEP_TIMEOUT" "$BIN/basalt-signbench" --server "$server" \
            --trustd "$BIN/trustd" --cfssl "$CFSSL" --ca-algorithm ecdsa-p256 \
            --csr-algorithm ecdsa-p256 --concurrency 1,16 --requests "$SIGN_REQUESTS" \
            --warmup 100 --json "$stage/signer-$server-r$round.json" >/dev/null
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(1 if any(p["ok"] != p["requests"] for p in r["phases"]) else 0)' \
            "$stage/signer-$server-r$round.json" \
            || { echo "$server had errors" >&2; cat "$stage/signer-$server-r$round.json" >&2; exit 1; }
    done
done

echo "== openssl speed (one core)" >&2
timeout 120 openssl speed -seconds 2 -mr ecdsap256 ed25519 2>/dev/null >"$work/speed.txt"
python3 - "$work/speed.txt" >"$stage/openssl-speed.json" <<'EOF'
import json, sys
# -mr lines: "+F4:n:bits:sign/s:verify/s" (ECDSA), "+F6:n:bits:name:sign/s:verify/s" (EdDSA).
out = {}
for line in open(sys.argv[1]):
    f = line.strip().split(":")
    if f[0] == "+F4" and f[2] == "256":
        out["ecdsa-p256"] = {"sign_per_s": float(f[3]), "verify_per_s": float(f[4])}
    elif f[0] == "+F6" and f[3].lower() == "ed25519":
        out["ed25519"] = {"sign_per_s": float(f[4]), "verify_per_s": float(f[5])}
if len(out) != 2:
    sys.exit("openssl speed printed no P-256 or Ed25519 line")
out["openssl"] = __import__("subprocess").run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
print(json.dumps(out, indent=2))
EOF

# --- sizes and machine -----------------------------------------------------------------------
# Sizes of stripped copies (the release profile strips already; a debug build would not be).
stripped_size() {
    local copy=$work/strip-$(basename "$1")
    cp "$1" "$copy" && strip "$copy" 2>/dev/null || true
    stat -c %s "$copy"
}
cat >"$stage/node-system.json" <<EOF
{
  "profile": "$PROFILE",
  "nproc": $(nproc),
  "model": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')",
  "kernel": "$(uname -r)",
  "rustc": "$(rustc --version)",
  "nginx": "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')",
  "nginx_openssl": "$("$NGINX" -V 2>&1 | grep -m1 'built with OpenSSL' | sed 's/^built with //')",
  "nginx_workers": ${#nginx_workers[@]},
  "nginx_conf": $(python3 -c 'import json, sys; print(json.dumps(open(sys.argv[1]).read()))' "$ngx/nginx.conf"),
  "cfssl": "$("$CFSSL" version 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')",
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "requests_per_run": $REQUESTS,
  "warmup_per_run": $WARMUP,
  "rounds": $ROUNDS,
  "handshakes_per_run": $HANDSHAKES,
  "sign_requests_per_phase": $SIGN_REQUESTS,
  "holds": [$(IFS=,; echo "${HOLDS[*]}")],
  "machined_pid": $machined_pid,
  "apid_pid": $apid_pid,
  "loadavg_before": "$load_before",
  "loadavg_after_gateway": "$load_gateway",
  "loadavg_after": "$load_after",
  "loadavg_end": "$(loadavg)",
  "rss_kib": {
    "apid": {"idle": $idle_apid, "peak": $hwm_apid, "idle_after": $after_apid},
    "machined": {"idle": $idle_machined, "peak": $hwm_machined, "idle_after": $after_machined},
    "nginx_master": {"idle": $idle_nginx_master, "peak": $hwm_nginx_master},
    "nginx_workers": {"idle": $idle_nginx_workers, "peak": $hwm_nginx_workers, "peak_one_worker": $max_hwm_nginx_worker}
  },
  "stripped_bytes": {
    "apid": $(stripped_size "$BIN/apid"), "machined": $(stripped_size "$BIN/machined"),
    "trustd": $(stripped_size "$BIN/trustd"), "basaltctl": $(stripped_size "$BIN/basaltctl"),
    "nginx": $(stripped_size "$NGINX"), "cfssl": $(stripped_size "$CFSSL")
  }
}
EOF

# --- publish ---------------------------------------------------------------------------------
# Everything succeeded: the report is rendered from the staged JSON into a copy of the doc, then
# this script's own files in $OUT are replaced (others, e.g. fanout.json, stay).
# BENCH_KEEP=DIR keeps a copy of the raw results (e.g. to rework the report).
[[ -n ${BENCH_KEEP:-} ]] && mkdir -p "$BENCH_KEEP" && cp "$stage"/*.json "$BENCH_KEEP"/
doc_tmp=$work/BENCHMARKS.md
[[ -e $DOC ]] && cp "$DOC" "$doc_tmp"
python3 hack/bench_report.py "$stage" "$doc_tmp" "$OUT"
mkdir -p "$OUT"
rm -f "$OUT"/apid-c*.json "$OUT"/machined-c*.json "$OUT"/nginx-c*.json "$OUT"/ctx-c*.json \
    "$OUT"/handshake-*.json "$OUT"/scaling-*.json "$OUT"/signer-*.json "$OUT"/openssl-speed.json \
    "$OUT"/node-system.json "$OUT"/apid-perf.json
cp "$stage"/*.json "$OUT"/
cp "$doc_tmp" "$DOC"
echo "== wrote $DOC and $OUT/*.json" >&2
