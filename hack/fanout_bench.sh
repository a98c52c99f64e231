#!/usr/bin/env bash
# Fan-out latency through a control plane's apid: Version with `nodes` naming 1, 3 and 10
# nodes, and with `node` naming one worker, against Version on the control plane alone.
#
# Starts a local cluster (1 control plane + 9 workers, `basaltctl cluster create --workers 9`,
# release binaries, workers on 127.0.0.11-19 port 50000) in a temporary directory, drives the
# control plane's apid with hack/loadgen, checks that every worker answered, destroys the
# cluster and prints a Markdown table. Raw JSON: docs/bench/fanout.json.
#
# Usage: [SKIP_BUILD=1] hack/fanout_bench.sh [REQUESTS] [CONCURRENCY...]   (defaults: 2000, 1 16)
# Never part of `make test`; binds only loopback addresses.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
requests=${1:-2000}
shift || true
concurrencies=("${@:-1 16}")
# shellcheck disable=SC2206
concurrencies=(${concurrencies[*]})
bin=$root/target/release
out=$root/docs/bench/fanout.json

# SKIP_BUILD=1 uses the release binaries as they are.
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release -q -p machined -p apid -p trustd -p basaltctl -p basalt-loadgen
fi

work=$(mktemp -d /tmp/bsfan.XXXXXX)
cleanup() {
    "$bin/basaltctl" --config "$work/user.config" cluster destroy --name fanbench \
        --state "$work/cluster" >/dev/null 2>&1 || true
    rm -rf "$work"
}
# KEEP=1 leaves the cluster running for a look (destroy it with the command printed above).
[ -n "${KEEP:-}" ] || trap cleanup EXIT

"$bin/basaltctl" --config "$work/user.config" cluster create --name fanbench \
    --state "$work/cluster" --workers 9 --machined-bin "$bin/machined" >&2
# apid's per-client rate limit (default 100 calls/s per certificate) would refuse most of the
# load: raise it in every apid's config and let machined restart apid with it.
unlimit() { # node state dir
    local dir=$1 yaml=$1/machined/apid/apid.yaml pid
    grep -q '^limits:' "$yaml" ||
        printf 'limits:\n  requestsPerSecond: 1000000\n  burst: 1000000\n  maxInFlight: 100000\n' >>"$yaml"
    pid=$(ps -o pid=,comm= --ppid "$(cat "$dir/machined.pid")" | awk '$2 == "apid" {print $1}')
    kill -TERM "$pid"
}
unlimit "$work/cluster"
for i in $(seq 1 9); do unlimit "$work/cluster/workers/worker-$i"; done

cp_addr=$("$bin/basaltctl" --config "$work/user.config" cluster show --name fanbench \
    --state "$work/cluster" -o json |
    python3 -c 'import json,sys; print([n["address"] for n in json.load(sys.stdin)["nodes"] if n["role"] != "worker"][0])')
cp_host=${cp_addr%:*}
workers=(127.0.0.11 127.0.0.12 127.0.0.13 127.0.0.14 127.0.0.15 127.0.0.16 127.0.0.17 127.0.0.18 127.0.0.19)
# Workers listen on port 50000; name them with it, in case the control plane's port differs.
named=("$cp_addr")
for w in "${workers[@]}"; do named+=("$w:50000"); done
join() { local IFS=,; echo "$*"; }

# Wait (bounded) until every restarted node answers Version.
for addr in "${named[@]}"; do
    for _ in $(seq 100); do
        ok=$("$bin/basalt-loadgen" --apid "$addr" --client-config "$work/cluster/basaltconfig" \
            --requests 1 --warmup 0 2>/dev/null |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])' || echo 0)
        [ "$ok" = 1 ] && break
        sleep 0.3
    done
done

run() { # label, metadata args...
    local label=$1 c=$2
    shift 2
    "$bin/basalt-loadgen" --apid "$cp_addr" --client-config "$work/cluster/basaltconfig" \
        --concurrency "$c" --requests "$requests" --warmup 100 --label "$label" "$@"
}

: >"$out.tmp"
for c in "${concurrencies[@]}"; do
    run "direct c=$c" "$c" >>"$out.tmp"
    run "node=1 worker c=$c" "$c" --metadata "node=${named[1]}" >>"$out.tmp"
    run "nodes=1 (control plane) c=$c" "$c" --metadata "nodes=${named[0]}" >>"$out.tmp"
    run "nodes=1 (worker) c=$c" "$c" --metadata "nodes=${named[1]}" >>"$out.tmp"
    run "nodes=3 c=$c" "$c" --metadata "nodes=$(join "${named[@]:0:3}")" >>"$out.tmp"
    run "nodes=10 c=$c" "$c" --metadata "nodes=$(join "${named[@]}")" >>"$out.tmp"
done

# Every worker's apid served its share: fan-out errors are reply elements, not gRPC errors,
# so count the forwarded Version calls each worker recorded as OK.
for i in "${!workers[@]}"; do
    log=$work/cluster/workers/worker-$((i + 1))/machined/apid/audit.log
    ok=$(grep -c '"method":"/machine.MachineService/Version".*"code":"OK"' "$log" || true)
    echo "worker-$((i + 1)) (${workers[$i]}): $ok Version calls OK" >&2
done

python3 - "$out.tmp" "$out" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
reports, dec, i = [], json.JSONDecoder(), 0
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    obj, i = dec.raw_decode(text, i)
    reports.append(obj)
json.dump(reports, open(sys.argv[2], "w"), indent=1)
print("| call | req/s | p50 µs | p90 µs | p99 µs | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for r in reports:
    l = r["latency_us"]
    print(f"| {r['label']} | {r['rps']:.0f} | {l['p50']} | {l['p90']} | {l['p99']} | {r['errors']} |")
PY
rm -f "$out.tmp"
