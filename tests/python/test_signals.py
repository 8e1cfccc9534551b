"""Signals under Python: Ctrl+C (SIGINT) and SIGTERM stop the package's command line
and `lm_proxy.serve()` within 2 seconds, with an open stream from a Python generator
ended properly (an error chunk and `[DONE]` for the client, the generator closed so
its `finally` runs) and exit status 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    READY_LINE,
    STARTUP_TIMEOUT_S,
    GatewayProcess,
    console_script,
    import_lm_proxy,
)

import_lm_proxy()

# A generous bound that still tells "stopped" from "waited": the stream test's
# stream never ends, so only its 1 s grace stops it, and the idle tests run with a
# 30 s grace (the default), which a server with nothing open must not wait out.
STOP_WITHIN_S = 15.0
IDLE_GRACE = "shutdown_grace_seconds = 30"

SLOW_STREAM = """
import asyncio
import os
import pathlib


async def slow(messages, **params):
    try:
        i = 0
        while True:
            yield f"tick{i} "
            i += 1
            await asyncio.sleep(0.05)
    finally:
        pathlib.Path(os.environ["LMP_MARKER"]).write_text("closed")
"""

CONFIG = """
host = "127.0.0.1"
port = 0
shutdown_grace_seconds = 1
encryption_key = "signal-tests"

[api_key_check]
class = "lm_proxy.api_key_check.AllowAll"

[connections.slow]
api_type = "function"
inference_func = "slow_stream.slow"

[routing]
"*" = "slow.*"
"""


def write_files(folder: Path, *, idle: bool = False) -> Path:
    (folder / "slow_stream.py").write_text(SLOW_STREAM)
    config = folder / "config.toml"
    config.write_text(CONFIG.replace("shutdown_grace_seconds = 1", IDLE_GRACE) if idle else CONFIG)
    return config


class OpenStream:
    """A streamed chat completion read on a thread: lines as they come."""

    def __init__(self, url: str) -> None:
        self.lines: list[str] = []
        self.first_piece = threading.Event()
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()

    def _read(self, url: str) -> None:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        try:
            with (
                httpx.Client(trust_env=False, timeout=30.0) as client,
                client.stream(
                    "POST",
                    f"{url}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": "Bearer anything"},
                ) as response,
            ):
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line:
                        self.lines.append(line)
                    if "tick" in line:
                        self.first_piece.set()
        except BaseException as e:  # recorded for the test to report
            self.error = e
        finally:
            self.first_piece.set()
            self.ended.set()

    def chunks(self) -> list[dict[str, Any]]:
        return [
            json.loads(line[len("data: ") :]) for line in self.lines if line.startswith("data: {")
        ]


def stop_and_check(
    process: subprocess.Popen[str], sig: int, stream: OpenStream, marker: Path
) -> float:
    assert stream.first_piece.wait(STARTUP_TIMEOUT_S), "the stream never started"
    assert stream.error is None, stream.error
    started = time.monotonic()
    process.send_signal(sig)
    code = process.wait(timeout=25)
    elapsed = time.monotonic() - started
    assert stream.ended.wait(5), "the client's stream did not end"
    assert code == 0
    assert elapsed < STOP_WITHIN_S, f"stopped after {elapsed:.2f}s"
    # The client got a proper end: an error chunk saying why, then [DONE].
    assert stream.error is None, stream.error
    assert stream.lines[-1] == "data: [DONE]"
    last = stream.chunks()[-1]
    assert last["error"]["code"] == "server_shutting_down"
    assert last["choices"][0]["finish_reason"] == "error"
    # The generator was closed: its finally block ran.
    assert marker.read_text() == "closed"
    return elapsed


@pytest.mark.parametrize(
    ("launcher", "sig"),
    [
        ("lm-proxy-server", signal.SIGTERM),
        ("lm-proxy-server", signal.SIGINT),
        ("python -m lm_proxy", signal.SIGINT),
        ("python -m lm_proxy", signal.SIGTERM),
    ],
    ids=["script-SIGTERM", "script-SIGINT", "module-SIGINT", "module-SIGTERM"],
)
def test_command_line_stops_on_signal(
    tmp_path: Path, start_python_gateway: Any, launcher: str, sig: int
) -> None:
    config = write_files(tmp_path)
    marker = tmp_path / "marker.txt"
    gateway: GatewayProcess = start_python_gateway(
        config, launcher=launcher, cwd=tmp_path, extra_env={"LMP_MARKER": str(marker)}
    )
    stream = OpenStream(gateway.url)
    stop_and_check(gateway.process, sig, stream, marker)
    gateway.stop()
    log = gateway.stderr_text()
    assert "shutting down" in log and "stopped" in log
    assert "Traceback" not in log


def test_idle_command_line_stops_at_once(tmp_path: Path, start_python_gateway: Any) -> None:
    gateway = start_python_gateway(
        write_files(tmp_path, idle=True), cwd=tmp_path, extra_env={"LMP_MARKER": "x"}
    )
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGINT)
    assert gateway.process.wait(timeout=25) == 0
    assert time.monotonic() - started < STOP_WITHIN_S


SERVE_SCRIPT = """
import sys
import lm_proxy

