#!/usr/bin/env bash
# A profile-guided (PGO) build of lm-proxy-server, trained on the benchmark's own
# requests:
#
#   bench/pgo.sh            # -> target/pgo-use/<host>/release/lm-proxy-server
#
# 1. builds the gateway instrumented (`-Cprofile-generate`, target/pgo-generate);
# 2. runs it in front of the mock upstream and sends it each of bench/scenarios.sh's
#    default requests (the chat door plain and streamed, Anthropic and Gemini
#    streams translated, the Messages and Responses doors, embeddings, agents'
#    requests with tools) TRAIN times, then the chat requests again with a JSON
#    logger configured; the gateway is stopped with SIGINT so that it writes its
#    profile as it exits;
# 3. merges the profiles with the toolchain's own llvm-profdata (rustup component
#    llvm-tools: its LLVM is rustc's, which the profile format must match) and builds
#    again with `-Cprofile-use` (target/pgo-use).
#
# Both builds take `--target <host>` so that RUSTFLAGS reach the gateway's code and
# its dependencies but not build scripts or proc macros. Each build is a full
# release build (fat LTO): some 12 minutes apiece on 2 cores. Not part of CI; what
# it buys is measured in bench/README.md ("Session 32"), e.g. with
# `bench/run.py --compare target/pgo-use/<host>/release/lm-proxy-server`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh
source bench/scenarios.sh
TRAIN=${TRAIN:-400}
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x $profdata ]]; then
    rustup component add llvm-tools >&2 || {
        echo "llvm-profdata of rustc's LLVM is needed: rustup component add llvm-tools" >&2
        exit 1
    }
fi
work=$(mktemp -d)
upstream_port=${UPSTREAM_PORT:-18441}
gateway_port=${GATEWAY_PORT:-18442}
cleanup() {
    kill "${gateway_pid:-}" "${upstream_pid:-}" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "pgo: instrumented build (target/pgo-generate)" >&2
# The profiles' folder is part of RUSTFLAGS, so it stays the same from run to run
# (another would rebuild every dependency); it is emptied before each training.
profiles=$PWD/target/pgo-generate/profiles
RUSTFLAGS="-Cprofile-generate=$profiles" cargo build --release --locked \
    --target "$host" --target-dir target/pgo-generate --bin lm-proxy-server
[[ -x target/release/bench-upstream ]] || cargo build --release --locked --bin bench-upstream

rm -rf "$profiles"
target/release/bench-upstream --port "$upstream_port" >"$work/upstream.log" 2>&1 &
upstream_pid=$!
wait_for "http://127.0.0.1:$upstream_port/health"
write_load_py "$work/load.py"

# train CONFIG SCENARIO...: the instrumented gateway on CONFIG serves TRAIN of each
# scenario's requests, then exits cleanly (its profile is written at exit).
train() {
    local config=$1
    shift
    target/pgo-generate/"$host"/release/lm-proxy-server --config "$config" \
        >"$work/gateway.log" 2>&1 &
    gateway_pid=$!
    wait_for "http://127.0.0.1:$gateway_port/health"
    for scenario in "$@"; do
        echo "pgo: training on $scenario" >&2
        python3 "$work/load.py" "$gateway_port" "$TRAIN" "${bodies[$scenario]}" "${paths[$scenario]}"
    done
    kill -INT "$gateway_pid"
    wait "$gateway_pid" || { echo "pgo: the gateway did not exit cleanly" >&2; exit 1; }
    gateway_pid=
}
write_gateway_config "$work/gateway.toml" "$upstream_port" "$gateway_port"
# shellcheck disable=SC2086 # one scenario name per word
train "$work/gateway.toml" $DEFAULT_SCENARIOS
cp "$work/gateway.toml" "$work/logged.toml"
cat >>"$work/logged.toml" <<CFG
[[loggers]]
class = "lm_proxy.loggers.BaseLogger"
[loggers.log_writer]
class = "lm_proxy.loggers.JsonLogWriter"
file_name = "$work/json.log"
CFG
train "$work/logged.toml" non-streamed stream-20 stream-20-usage anthropic-stream-20

ls "$profiles"/*.profraw >/dev/null || { echo "pgo: no profile was written" >&2; exit 1; }
# Kept (target/pgo.profdata) for a look with `llvm-profdata show` and for a rebuild.
"$profdata" merge -o target/pgo.profdata "$profiles"/*.profraw

echo "pgo: optimized build (target/pgo-use)" >&2
# Functions changed since the profile was taken are built without it (a warning).
RUSTFLAGS="-Cprofile-use=$PWD/target/pgo.profdata" \
    cargo build --release --locked --target "$host" --target-dir target/pgo-use \
    --bin lm-proxy-server
echo "target/pgo-use/$host/release/lm-proxy-server"
