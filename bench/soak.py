#!/usr/bin/env python3
"""Soak test: a steady mixed load of streamed and non-streamed requests against a
release build of lm-proxy for a fixed time, watching errors, memory and the request
log.

Pass criteria (printed, and written to bench/SOAK.md):
- zero errors (every answer 200; every stream ends with [DONE] and no error chunk);
- RSS after warm-up grows by at most 10 %;
- exactly one JSON log line per request once the server has been stopped (SIGTERM).

Usage: python3 bench/soak.py [--minutes 10] [--rate 200] [--binary target/release/lm-proxy-server]
Everything runs on 127.0.0.1; the gateway answers from its built-in mock connection.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
READY = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")

CONFIG = """
host = "127.0.0.1"
port = 0
encryption_key = "soak-test-key"
[connections.mock]
api_type = "mock"
chunk_delay_ms = 2
[routing]
"*" = "mock.*"
[groups.default]
api_keys = ["soak-key"]
[[loggers]]
class = "lm_proxy.loggers.BaseLogger"
[loggers.log_writer]
class = "lm_proxy.loggers.log_writers.JsonLogWriter"
file_name = "{log}"
[loggers.entry_transformer]
class = "lm_proxy.loggers.LogEntryTransformer"
id = "id"
completion_tokens = "response.usage.completion_tokens"
error = "error.code"
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.errors: list[str] = []

    def record(self, error: str | None) -> None:
        with self.lock:
            self.sent += 1
            if error is not None and len(self.errors) < 50:
                self.errors.append(error)
            elif error is not None:
                self.errors.append("")


def worker(port: int, stop: threading.Event, interval: float, stats: Stats, index: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        stream = (n + index) % 2 == 0
        body = json.dumps(
            {
                "model": "soak",
                "stream": stream,
                "messages": [{"role": "user", "content": f"soak request {index} {n}, a few words"}],
            }
        )
        error = None
        try:
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=body,
                headers={"Authorization": "Bearer soak-key", "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            text = response.read().decode()
            if response.status != 200:
                error = f"status {response.status}: {text[:200]}"
            elif stream and (not text.rstrip().endswith("data: [DONE]") or '"error"' in text):
                error = f"bad stream: {text[-200:]}"
        except Exception as exc:  # a transport failure is an error too
            error = f"{type(exc).__name__}: {exc}"
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        stats.record(error)
        n += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS baseline")
    parser.add_argument("--binary", default=str(REPO / "target" / "release" / "lm-proxy-server"))
    parser.add_argument("--report", default=str(REPO / "bench" / "SOAK.md"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="lm-proxy-soak-"))
    log_path = workdir / "requests.log"
    config = workdir / "config.toml"
    config.write_text(CONFIG.format(log=log_path))
    proc = subprocess.Popen(
        [args.binary, "--config", str(config), "--env", "", "--no-debug"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "warn,lm_proxy::cli=info"},
    )
    port_holder: list[int] = []
    ready = threading.Event()
    stderr_tail: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_tail.append(line.rstrip())
            del stderr_tail[:-200]
            if not port_holder and (m := READY.search(line)):
                port_holder.append(int(m.group(1)))
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(30) or not port_holder:
        proc.kill()
        print("gateway did not start:\n" + "\n".join(stderr_tail), file=sys.stderr)
        return 1
    port = port_holder[0]

    stats = Stats()
    stop = threading.Event()
    interval = args.workers / args.rate
    threads = [
        threading.Thread(target=worker, args=(port, stop, interval, stats, i), daemon=True)
        for i in range(args.workers)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    samples: list[tuple[float, int]] = []
    duration = args.minutes * 60
    try:
        while (elapsed := time.monotonic() - started) < duration:
            samples.append((elapsed, rss_kib(proc.pid)))
            time.sleep(5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    samples.append((time.monotonic() - started, rss_kib(proc.pid)))
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)

    baseline = next((r for t, r in samples if t >= args.warmup), samples[-1][1])
    after = [r for t, r in samples if t >= args.warmup]
    peak_after = max(after) if after else baseline
    growth = (peak_after - baseline) / baseline * 100 if baseline else 0.0
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    logged_errors = sum(1 for line in lines if json.loads(line).get("error") is not None)

    checks = {
        "zero errors": not stats.errors and logged_errors == 0,
        "RSS growth after warm-up <= 10 %": growth <= 10.0,
        "one log line per request": len(lines) == stats.sent,
        "clean exit on SIGTERM": code == 0,
    }
    rate = stats.sent / duration
    report = [
        "# Soak test",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}",
        f"- command: `python3 bench/soak.py --minutes {args.minutes:g} --rate {args.rate:g} "
        f"--workers {args.workers}`",
        f"- duration: {duration:.0f} s, requests: {stats.sent} ({rate:.0f}/s), half streamed",
        f"- errors: {len(stats.errors)} (answers), {logged_errors} (log entries)",
        f"- RSS: baseline after {args.warmup:.0f} s warm-up {baseline / 1024:.1f} MiB, "
        f"peak after warm-up {peak_after / 1024:.1f} MiB, growth {growth:+.1f} %",
        f"- log lines: {len(lines)} for {stats.sent} requests; exit code {code}",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in checks.items()),
        "",
        "RSS samples (s, MiB): "
        + ", ".join(f"{t:.0f}:{r / 1024:.1f}" for t, r in samples[:: max(1, len(samples) // 24)]),
        "",
    ]
    if stats.errors:
        report += ["First errors:", "", *(f"- {e}" for e in stats.errors[:10] if e), ""]
    Path(args.report).write_text("\n".join(report))
    print("\n".join(report))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
