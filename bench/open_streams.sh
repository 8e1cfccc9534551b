#!/usr/bin/env bash
# Memory per open stream (issue 18, point 2; target: at most 24 KB above idle).
#
#   bench/open_streams.sh              # 2,000 then 4,000 streams
#   bench/open_streams.sh 1000 7000    # other counts
#
# For each count N: a fresh gateway (so that its peak is this run's) in front of
# bench-upstream; a few streams to warm it up; its idle VmRSS; then N slow streams
# opened at once by bench/open_streams.py (raw sockets, asyncio), each CHUNKS chunks
# DELAY_MS apart (20 and 500: ten seconds a stream, longer than it takes to open
# them all). Reported: the gateway's peak RSS (VmHWM) minus idle, divided by N
# (per_stream_KiB); the RSS when all N were open, and that minus idle divided by N
# (open_per_KiB: the peak also holds the requests still in flight while the
# streams open, which on a machine whose CPUs the load generator and the mock share
# can be hundreds); `lm_proxy_open_streams` then (N when they really were all open
# at once); errors. Each count runs in well under a minute.
#
# Needs a release build (`cargo build --release --bins` makes bench-upstream too).
# GATEWAY (target/release/lm-proxy-server), THREADS (2), CHUNKS, DELAY_MS,
# UPSTREAM_PORT and GATEWAY_PORT (18441, 18442) change the setup. MODEL_PREFIX picks
# the upstream the streams are translated from: `claude-` (Anthropic) or `gemini-`
# (Gemini); unset, the OpenAI stream passed through. Not part of CI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh
GATEWAY=${GATEWAY:-target/release/lm-proxy-server}
UPSTREAM=target/release/bench-upstream
[[ -x $GATEWAY && -x $UPSTREAM ]] || cargo build --release --locked --bins
THREADS=${THREADS:-2}
CHUNKS=${CHUNKS:-20}
DELAY_MS=${DELAY_MS:-500}
upstream_port=${UPSTREAM_PORT:-18441}
gateway_port=${GATEWAY_PORT:-18442}
counts=("$@")
[[ ${#counts[@]} -gt 0 ]] || counts=(2000 4000)
# The load generator holds one descriptor per stream.
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
cleanup() {
    kill "${gateway_pid:-}" "${upstream_pid:-}" 2>/dev/null || true
    # Gone before the script ends, so that a run right after can bind the same ports.
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$UPSTREAM" --port "$upstream_port" --threads 2 >"$work/upstream.log" 2>&1 &
upstream_pid=$!
wait_for "http://127.0.0.1:$upstream_port/health"
write_gateway_config "$work/gateway.toml" "$upstream_port" "$gateway_port"
model="${MODEL_PREFIX:-}bench-s$CHUNKS-d$DELAY_MS"

kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

printf '%-8s %-10s %-10s %-12s %-14s %-14s %-10s %-8s %s\n' \
    streams idle_MB peak_MB all_open_MB per_stream_KiB open_per_KiB gauge errors "ramp/total s"
for n in "${counts[@]}"; do
    RUST_LOG=warn "$GATEWAY" --config "$work/gateway.toml" --threads "$THREADS" \
        >"$work/gateway.log" 2>&1 &
    gateway_pid=$!
    wait_for "http://127.0.0.1:$gateway_port/health"
    # Warm up: the first streams allocate what every later one reuses (pools,
    # caches, the allocator's arenas); that is idle cost, not per-stream cost.
    python3 bench/open_streams.py "$gateway_port" "$gateway_pid" 50 "${MODEL_PREFIX:-}bench-s$CHUNKS-d1" >/dev/null
    idle=$(kib "$gateway_pid" VmRSS)
    result=$(python3 bench/open_streams.py "$gateway_port" "$gateway_pid" "$n" "$model")
    peak=$(kib "$gateway_pid" VmHWM)
    kill "$gateway_pid"
    wait "$gateway_pid" 2>/dev/null || true
    gateway_pid=
    python3 - "$n" "$idle" "$peak" "$result" <<'PY'
import json, sys
n, idle, peak, r = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
print(f"{n:<8} {idle/1024:<10.1f} {peak/1024:<10.1f} {r['rss_all_open_kib']/1024:<12.1f} "
      f"{(peak-idle)/n:<14.1f} {(r['rss_all_open_kib']-idle)/n:<14.1f} "
      f"{r['open_streams_gauge']:<10.0f} {r['errors']:<8} "
      f"{r['ramp_s']}/{r['total_s']}")
if r["errors"]:
    print("  errors:", r["first_errors"])
PY
done
