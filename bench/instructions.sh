#!/usr/bin/env bash
# Instructions per request of one or more lm-proxy binaries, counted by callgrind:
# repeatable to a few hundred instructions whatever else the machine is doing, so
# it can separate a 3 % change that wall-clock runs on a shared VM cannot.
#
#   bench/instructions.sh target/release/lm-proxy-server /tmp/old/lm-proxy-server
#
# For each binary and scenario (non-streamed, a 20-chunk pass-through stream, the
# same stream asked with `stream_options.include_usage` as many clients ask it, a
# 20-chunk Anthropic stream and a Gemini stream of 20 text events translated to OpenAI
# chunks; on the Anthropic door
# (/v1/messages) a 20-event stream from an Anthropic upstream passed through and a
# 20-chunk OpenAI stream translated to Anthropic events; on the Responses door
# (/v1/responses) a 20-chunk OpenAI stream translated to Responses events; a
# non-streamed request with 20 tools, as agents send; agents' 16 KB requests on each
# door, passed through and translated: bench/scenarios.sh has them all) the
# gateway runs under
# callgrind with one serving thread while sequential keep-alive requests go through
# it; the instructions of N2 requests minus those of N1 requests, divided by N2-N1,
# leave out startup and shutdown. Needs valgrind and a release build
# (`cargo build --release --bins` makes bench-upstream too). Not part of CI.
# UPSTREAM_PORT and GATEWAY_PORT (default 18431, 18432) let two runs share a machine.
# UPSTREAM_ARGS are added to the mock's command line, e.g. `--openai-headers` (its
# answers then carry the headers OpenAI's do).
# EXTRA=FILE appends FILE's TOML to the gateway's config (`{work}` in it becomes the
# run's scratch folder), e.g. bench/ledger-sqlite.toml: the usage ledger and a budget.
# DUMP_INSTR=1 writes the profiles with each instruction's count (callgrind's
# --dump-instr=yes), for bench/atomics.py (with KEEP).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh
[[ $# -ge 1 ]] || { sed -n 2,13p "$0"; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
UPSTREAM=target/release/bench-upstream
[[ -x $UPSTREAM ]] || cargo build --release --locked --bins
N1=${N1:-200}
N2=${N2:-1200}
work=$(mktemp -d)
upstream_port=${UPSTREAM_PORT:-18431}
gateway_port=${GATEWAY_PORT:-18432}
cleanup() { kill "${upstream_pid:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT


# shellcheck disable=SC2086 # UPSTREAM_ARGS is split into arguments on purpose.
"$UPSTREAM" --port $upstream_port ${UPSTREAM_ARGS:-} >"$work/upstream.log" 2>&1 &
upstream_pid=$!
wait_for "http://127.0.0.1:$upstream_port/health"
write_gateway_config "$work/gateway.toml" $upstream_port $gateway_port
if [[ -n ${EXTRA:-} ]]; then sed "s|{work}|$work|g" "$EXTRA" >>"$work/gateway.toml"; fi
source bench/scenarios.sh
write_load_py "$work/load.py"

# instructions BINARY BODY N PATH: the callgrind total of a run serving N requests.
instructions() {
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
        ${DUMP_INSTR:+--dump-instr=yes} \
        "$1" --config "$work/gateway.toml" --threads 1 >"$work/gateway.log" 2>&1 &
    local pid=$!
    wait_for "http://127.0.0.1:$gateway_port/health"
    python3 "$work/load.py" $gateway_port "$3" "$2" "$4"
    kill -INT $pid
    wait $pid 2>/dev/null || true
    awk '/^(summary|totals):/ {print $2; exit}' "$work/cg.out"
    # KEEP=DIR keeps each profile (for callgrind_annotate) as DIR/<n>-<binary name>.out.
    if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp "$work/cg.out" "$KEEP/$3-$(basename "$1").out"; fi
}

SCENARIOS=${SCENARIOS:-$DEFAULT_SCENARIOS}
printf '%-24s %-50s %s\n' scenario binary instructions/request
for scenario in $SCENARIOS; do
    for binary in "$@"; do
        first=$(instructions "$binary" "${bodies[$scenario]}" "$N1" "${paths[$scenario]}")
        second=$(instructions "$binary" "${bodies[$scenario]}" "$N2" "${paths[$scenario]}")
        printf '%-24s %-50s %d\n' "$scenario" "$binary" $(((second - first) / (N2 - N1)))
    done
done