lm_proxy.serve(sys.argv[1])
print("serve returned", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_returns_on_signal(tmp_path: Path, sig: int) -> None:
    config = write_files(tmp_path)
    marker = tmp_path / "marker.txt"
    script = tmp_path / "serve_it.py"
    script.write_text(textwrap.dedent(SERVE_SCRIPT))
    env = {**os.environ, "LMP_MARKER": str(marker), "RUST_LOG": "info"}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    process = subprocess.Popen(
        [sys.executable, str(script), str(config)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        url = None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            if match := READY_LINE.search(line):
                url = match.group(1)
        assert url, f"serve() did not start: {process.stderr.read()}"
        # Keep draining stderr so the child never blocks on a full pipe.
        drain = threading.Thread(target=process.stderr.read, daemon=True)
        drain.start()
        stream = OpenStream(url)
        stop_and_check(process, sig, stream, marker)
        assert process.stdout is not None
        assert process.stdout.read().strip() == "serve returned"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("launcher", ["lm-proxy-server", "python -m lm_proxy"])
def test_signal_after_requests_on_a_kept_alive_connection(
    tmp_path: Path, start_python_gateway: Any, launcher: str
) -> None:
    """Repeated: after requests whose connection the client keeps open, SIGINT or
    SIGTERM always stops the server promptly (a signal must never get lost)."""
    config = tmp_path / "config.toml"
    config.write_text(
        CONFIG.replace(
            'inference_func = "slow_stream.slow"', 'inference_func = "echo.answer"'
        ).replace("shutdown_grace_seconds = 1", IDLE_GRACE)
    )
    (tmp_path / "echo.py").write_text("async def answer(messages, **params):\n    return 'ok'\n")
    for round_ in range(6):
        gateway = start_python_gateway(config, launcher=launcher, cwd=tmp_path)
        with httpx.Client(trust_env=False, timeout=10.0) as client:
            for _ in range(3):
                response = client.post(
                    f"{gateway.url}/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": "Bearer x"},
                )
                assert response.json()["choices"][0]["message"]["content"] == "ok"
            started = time.monotonic()
            gateway.process.send_signal(signal.SIGINT if round_ % 2 else signal.SIGTERM)
            assert gateway.process.wait(timeout=25) == 0
            assert time.monotonic() - started < STOP_WITHIN_S


def test_command_line_takes_sigint_even_if_started_ignoring_it(
    tmp_path: Path, start_python_gateway: Any
) -> None:
    """Started from a shell script with `&`, a process inherits SIGINT ignored; the
    command line still stops on it, as the native binary does."""
    ignore_then_exec = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    script = console_script("lm-proxy-server")[0]
    gateway = GatewayProcess(
        [sys.executable, "-c", ignore_then_exec, script],
        write_files(tmp_path, idle=True),
        cwd=tmp_path,
        extra_env={"LMP_MARKER": str(tmp_path / "marker.txt")},
    )
    try:
        gateway.wait_ready()
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGINT)
        assert gateway.process.wait(timeout=25) == 0
        assert time.monotonic() - started < STOP_WITHIN_S
    finally:
        gateway.stop()


# --------------------------------------------------------------- request log lines

ECHO_CONFIG = CONFIG.replace(
    'inference_func = "slow_stream.slow"', 'inference_func = "echo.answer"'
)


def write_echo_files(folder: Path) -> Path:
    (folder / "echo.py").write_text("async def answer(messages, **params):\n    return 'ok'\n")
    config = folder / "config.toml"
    config.write_text(ECHO_CONFIG)
    return config


def request_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "lm_proxy::request" in line]


@pytest.mark.parametrize("launcher", ["lm-proxy-server", "python -m lm_proxy"])
def test_command_line_writes_every_request_line_by_exit(
    tmp_path: Path, start_python_gateway: Any, launcher: str
) -> None:
    """Request lines are written to stderr in batches; when the command line stops
    on SIGTERM, every one of them is out, exactly once."""
    gateway = start_python_gateway(write_echo_files(tmp_path), launcher=launcher, cwd=tmp_path)
    count = 25
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        for _ in range(count):
            response = client.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": "Bearer x"},
            )
            assert response.status_code == 200
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=10) == 0
    gateway.stop()  # joins the stderr reader, which has seen EOF
    assert len(request_lines(gateway.lines)) == count, gateway.stderr_text()


LIBRARY_SCRIPT = """
import sys

import httpx
import lm_proxy

server = lm_proxy.Server(sys.argv[1])
with httpx.Client(trust_env=False, timeout=10.0) as client:
    for _ in range(int(sys.argv[2])):
        response = client.post(
            server.url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer x"},
        )
        response.raise_for_status()
if sys.argv[3] == "stop":
    server.stop()
    print("after stop", file=sys.stderr, flush=True)
# "exit": leave with the server running; the package stops it at interpreter exit.
"""


@pytest.mark.parametrize("how", ["stop", "exit"])
def test_library_server_writes_every_request_line(tmp_path: Path, how: str) -> None:
    """`Server.stop()` returns once the server's request lines are on stderr; a
    program that exits with its server running gets them written at exit too."""
    config = write_echo_files(tmp_path)
    script = tmp_path / "library_server.py"
    script.write_text(LIBRARY_SCRIPT)
    env = {**os.environ, "RUST_LOG": "info"}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    count = 25
    result = subprocess.run(
        [sys.executable, str(script), str(config), str(count), how],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    if how == "stop":
        lines = lines[: lines.index("after stop")]
    assert len(request_lines(lines)) == count, result.stderr
