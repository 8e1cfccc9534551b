#!/usr/bin/env bash
# examples/local_model.py behind the gateway on a GPU: time to first token and
# tokens per second for 1 and 16 concurrent streams (see local_model_gpu.py).
# Offline: torch, transformers and the lm_proxy package must already be importable
# (e.g. a wheel unpacked into a folder on PYTHONPATH). Ends within 4 minutes.
#   bench/local_model_gpu.sh                                   # cuda, 0.7B random model
#   bench/local_model_gpu.sh --size tiny --device cpu --tokens 16   # smoke run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import torch, transformers, tokenizers, lm_proxy' || {
    echo "torch, transformers, tokenizers and lm_proxy must be importable by $PYTHON" >&2
    exit 1
}
# The script stops itself at --deadline (230 s); this is the backstop.
exec timeout -k 5 240 "$PYTHON" bench/local_model_gpu.py "$@"
