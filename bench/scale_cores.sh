#!/usr/bin/env bash
# CPU per request and per stream as serving cores grow (issue "Speed on every core").
#
#   bench/scale_cores.sh [GATEWAY_BIN] [UPSTREAM_BIN]
#
# For 1, 2, 4 and 6 serving threads (--threads N, pinned with taskset to N cores of
# their own) it drives the gateway with wrk (pinned to other cores; the mock on
# others again) for SECONDS each: non-streamed, a 20-chunk pass-through stream, and
# the translated 20-chunk streams: Anthropic and Gemini upstreams translated to
# OpenAI chunks (Vertex AI speaks Gemini's format through the same translation), an
# OpenAI stream translated to Anthropic events (/v1/messages) and to Responses API
# events (/v1/responses); SCENARIOS="..." picks some. It prints requests per
# second and the gateway's CPU time per request (utime+stime of its process over the
# run, from /proc), so a contended path shows as CPU per request that grows with
# cores instead of staying flat. Needs >= 12 cores, wrk and taskset; not part of CI.
# TARGETS="lm-proxy nginx" adds nginx (N workers on the same N cores) as the
# reference for the scenarios it can serve (non-streamed and the pass-through stream:
# it forwards, it does not translate); NGINX=path and WRK=path override the binaries
# (e.g. ones carried to a machine without them: bench/device.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh
GATEWAY=${1:-target/release/lm-proxy-server}
UPSTREAM=${2:-target/release/bench-upstream}
WRK=${WRK:-wrk}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
CORES=$(nproc)
THREAD_COUNTS=${THREAD_COUNTS:-1 2 4 6}
work=$(mktemp -d)
upstream_port=18531
gateway_port=18532
cleanup() {
    kill "${server_pid:-}" "${upstream_pid:-}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

TICK=$(getconf CLK_TCK)

# Cores: the mock gets the last quarter, wrk the quarter before it, the gateway
# the first N (N <= 6). Below 12 cores nothing is pinned apart (a smoke test only:
# THREAD_COUNTS=1 SECONDS_PER_RUN=1 checks that the script works).
if [[ $CORES -ge 12 ]]; then
    mock_cores="$((CORES * 3 / 4))-$((CORES - 1))"
    wrk_cores="$((CORES / 2))-$((CORES * 3 / 4 - 1))"
    wrk_threads=$((CORES / 4))
else
    echo "fewer than 12 cores ($CORES): nothing pinned apart, figures mean little" >&2
    mock_cores="0-$((CORES - 1))"
    wrk_cores=$mock_cores
    wrk_threads=1
fi
gateway_cores() { if [[ $CORES -ge 12 ]]; then echo "0-$(($1 - 1))"; else echo "0-$((CORES - 1))"; fi; }

taskset -c "$mock_cores" "$UPSTREAM" --port $upstream_port >"$work/upstream.log" 2>&1 &
upstream_pid=$!
wait_for "http://127.0.0.1:$upstream_port/health"
write_gateway_config "$work/gateway.toml" $upstream_port $gateway_port

declare -A bodies=(
    [non-streamed]='{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
    [stream-20]='{"model":"bench-s20","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [anthropic-stream-20]='{"model":"claude-bench-s20","stream":true,"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}'
    [gemini-stream-20]='{"model":"gemini-bench-s20","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [messages-translated-20]='{"model":"bench-s20","stream":true,"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}'
    [responses-translated-20]='{"model":"bench-s20","stream":true,"input":"hi"}'
)
declare -A paths=(
    [non-streamed]=/v1/chat/completions
    [stream-20]=/v1/chat/completions
    [anthropic-stream-20]=/v1/chat/completions
    [gemini-stream-20]=/v1/chat/completions
    [messages-translated-20]=/v1/messages
    [responses-translated-20]=/v1/responses
)
SCENARIOS=${SCENARIOS:-non-streamed stream-20 anthropic-stream-20 gemini-stream-20 messages-translated-20 responses-translated-20}

# nginx_config WORKERS: bench/run.py's config for its `nginx` target (a plain reverse
# proxy to the mock, everything it writes in a folder of its own under $work), with
# WORKERS workers; prints the config's path.
nginx_config() {
    local dir
    dir=$(mktemp -d -p "$work")
    python3 -c 'import sys; from pathlib import Path; sys.path.insert(0, "bench"); import run
print(run.nginx_config(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), workers=int(sys.argv[4])))' \
        "$gateway_port" "$upstream_port" "$dir" "$1"
}

# start_server TARGET THREADS: the gateway (--threads N) or nginx (N workers), pinned
# to the gateway's cores; sets server_pid.
start_server() {
    if [[ $1 == nginx ]]; then
        local config
        config=$(nginx_config "$2")
        taskset -c "$(gateway_cores "$2")" "$NGINX" -e stderr -p "$(dirname "$config")" -c "$config" \
            >"$work/server.log" 2>&1 &
    else
        taskset -c "$(gateway_cores "$2")" "$GATEWAY" --config "$work/gateway.toml" --threads "$2" \
            >"$work/server.log" 2>&1 &
    fi
    server_pid=$!
    wait_for "http://127.0.0.1:$gateway_port/health" || {
        echo "$1 did not start:" >&2
        cat "$work/server.log" >&2
        exit 1
    }
}

# TARGETS: lm-proxy, and nginx as the reference for the scenarios it can serve
# (it forwards; it does not translate). NGINX=path overrides the binary.
TARGETS=${TARGETS:-lm-proxy}
NGINX=${NGINX:-nginx}
nginx_serves() { [[ $1 == non-streamed || $1 == stream-20 ]]; }

printf '%-10s %-24s %5s %12s %14s %8s %7s\n' server scenario cores "req/s" "CPU us/req" "p99 ms" errors
for target in $TARGETS; do
    for threads in $THREAD_COUNTS; do
        start_server "$target" "$threads"
        for scenario in $SCENARIOS; do
            if [[ $target == nginx ]] && ! nginx_serves "$scenario"; then continue; fi
            url="http://127.0.0.1:$gateway_port${paths[$scenario]}"
            cat >"$work/wrk.lua" <<LUA
wrk.method = "POST"
wrk.body = [==[${bodies[$scenario]}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
LUA
            # Warm up (connections, pools), then measure.
            taskset -c "$wrk_cores" "$WRK" -t"$wrk_threads" -c256 -d1s -s "$work/wrk.lua" "$url" >/dev/null
            before=$(tree_ticks $server_pid)
            line=$(taskset -c "$wrk_cores" "$WRK" -t"$wrk_threads" -c256 -d"${SECONDS_PER_RUN}s" \
                --timeout 10s -s "$work/wrk.lua" "$url" |
                grep '^BENCH')
            after=$(tree_ticks $server_pid)
            read -r _ requests duration_us p99_us errors <<<"$line"
            awk -v g="$target" -v s="$scenario" -v t="$threads" -v r="$requests" -v d="$duration_us" \
                -v p="$p99_us" -v e="$errors" -v c=$((after - before)) -v tick="$TICK" \
                'BEGIN { printf "%-10s %-24s %5d %12.0f %14.1f %8.1f %7d\n", g, s, t, r / (d / 1e6),
                         (c / tick * 1e6) / r, p / 1000, e }'
        done
        kill -INT $server_pid
        wait $server_pid 2>/dev/null || true
        server_pid=
    done
done
