"""Time to first token and tokens per second of examples/local_model.py behind the
gateway, for 1 stream and for N concurrent streams (issue 21, point 7).

Needs only: Python 3.11+, torch, transformers, tokenizers, and the lm_proxy package
importable (installed, or a wheel unpacked on PYTHONPATH). No network: the model is
written here with random weights (a Llama of about 0.7B parameters in bf16 by
default; ``--size tiny`` for a smoke run on CPU), or ``--model PATH`` serves a folder
you have. No openai package: the client is the standard library's http.client.

    bench/local_model_gpu.sh                      # GPU, 0.7B model, 1 and 16 streams
    bench/local_model_gpu.sh --size tiny --device cpu --tokens 16   # smoke run

Every wait is bounded (``--deadline``, default 230 s for the whole run); the gateway
is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
READY = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
KEY = "local-key"

# name: hidden, layers, intermediate, heads, kv heads, vocabulary
SIZES = {
    "tiny": (32, 2, 64, 4, 2, 512),
    "0.7b": (2048, 16, 5632, 16, 4, 32000),
    "1.3b": (2048, 24, 8192, 16, 8, 32000),
}


def log(*args: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def build_model(folder: Path, size: str, device: str) -> None:
    """A Llama with random weights and a word-level tokenizer with a chat template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    hidden, layers, inter, heads, kv, vocab_size = SIZES[size]
    words = ["<unk>", "<pad>", "<eos>", "user", "assistant", "system", ":"]
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    vocab = {w: i for i, w in enumerate(words)}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=2048,
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
        bos_token_id=None,
    )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # Initialised where it will run: a 0.7B model initialises in seconds on a GPU.
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    log(f"model: {params / 1e6:.0f}M parameters, {dtype}, saved in {folder}")
    del model


def start_gateway(model: str, device: str, concurrency: int) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ)
    env.update(
        LOCAL_MODEL=model,
        LOCAL_MODEL_DEVICE=device,
        LOCAL_MODEL_MAX_CONCURRENCY=str(concurrency),
        RUST_LOG="info",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "examples"), env.get("PYTHONPATH", "")) if p
    )
    argv = [sys.executable, "-m", "lm_proxy", "--config", str(REPO / "examples/local_model.toml")]
    argv += ["--port", "0", "--env", "", "--no-debug"]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, text=True, errors="replace",
    )  # fmt: skip
    port: list[int] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if not port and (m := READY.search(line)):
                port.append(int(m.group(1)))
                ready.set()
            if "ERROR" in line or "Traceback" in line or "Error" in line:
                sys.stderr.write("gateway: " + line)
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    ready.wait(60)
    if not port:
        proc.kill()
        raise SystemExit("the gateway did not start (see its lines above)")
    return proc, port[0]


def stream_once(port: int, tokens: int, seed: int, timeout: float) -> dict[str, float]:
    """One streamed request; times from the request to the first text and the end."""
    body = json.dumps(
        {
            "model": "local",
            "messages": [{"role": "user", "content": "w1 w2 w3 w4 w5 w6 w7 w8"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": tokens,
            "min_tokens": tokens,  # ignore EOS: every stream has the same length
            "temperature": 1.0,
            "seed": seed,
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.perf_counter()
    first = None
    completion = 0
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body,
            {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if "error" in chunk:
                raise RuntimeError(f"error chunk: {chunk['error']}")
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter()
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
    finally:
        conn.close()
    ended = time.perf_counter()
    if first is None:
        raise RuntimeError("no text came back")
    return {
        "ttft": first - started,
        "total": ended - started,
        "tokens": completion,
        "decode_tps": (completion - 1) / (ended - first) if ended > first else 0.0,
    }


def run_streams(port: int, n: int, tokens: int, timeout: float) -> dict[str, Any]:
    results: list[Any] = [None] * n
    gate = threading.Barrier(n)

    def one(i: int) -> None:
        try:
            gate.wait(timeout)
            results[i] = stream_once(port, tokens, seed=i, timeout=timeout)
        except Exception as e:  # reported below, never hangs the run
            results[i] = e

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, timeout - (time.perf_counter() - started)))
    wall = time.perf_counter() - started
    failures = [r for r in results if not isinstance(r, dict)]
    if failures:
        raise RuntimeError(f"{len(failures)} of {n} streams failed: {failures[0]!r}")
    ttft = [r["ttft"] for r in results]
    return {
        "streams": n,
        "ttft_p50": statistics.median(ttft),
        "ttft_max": max(ttft),
        "stream_tps": statistics.median(r["decode_tps"] for r in results),
        "total_tps": sum(r["tokens"] for r in results) / wall,
        "tokens": sum(r["tokens"] for r in results),
        "wall": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="0.7b")
    parser.add_argument("--model", help="serve this folder (or hub cache snapshot) instead")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per stream")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--deadline", type=float, default=230.0, help="seconds for everything")
    args = parser.parse_args()

    # Hard stop: whatever hangs, the run ends (the gateway with it) by the deadline.
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("deadline")))
    signal.alarm(int(args.deadline))
    began = time.perf_counter()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = f" ({torch.cuda.get_device_name(0)})" if device.startswith("cuda") else ""
    log(f"torch {torch.__version__}, device {device}{gpu}")
    proc = None
    with tempfile.TemporaryDirectory(prefix="lm-proxy-bench-") as tmp:
        try:
            model = args.model
            if not model:
                build_model(Path(tmp) / "model", args.size, device)
                model = str(Path(tmp) / "model")
            proc, port = start_gateway(model, device, max(args.streams))
            log(f"gateway on port {port}; warming up (loads the model)")
            left = lambda: args.deadline - (time.perf_counter() - began) - 5  # noqa: E731
            stream_once(port, 8, seed=0, timeout=max(5.0, left()))
            rows = []
            for n in args.streams:
                for_run = max(5.0, left())
                rows.append(run_streams(port, n, args.tokens, for_run))
                log(f"{n} stream(s) done")
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            signal.alarm(0)
    print()
    print(f"model {args.model or args.size} on {device}, {args.tokens} tokens per stream")
    print("| streams | TTFT p50 (ms) | TTFT max (ms) | tok/s per stream | tok/s total | wall (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['streams']} | {r['ttft_p50'] * 1000:.0f} | {r['ttft_max'] * 1000:.0f} "
            f"| {r['stream_tps']:.1f} | {r['total_tps']:.1f} | {r['wall']:.1f} |"
        )
    log(f"all done in {time.perf_counter() - began:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
