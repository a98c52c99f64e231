#!/usr/bin/env bash
# hack/logs_bench.sh — Logs streaming throughput through apid, for docs/BENCHMARKS.md.
#
# What it does:
#   1. starts a one-node local cluster (`basaltctl cluster create`) from the release binaries,
#      with HOME pointing into a temporary directory (the cluster's context never touches the
#      user's ~/.basalt);
#   2. adds a service to the node's machine config with `basaltctl apply-config --mode
#      no-reboot`: after a 3 s pause it writes LOGS_BENCH_BYTES (default 256 MiB) of 100-byte
#      lines as fast as `yes` can, then sleeps;
#   3. follows its output with `basaltctl logs spew -f --tail 0` through apid (mTLS, TLS 1.3) and
#      counts the bytes that arrive, from the first to the last one (the stream is over once
#      nothing came for 3 s, or all bytes came);
#   4. prints bytes, seconds, MiB/s, and how many times machined told the reader it skipped
#      chunks (a follower that falls more than 128 chunks behind skips ahead instead of making
#      machined buffer: then the delivery path is the bottleneck, else the writer may be).
#
# Traffic stays on 127.0.0.x. Knobs: BIN (target/release), LOGS_BENCH_BYTES, LOGS_BENCH_LISTEN.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release}
BYTES=${LOGS_BENCH_BYTES:-268435456}
LISTEN=${LOGS_BENCH_LISTEN:-127.0.0.78:50000}
BIN=$(cd "$BIN" && pwd)

work=$(mktemp -d /tmp/bslogs.XXXXXX)
export HOME=$work
ctl() { "$BIN/basaltctl" --context lbench "$@"; }
follower=""
cleanup() {
    [[ -n $follower ]] && kill "$follower" 2>/dev/null || true
    "$BIN/basaltctl" cluster destroy --name lbench --state "$work/cluster" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting a node in $work/cluster" >&2
"$BIN/basaltctl" cluster create --name lbench --state "$work/cluster" --listen "$LISTEN" >&2

line=$(printf 'x%.0s' $(seq 99))
cat >"$work/service.yaml" <<EOF
  services:
    - name: spew
      command: sh
      args:
        - -c
        - sleep 3; yes $line | head -c $BYTES; exec sleep 100000
      restart: never
EOF
awk -v extra="$work/service.yaml" '
    { print }
    /^machine:$/ { while ((getline l < extra) > 0) print l }
' "$work/cluster/controlplane.yaml" >"$work/with-service.yaml"
ctl apply-config -f "$work/with-service.yaml" --mode no-reboot >&2

cat >"$work/count.py" <<'EOF'
import os, select, sys, time
want = int(sys.argv[1])
fd = sys.stdin.fileno()
total, first, last, skips = 0, None, None, 0
while total < want:
    ready, _, _ = select.select([fd], [], [], 3.0 if first else 30.0)
    if not ready:
        break
    chunk = os.read(fd, 1 << 20)
    if not chunk:
        break
    now = time.monotonic()
    first = first or now
    last = now
    total += len(chunk)
    skips += chunk.count(b"[machined: skipped")
secs = (last - first) if first else 0.0
mib = total / (1 << 20)
print(f"bytes={total} seconds={secs:.3f} MiB/s={mib / secs if secs else 0:.0f} skip_notices={skips}")
EOF

echo "== following spew through apid" >&2
# Not a pipeline: the follow stream never ends by itself; cleanup ends it with the cluster.
exec 3< <(ctl logs spew -f --tail 0)
follower=$!
python3 "$work/count.py" "$BYTES" <&3
