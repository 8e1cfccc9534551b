#!/usr/bin/env bash
# The usage ledger's cost with the database on cores of its own (issue 17, point 9:
# non-streamed throughput at concurrency 64 within 10 % of the ledger off).
#
#   bench/ledger_cores.sh [GATEWAY_BIN] [UPSTREAM_BIN]
#
# bench/run.py's ledger scenarios run everything on the same CPUs, so there the
# PostgreSQL server's work per row competes with the gateway's. Here, on a machine
# with 8 or more cores, each part has cores of its own (taskset): the gateway
# GATEWAY_CORES (default 2, `--threads` the same), wrk the next quarter, the mock
# the quarter after, PostgreSQL the last cores. Three configurations take turns
# ROUNDS times (default 3): the ledger off, on SQLite (in the gateway's process, on
# its cores), on PostgreSQL (a throwaway cluster: initdb/pg_ctl on PATH or in
# /usr/lib/postgresql/*/bin; skipped with a message when absent). Printed per run:
# requests/s, the gateway's CPU per request, the database server's CPU per row (its
# processes' utime+stime from /proc over the run) and errors; then the median of
# each configuration and its ratio to the ledger off. Below 8 cores nothing is
# pinned apart (a smoke test only: ROUNDS=1 SECONDS_PER_RUN=1), unless DB_APART=1:
# then PostgreSQL has the last core to itself and everything else shares the rest
# (on 2 CPUs: the gateway, wrk and the mock on one, the database on the other).
# Not part of CI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh
GATEWAY=${1:-target/release/lm-proxy-server}
UPSTREAM=${2:-target/release/bench-upstream}
WRK=${WRK:-wrk}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
ROUNDS=${ROUNDS:-3}
CORES=$(nproc)
GATEWAY_CORES=${GATEWAY_CORES:-2}
work=$(mktemp -d)
chmod 755 "$work"
upstream_port=18551
gateway_port=18552
pg_port=18553
cleanup() {
    kill "${gateway_pid:-}" "${upstream_pid:-}" 2>/dev/null || true
    [[ -n ${pg_ctl:-} ]] && "${as_pg[@]}" "$pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# pg_ticks USER: the summed utime + stime of that user's postgres processes.
pg_ticks() {
    local total=0 pid
    for pid in $(pgrep -u "$1" -x postgres || true); do
        total=$((total + $(cpu_ticks "$pid" 2>/dev/null || echo 0)))
    done
    echo $total
}
TICK=$(getconf CLK_TCK)

if [[ $CORES -ge 8 ]]; then
    quarter=$(((CORES - GATEWAY_CORES) / 3))
    gateway_cores="0-$((GATEWAY_CORES - 1))"
    wrk_cores="$GATEWAY_CORES-$((GATEWAY_CORES + quarter - 1))"
    mock_cores="$((GATEWAY_CORES + quarter))-$((GATEWAY_CORES + 2 * quarter - 1))"
    db_cores="$((GATEWAY_CORES + 2 * quarter))-$((CORES - 1))"
    wrk_threads=$quarter
elif [[ ${DB_APART:-0} == 1 && $CORES -ge 2 ]]; then
    # The database alone on the last core; the gateway, wrk and the mock share the
    # others: the shape of a deployment whose database has a machine of its own,
    # on a small machine (the ledger off leaves that core idle).
    gateway_cores="0-$((CORES - 2))"
    GATEWAY_CORES=$((CORES - 1))
    wrk_cores=$gateway_cores
    mock_cores=$gateway_cores
    db_cores=$((CORES - 1))
    wrk_threads=1
else
    echo "fewer than 8 cores ($CORES): nothing pinned apart, figures mean little" >&2
    gateway_cores="0-$((CORES - 1))"
    wrk_cores=$gateway_cores
    mock_cores=$gateway_cores
    db_cores=$gateway_cores
    wrk_threads=1
fi

taskset -c "$mock_cores" "$UPSTREAM" --port $upstream_port >"$work/upstream.log" 2>&1 &
upstream_pid=$!
wait_for "http://127.0.0.1:$upstream_port/health"

# PostgreSQL, when installed: as root, its tools run as `nobody` (it refuses root).
configurations=(off sqlite)
as_pg=()
pg_user=$(id -un)
pg_bin=$(dirname "$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)")
if [[ -x $pg_bin/initdb && -x $pg_bin/pg_ctl ]]; then
    if [[ $(id -u) -eq 0 ]]; then
        as_pg=(runuser -u nobody --)
        pg_user=nobody
        mkdir "$work/pg"
        chown nobody "$work/pg"
    fi
    "${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg" -U bench --auth=trust >/dev/null
    pg_ctl=$pg_bin/pg_ctl
    "${as_pg[@]}" taskset -c "$db_cores" "$pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w \
        -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    configurations+=(postgres)
else
    echo "PostgreSQL not found (initdb, pg_ctl): its rows are left out" >&2
fi

cat >"$work/wrk.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout))
end
LUA

config_for() {
    write_gateway_config "$work/$1.toml" $upstream_port $gateway_port
    case $1 in
    sqlite)
        rm -f "$work"/ledger.db*
        # A budget far from spent: every request reserves and settles it.
        sed -i 's/^api_keys = \["bench-key"\]$/&\nbudget = { usd = 1000000, period = "month" }/' "$work/$1.toml"
        printf '[database]\nurl = "sqlite://%s/ledger.db"\n' "$work" >>"$work/$1.toml"
        ;;
    postgres)
        sed -i 's/^api_keys = \["bench-key"\]$/&\nbudget = { usd = 1000000, period = "month" }/' "$work/$1.toml"
        printf '[database]\nurl = "postgres://bench@127.0.0.1:%s/postgres"\n' $pg_port >>"$work/$1.toml"
        ;;
    esac
}

