#!/usr/bin/env bash
# hack/bench.sh — measure one basalt node on loopback and write docs/BENCHMARKS.md.
#
# What it does (`make bench` runs it):
#   1. builds release binaries: machined, apid, basaltctl, basalt-loadgen;
#   2. generates PKI and a control-plane config with `basaltctl gen` (apid on a free loopback
#      port), starts machined, which issues apid's certificate and runs apid;
#   3. with hack/loadgen: Version through apid (mTLS) and directly on machined's unix socket at
#      concurrency 1, 16 and 64 over one persistent connection, in interleaved rounds, counting
#      the daemons' context switches; full mTLS handshakes per second (a new connection per
#      request) at concurrency 1 and 4;
#   4. VmRSS of apid and machined idle, under load (peak over all load runs) and idle again
#      afterwards; sizes of the stripped release binaries;
#   5. writes the raw JSON to docs/bench/ (apid-*, machined-*, ctx-*, handshake-*,
#      node-system.json) and the tables to docs/BENCHMARKS.md (above its `<!-- notes -->` line).
#
# Traffic goes to 127.0.0.1 only; every loadgen run is bounded by a request count.
# Knobs (environment): BENCH_REQUESTS (default 10000 per run), BENCH_ROUNDS (3),
# BENCH_HANDSHAKES (2000),
# BENCH_PROFILE (release; "debug" for a quick rehearsal), BENCH_OUT (docs/bench),
# BENCH_DOC (docs/BENCHMARKS.md), BENCH_NO_BUILD=1 (use the binaries already in target/).
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${BENCH_PROFILE:-release}
REQUESTS=${BENCH_REQUESTS:-10000}
HANDSHAKES=${BENCH_HANDSHAKES:-2000}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=200
OUT=${BENCH_OUT:-docs/bench}
DOC=${BENCH_DOC:-docs/BENCHMARKS.md}
CARGO=${CARGO:-cargo}

profile_flag=()
[[ $PROFILE == release ]] && profile_flag=(--release)
if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    echo "== building ($PROFILE)" >&2
    "$CARGO" build "${profile_flag[@]}" -p machined -p apid -p basaltctl -p basalt-loadgen >&2
fi
BIN=target/$PROFILE

