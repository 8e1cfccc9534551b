#!/usr/bin/env bash
# Every benchmark scenario in one go: build the release binaries, start the mock
# upstream and each server, wait for readiness, measure with wrk, stop everything,
# write bench/RESULTS.md. Options are passed to bench/run.py (see --help).
#
#   bench/run.sh                    # all scenarios, every installed peer
#   bench/run.sh --install-peers    # first install wrk, nginx, the reference lm-proxy and LiteLLM
#   bench/run.sh --only latency-c1,stream-c64 --duration 5
#
# Benchmarks are not tests: this is not part of scripts/test or CI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command_line="bench/run.sh $*"

if [[ "${1:-}" == "--install-peers" ]]; then
    shift
    command -v wrk >/dev/null || { apt-get update && apt-get install -y wrk; }
    # nginx: the industry reference reverse proxy, a row in the OpenAI scenarios.
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || {
        apt-get update && { apt-get install -y nginx-light || apt-get install -y nginx; }
    }
    [[ -x bench/.venv-ref/bin/lm-proxy ]] || {
        python3 -m venv bench/.venv-ref
        bench/.venv-ref/bin/pip install -q lm-proxy anthropic
    }
    [[ -x bench/.venv-litellm/bin/litellm ]] || {
        python3 -m venv bench/.venv-litellm
        bench/.venv-litellm/bin/pip install -q 'litellm[proxy]'
    }
fi

cargo build --release --locked --bins
exec python3 bench/run.py --command "$command_line" "$@"