printf '%-9s %5s %10s %14s %14s %7s\n' ledger round "req/s" "gateway us/req" "db us/row" errors
declare -A results
for round in $(seq "$ROUNDS"); do
    for configuration in "${configurations[@]}"; do
        config_for "$configuration"
        taskset -c "$gateway_cores" "$GATEWAY" --config "$work/$configuration.toml" \
            --threads "$GATEWAY_CORES" >"$work/gateway.log" 2>&1 &
        gateway_pid=$!
        wait_for "http://127.0.0.1:$gateway_port/health"
        taskset -c "$wrk_cores" "$WRK" -t"$wrk_threads" -c64 -d1s -s "$work/wrk.lua" \
            "http://127.0.0.1:$gateway_port/v1/chat/completions" >/dev/null
        before=$(cpu_ticks $gateway_pid)
        db_before=$(pg_ticks "$pg_user")
        line=$(taskset -c "$wrk_cores" "$WRK" -t"$wrk_threads" -c64 -d"${SECONDS_PER_RUN}s" \
            --timeout 10s -s "$work/wrk.lua" "http://127.0.0.1:$gateway_port/v1/chat/completions" |
            grep '^BENCH')
        after=$(cpu_ticks $gateway_pid)
        db_after=$(pg_ticks "$pg_user")
        kill -INT $gateway_pid
        wait $gateway_pid 2>/dev/null || true
        gateway_pid=
        read -r _ requests duration_us errors <<<"$line"
        [[ $configuration == postgres ]] || db_after=$db_before
        row=$(awk -v r="$requests" -v d="$duration_us" -v c=$((after - before)) \
            -v db=$((db_after - db_before)) -v tick="$TICK" \
            'BEGIN { printf "%.0f %.1f %.1f", r / (d / 1e6), (c / tick * 1e6) / r, (db / tick * 1e6) / r }')
        read -r rps gateway_us db_us <<<"$row"
        printf '%-9s %5d %10s %14s %14s %7d\n' "$configuration" "$round" "$rps" "$gateway_us" "$db_us" "$errors"
        results[$configuration]+="$rps "
    done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
off=$(median "${results[off]}")
echo
printf '%-9s %12s %8s\n' ledger "median req/s" "vs off"
for configuration in "${configurations[@]}"; do
    m=$(median "${results[$configuration]}")
    awk -v c="$configuration" -v m="$m" -v o="$off" 'BEGIN { printf "%-9s %12d %7.2fx\n", c, m, m / o }'
done
