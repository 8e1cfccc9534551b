#!/usr/bin/env bash
# The field's four scenarios (issue 18, point 4): added p99 latency at concurrency 1,
# the highest sustained rate with an upstream answering after 20 ms, added time to
# first token for streams of 64 deltas 20 ms apart, and how many such streams are
# held without a stall (swept to 4,096); the mock directly, the floor proxy, nginx
# (when installed: bench/run.sh --install-peers) and lm-proxy, CPU per request and
# peak RSS beside each figure. The load generator is bench-load (bench/load.rs).
#
#   bench/field.sh                       # every scenario, about 10 minutes
#   bench/field.sh --quick               # short runs: a look, not a figure
#   bench/field.sh --scenarios latency,ttft --targets direct,lm-proxy
#
# Writes bench/out/field-<timestamp>.md (and the raw output beside it). Not part of CI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for bin in lm-proxy-server bench-upstream bench-floor-proxy bench-load; do
    [[ -x target/release/$bin ]] || { cargo build --release --locked --bins; break; }
done
# Thousands of open streams need a descriptor each, twice over through a proxy.
ulimit -n "$(ulimit -Hn)"
exec python3 bench/field.py "$@"
