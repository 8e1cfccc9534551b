#!/usr/bin/env bash
# System calls, packets and context switches per request, lm-proxy against nginx
# (issue 18, point 6: where the kernel's share of a request goes).
#
#   bench/syscalls.sh                      # target/release/lm-proxy-server
#   bench/syscalls.sh /tmp/other/lm-proxy-server
#
# Both servers in front of bench-upstream, each on one core's worth of workers
# (lm-proxy `--threads 1`, nginx one worker: a plain reverse proxy, as bench/run.py
# configures it), under `wrk -c64` for DURATION seconds (5), non-streamed and a
# 20-chunk stream. Counted by `perf stat` on the server's process from the
# kernel's tracepoints and software events, which work on VMs whose hardware
# counters `perf` cannot read: every system call, the main ones by name, network
# transmits (`net:net_dev_xmit`, a packet each on loopback), context switches;
# CPU time from /proc. Each figure is divided by the requests wrk completed.
# Needs perf (Debian's linux-perf), wrk, nginx and a release build. Not part of CI.
# UPSTREAM_PORT, GATEWAY_PORT and NGINX_PORT (18451, 18452, 18453) move the ports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh
GATEWAY=${1:-target/release/lm-proxy-server}
UPSTREAM=target/release/bench-upstream
[[ -x $GATEWAY && -x $UPSTREAM ]] || cargo build --release --locked --bins
for tool in perf wrk nginx; do
    command -v $tool >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
DURATION=${DURATION:-5}
upstream_port=${UPSTREAM_PORT:-18451}
gateway_port=${GATEWAY_PORT:-18452}
nginx_port=${NGINX_PORT:-18453}
work=$(mktemp -d)
chmod 755 "$work"
cleanup() {
    kill "${gateway_pid:-}" "${upstream_pid:-}" 2>/dev/null || true
    [[ -f $work/nginx.pid ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$UPSTREAM" --port "$upstream_port" >"$work/upstream.log" 2>&1 &
upstream_pid=$!
wait_for "http://127.0.0.1:$upstream_port/health"
write_gateway_config "$work/gateway.toml" "$upstream_port" "$gateway_port"
"$GATEWAY" --config "$work/gateway.toml" --threads 1 2>"$work/gateway.log" &
gateway_pid=$!
user=""
[[ $(id -u) == 0 ]] && user="user nobody $(id -gn nobody);"
cat >"$work/nginx.conf" <<CONF
worker_processes 1; daemon off; $user
pid $work/nginx.pid; error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off; keepalive_requests 1000000; client_body_buffer_size 64k;
    client_body_temp_path $work/cb; proxy_temp_path $work/px; fastcgi_temp_path $work/fc;
    uwsgi_temp_path $work/uw; scgi_temp_path $work/sc;
    upstream mock { server 127.0.0.1:$upstream_port; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://mock; proxy_http_version 1.1;
            proxy_set_header Connection ""; proxy_buffering off;
        }
    }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" 2>"$work/nginx.log" &
wait_for "http://127.0.0.1:$gateway_port/health"
wait_for "http://127.0.0.1:$nginx_port/health"
nginx_worker=$(pgrep -P "$(cat "$work/nginx.pid")")

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
wrk.body = os.getenv("BODY")
LUA
events=raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read
events+=,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto
events+=,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,net:net_dev_xmit
events+=,context-switches

declare -A bodies=(
    [non-streamed]='{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
    [stream-20]='{"model":"bench-s20","stream":true,"messages":[{"role":"user","content":"hi"}]}'
)
for scenario in non-streamed stream-20; do
    export BODY=${bodies[$scenario]}
    for server in lm-proxy nginx; do
        if [[ $server == lm-proxy ]]; then pid=$gateway_pid port=$gateway_port; else pid=$nginx_worker port=$nginx_port; fi
        wrk -t2 -c64 -d1s -s "$work/post.lua" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null
        perf stat -x, -e "$events" -p "$pid" -o "$work/perf.txt" -- sleep "$DURATION" &
        perf_pid=$!
        before=$(cpu_ticks "$pid")
        requests=$(wrk -t2 -c64 -d"${DURATION}s" -s "$work/post.lua" \
            "http://127.0.0.1:$port/v1/chat/completions" | awk '/requests in/ {print $1}')
        after=$(cpu_ticks "$pid")
        wait $perf_pid
        printf '%s, %s: %s requests, %.1f µs CPU a request (from /proc, ±10 ms in all)\n' \
            "$scenario" "$server" "$requests" "$(echo "($after - $before) * 10000 / $requests" | bc -l)"
        awk -F, -v n="$requests" '$1 ~ /^[0-9.]+$/ {printf "  %-32s %6.2f a request\n", $3, $1 / n}' "$work/perf.txt"
    done
done