work=$(mktemp -d /tmp/bsbench.XXXXXX)
mpid=""
cleanup() {
    if [[ -n $mpid ]] && kill -0 "$mpid" 2>/dev/null; then
        kill -TERM "$mpid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$mpid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$mpid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

rss_kib() { # VmRSS of a pid in KiB, or 0 if it is gone
    awk '/^VmRSS:/ {print $2; found=1} END {if (!found) print 0}' "/proc/$1/status" 2>/dev/null || echo 0
}

# --- the node --------------------------------------------------------------------------------
echo "== starting a node in $work" >&2
"$BIN/basaltctl" gen secrets -o "$work/secrets.yaml" 2>/dev/null
"$BIN/basaltctl" gen config bench 127.0.0.1 --with-secrets "$work/secrets.yaml" -o "$work/cfg" 2>/dev/null
apid_port=$(free_port)
trustd_port=$(free_port)
sed -i "s/^  type: controlplane\$/  type: controlplane\n  apid:\n    listen: 127.0.0.1:$apid_port\n  trustd:\n    listen: 127.0.0.1:$trustd_port/" \
    "$work/cfg/controlplane.yaml"
grep -q "listen: 127.0.0.1:$apid_port" "$work/cfg/controlplane.yaml" \
    || { echo "could not set machine.apid.listen" >&2; exit 1; }
socket="$work/run/machined.sock"
admin="$work/cfg/basaltconfig"

BASALT_LOG=${BASALT_LOG:-warn} "$BIN/machined" --config "$work/cfg/controlplane.yaml" \
    --state "$work/state" --socket "$socket" --apid-bin "$BIN/apid" >"$work/machined.log" 2>&1 &
mpid=$!

loadgen() { "$BIN/basalt-loadgen" "$@"; }
to_apid=(--apid "127.0.0.1:$apid_port" --client-config "$admin")
to_machined=(--unix "$socket" --metadata talos-role=os:admin)

ready=""
for _ in $(seq 200); do # at most 20 s
    if loadgen "${to_apid[@]}" --requests 1 --warmup 0 --timeout 1 2>/dev/null | grep -q '"ok": 1'; then
        ready=yes
        break
    fi
    kill -0 "$mpid" 2>/dev/null || { echo "machined exited:" >&2; cat "$work/machined.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $ready ]] || { echo "apid did not answer in 20 s:" >&2; cat "$work/machined.log" >&2; exit 1; }
apid_pid=$(pgrep -P "$mpid" -x apid | head -n1)
[[ -n $apid_pid ]] || { echo "no apid child of machined $mpid" >&2; exit 1; }

mkdir -p "$OUT"
# Only this script's own files: others (e.g. trustd's benchmarks) live in the same directory.
rm -f "$OUT"/apid-c*.json "$OUT"/machined-c*.json "$OUT"/ctx-c*.json "$OUT"/handshake-c*.json \
    "$OUT"/node-system.json

# Idle: after the readiness call, with nothing else going on.
sleep 2
idle_apid=$(rss_kib "$apid_pid")
idle_machined=$(rss_kib "$mpid")
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

ctx_switches() { # voluntary context switches of all threads of a pid
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'
}

# Sample RSS of both daemons during every load run; keep the peaks.
(
    peak_a=0 peak_m=0
    while [[ ! -e $work/stop-sampling ]]; do
        a=$(rss_kib "$apid_pid"); m=$(rss_kib "$mpid")
        ((a > peak_a)) && peak_a=$a
        ((m > peak_m)) && peak_m=$m
        sleep 0.1
    done
    echo "$peak_a $peak_m" >"$work/peaks"
) &
sampler=$!

# --- latency and throughput ------------------------------------------------------------------
# Rounds interleave the two paths so that both see the same background load; the report shows
# the median round. Context switches are counted over the apid run (apid and machined) and the
# direct run (machined), warm-up requests included.
for round in $(seq "$ROUNDS"); do
    for c in 1 16 64; do
        echo "== round $round: Version through apid, concurrency $c" >&2
        a0=$(ctx_switches "$apid_pid"); m0=$(ctx_switches "$mpid")
        loadgen "${to_apid[@]}" --concurrency "$c" --requests "$REQUESTS" --warmup "$WARMUP" \
            --label "apid-c$c-r$round" >"$OUT/apid-c$c-r$round.json"
        a1=$(ctx_switches "$apid_pid"); m1=$(ctx_switches "$mpid")
        echo "== round $round: Version on machined's socket, concurrency $c" >&2
        loadgen "${to_machined[@]}" --concurrency "$c" --requests "$REQUESTS" --warmup "$WARMUP" \
            --label "machined-c$c-r$round" >"$OUT/machined-c$c-r$round.json"
        m2=$(ctx_switches "$mpid")
        printf '{"calls": %d, "via_apid": {"apid": %d, "machined": %d}, "direct": {"machined": %d}}\n' \
            $((REQUESTS + WARMUP)) $((a1 - a0)) $((m1 - m0)) $((m2 - m1)) >"$OUT/ctx-c$c-r$round.json"
    done
done
touch "$work/stop-sampling"
wait "$sampler"
read -r load_apid load_machined <"$work/peaks"

for c in 1 4; do
    echo "== full mTLS handshakes, concurrency $c" >&2
    loadgen "${to_apid[@]}" --new-connection --concurrency "$c" --requests "$HANDSHAKES" \
        --warmup 20 --label "handshake-c$c" >"$OUT/handshake-c$c.json"
done

sleep 2
after_apid=$(rss_kib "$apid_pid")
after_machined=$(rss_kib "$mpid")

# --- sizes and machine -----------------------------------------------------------------------
size_of() { stat -c %s "$BIN/$1"; }
stripped_of() { file -b "$BIN/$1" | grep -q 'not stripped' && echo no || echo yes; }
cat >"$OUT/node-system.json" <<EOF
{
  "profile": "$PROFILE",
  "nproc": $(nproc),
  "model": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')",
  "kernel": "$(uname -r)",
  "rustc": "$(rustc --version)",
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "requests_per_run": $REQUESTS,
  "warmup_per_run": $WARMUP,
  "rounds": $ROUNDS,
  "loadavg_before": "$load_before",
  "loadavg_after": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "handshakes_per_run": $HANDSHAKES,
  "rss_kib": {
    "apid": {"idle": $idle_apid, "load_peak": $load_apid, "idle_after": $after_apid},
    "machined": {"idle": $idle_machined, "load_peak": $load_machined, "idle_after": $after_machined}
  },
  "binary_bytes": {
    "apid": $(size_of apid), "machined": $(size_of machined),
    "basaltctl": $(size_of basaltctl), "basalt-loadgen": $(size_of basalt-loadgen)
  },
  "stripped": {
    "apid": "$(stripped_of apid)", "machined": "$(stripped_of machined)",
    "basaltctl": "$(stripped_of basaltctl)", "basalt-loadgen": "$(stripped_of basalt-loadgen)"
  }
}
EOF

# --- the report ------------------------------------------------------------------------------
python3 hack/bench_report.py "$OUT" "$DOC"
echo "== wrote $DOC and $OUT/*.json" >&2
