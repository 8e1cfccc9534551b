#!/usr/bin/env python3
"""Run every benchmark scenario in one go and write bench/RESULTS.md.

For each scenario, the same load (wrk, HTTP/1.1 keep-alive) goes to:
  direct     the mock upstream itself (bench-upstream), no proxy at all;
  floor      bench-floor-proxy: a do-nothing proxy built the usual way on the same
             crates (axum/hyper, reqwest, tokio's multi-threaded runtime) that
             forwards the bytes (OpenAI scenarios only);
  nginx      nginx as a plain reverse proxy to the mock, when nginx is installed
             (OpenAI scenarios only);
  lm-proxy   the release build of this project (target/release/lm-proxy-server);
  reference  the Python lm-proxy from PyPI, when installed in bench/.venv-ref;
  litellm    the LiteLLM proxy, when installed in bench/.venv-litellm;
and, for the Python-extension scenario, this project's `lm_proxy` Python package
(`python -m lm_proxy`) when the installed package accepts Python extensions.

Every server is started here, waited on through its health endpoint (polling, no
fixed sleeps), restarted for each scenario (so peak RSS is per scenario), and
stopped at the end, also on Ctrl+C. Peak RSS is sampled from /proc/PID/status
(VmRSS of the process and its children, every 20 ms) while the load runs.

Standard library only. Usage: bench/run.sh [options] (see --help).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
# The release binaries; BENCH_BIN_DIR names another folder (bench/device.sh's kit).
BIN_DIR = Path(os.environ.get("BENCH_BIN_DIR") or ROOT / "target" / "release")
PROXY_BIN = BIN_DIR / "lm-proxy-server"
# A second lm-proxy build (`--compare PATH`, target `lm-proxy-b`), run with the same
# config and taking turns with the first wherever `lm-proxy` runs: two builds
# compared in one run on one machine (e.g. bench/pgo.sh's against the plain one).
COMPARED_BIN: Path | None = None
UPSTREAM_BIN = BIN_DIR / "bench-upstream"
FLOOR_BIN = BIN_DIR / "bench-floor-proxy"
REF_VENV = BENCH / ".venv-ref"
LITELLM_VENV = BENCH / ".venv-litellm"

KEY = "bench-key"
LITELLM_KEY = "sk-bench-key"
CHUNKS = 20
PROMPT = [{"role": "user", "content": "Hello! Please answer with twenty words."}]
# A sentence as RAG applications embed it (a chunk of a document).
EMBEDDING_INPUT = "The gateway checks virtual API keys, routes model names and records usage."
# What an agent client sends along: 20 function tools with JSON schemas (about 11 KB).
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"directory_lookup_{i}",
            "description": "Looks up records in the company directory by several criteria "
            "and returns the matching entries.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "free text"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                    "fields": {
                        "type": "array",
                        "items": {
                            "type": "string",
                            "enum": ["name", "email", "phone", "team", "office"],
                        },
                    },
                    "filters": {
                        "type": "object",
                        "properties": {"team": {"type": "string"}, "office": {"type": "string"}},
                    },
                },
                "required": ["query"],
            },
        },
    }
    for i in range(20)
]


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str
    title: str
    stream: bool
    model: str
    conns: int
    threads: int = 2
    # Servers that run it, in the order they take turns (see TARGETS).
    targets: tuple[str, ...] = ("direct", "lm-proxy", "reference", "litellm")
    # lm-proxy (and reference) config variant: default, python_ext, json_logger, metrics_off.
    variant: str = "default"
    # Scenario whose request the direct run sends (a variant of that scenario).
    baseline: str | None = None
    # Upstream wire format for the direct run.
    direct_api: str = "openai"
    timeout_s: int = 10
    note: str = ""
    # Why the floor proxy and nginx do not run here (when they do not).
    no_floor: str = ""
    # Request members besides model, messages and stream (sent to every target).
    extra: dict | None = None
    # The OpenAI door the requests go to: "chat" (/v1/chat/completions, a chat body)
    # or "embeddings" (/v1/embeddings, an `input` body).
    door: str = "chat"

    @property
    def path(self) -> str:
        return "/v1/embeddings" if self.door == "embeddings" else "/v1/chat/completions"

    def body(self) -> dict:
        """The request every target gets (the direct run of an OpenAI scenario too)."""
        if self.door == "embeddings":
            body = {"model": self.model, "input": EMBEDDING_INPUT}
        else:
            body = {"model": self.model, "messages": PROMPT}
        body.update(self.extra or {})
        if self.stream:
            body["stream"] = True
        return body


SHARED_NOTE = (
    "`lm-proxy` serves on one thread per CPU, each with its own runtime and listening socket "
    "(the native binary's default); `lm-proxy, shared runtime` is the same binary with "
    "`--threads 0`: one multi-threaded work-stealing tokio runtime, as the Python package serves"
)
# The three scenarios every server is compared in.
EVERY_SERVER = (
    "direct",
    "floor",
    "nginx",
    "nginx-log",
    "lm-proxy",
    "lm-proxy-shared",
    "reference",
    "litellm",
)
SCENARIOS = [
    Scenario(
        "latency-c1",
        "Non-streamed, concurrency 1 (latency)",
        stream=False,
        model="bench",
        conns=1,
        threads=1,
        targets=EVERY_SERVER,
        note=SHARED_NOTE,
    ),
    Scenario(
        "throughput-c64",
        "Non-streamed, concurrency 64 (throughput)",
        stream=False,
        model="bench",
        conns=64,
        targets=EVERY_SERVER,
        note=SHARED_NOTE,
    ),
    Scenario(
        "stream-c64",
        f"Streamed, {CHUNKS} chunks, concurrency 64",
        stream=True,
        model=f"bench-s{CHUNKS}",
        conns=64,
        targets=EVERY_SERVER,
        note=SHARED_NOTE,
    ),
    Scenario(
        "embeddings-c64",
        "Embeddings, one input, 1,536 dimensions as base64 (the openai SDK's default), "
        "concurrency 64",
        stream=False,
        model="bench-embed",
        conns=64,
        targets=("direct", "floor", "nginx", "lm-proxy"),
        door="embeddings",
        extra={"encoding_format": "base64"},
        note="POST /v1/embeddings to an OpenAI-compatible connection, as the openai Python "
        "SDK sends it (`encoding_format` base64 unless the caller asks for floats; an 8 KB "
        "answer): lm-proxy checks the answer is JSON, reads its usage and passes it on",
    ),
    Scenario(
        "embeddings-float-c64",
        "Embeddings, one input, 1,536 floats (a 21 KB answer), concurrency 64",
        stream=False,
        model="bench-embed",
        conns=64,
        targets=("direct", "floor", "nginx", "lm-proxy"),
        door="embeddings",
        extra={"encoding_format": "float"},
        note="as embeddings-c64 with `encoding_format` float: every number of the answer "
        "is checked by lm-proxy's one pass over it",
    ),
    Scenario(
        "tools-c64",
        "Non-streamed with 20 tools in the request (11 KB, as agent clients send), concurrency 64",
        stream=False,
        model="bench",
        conns=64,
        targets=("direct", "floor", "nginx", "lm-proxy"),
        extra={"tools": TOOLS, "temperature": 0.2, "max_tokens": 256},
        note="the mock ignores the tools; lm-proxy checks them as it reads the request "
        "and, with no handler or JSON logger configured, sends the client's bytes on "
        "(before 4e15f5b it parsed them and wrote them again); the floor and nginx "
        "forward the bytes",
    ),
    Scenario(
        "streams-1000",
        f"1,000 concurrent streams, {CHUNKS} chunks 10 ms apart (memory, errors)",
        stream=True,
        model=f"bench-s{CHUNKS}-d10",
        conns=1000,
        targets=("direct", "floor", "nginx", "lm-proxy", "reference", "litellm"),
        timeout_s=30,
        note="wrk counts a request when its stream has ended; streams still open when "
        "the run stops are not counted (the peers' streams take longer than the run)",
    ),
    Scenario(
        "anthropic-stream-c64",
        f"Anthropic-backed stream, {CHUNKS} chunks, concurrency 64 (translation cost)",
        stream=True,
        model=f"claude-bench-s{CHUNKS}",
        conns=64,
        direct_api="anthropic",
        note="direct = the same stream in Anthropic's own format from the mock; "
        "the proxies translate it to OpenAI chunks",
        no_floor="they forward bytes as they are and cannot translate an Anthropic stream",
    ),
    Scenario(
        "python-ext-c64",
        "Python validator + Python `before` handler, non-streamed, concurrency 64",
        stream=False,
        model="bench",
        conns=64,
        targets=("lm-proxy-python", "reference"),
        variant="python_ext",
        baseline="throughput-c64",
        note="bench/bench_ext.py: `validate` as api_key_check, `tag_request` in `before`",
        no_floor="this scenario measures Python code run by the proxy; throughput-c64 "
        "has both on the same request",
    ),
    Scenario(
        "json-logger-c64",
        "JSON logger on (BaseLogger + JsonLogWriter), non-streamed, concurrency 64",
        stream=False,
        model="bench",
        conns=64,
        targets=("floor", "lm-proxy-default", "lm-proxy", "reference"),
        variant="json_logger",
        baseline="throughput-c64",
    ),
    Scenario(
        "ledger-sqlite-c64",
        "Usage ledger on (SQLite) with a group budget far from spent: throughput-c64",
        stream=False,
        model="bench",
        conns=64,
        targets=("lm-proxy-default", "lm-proxy"),
        variant="ledger_sqlite",
        baseline="throughput-c64",
        note="`lm-proxy (default config)` has no ledger: the ratio between them is the "
        "ledger's cost (issue 17: within 10 %)",
        no_floor="this scenario measures the ledger against the same binary without it",
    ),
    Scenario(
        "ledger-postgres-c64",
        "Usage ledger on (PostgreSQL, a throwaway local cluster) with a group budget "
        "far from spent: throughput-c64",
        stream=False,
        model="bench",
        conns=64,
        targets=("lm-proxy-default", "lm-proxy"),
        variant="ledger_postgres",
        baseline="throughput-c64",
        note="the cluster runs on the same CPUs as everything else",
        no_floor="this scenario measures the ledger against the same binary without it",
    ),
    Scenario(
        "metrics-off-c64",
        "Cost of /metrics: throughput-c64 with `[metrics] enabled = false`",
        stream=False,
        model="bench",
        conns=64,
        targets=("floor", "lm-proxy-default", "lm-proxy"),
        variant="metrics_off",
        baseline="throughput-c64",
    ),
    Scenario(
        "metrics-off-stream-c64",
        "Cost of /metrics: stream-c64 with `[metrics] enabled = false`",
        stream=True,
        model=f"bench-s{CHUNKS}",
        conns=64,
        targets=("floor", "lm-proxy-default", "lm-proxy"),
        variant="metrics_off",
        baseline="stream-c64",
    ),
]

VARIANT_TITLES = {
    "ledger_sqlite": "ledger on, SQLite",
    "ledger_postgres": "ledger on, PostgreSQL",
    "python_ext": "Python extensions",
    "json_logger": "JSON logger",
    "metrics_off": "metrics off",
}
PEERS = ("reference", "litellm")
OURS = ("lm-proxy", "lm-proxy-b", "lm-proxy-shared", "lm-proxy-default", "lm-proxy-python")
# Proxies without application logic, run in every round like the mock and lm-proxy.
BARE = ("floor", "nginx", "nginx-log")


@functools.cache
def nginx_bin() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )


@functools.cache
def nginx_version() -> str:
    """`1.22.1` from `nginx -v` (which prints to stderr), or "not installed"."""
    binary = nginx_bin()
    if not binary:
        return "not installed"
    return version_of([binary, "-v"]).rsplit("/", 1)[-1]


def title_of(target: str, scenario: Scenario) -> str:
    variant = VARIANT_TITLES.get(scenario.variant)
    nginx = ".".join(nginx_version().split(".")[:2])
    titles = {
        "direct": "direct (mock)",
        "floor": "floor: do-nothing proxy, axum + reqwest (bench-floor-proxy)",
        "nginx": f"nginx {nginx} reverse proxy (C, no app logic)",
        "nginx-log": f"nginx {nginx}, with a buffered access log (a line a request, as lm-proxy)",
        "lm-proxy": f"lm-proxy ({variant})" if variant else "lm-proxy",
        "lm-proxy-b": f"lm-proxy B ({COMPARED_BIN})",
        "lm-proxy-shared": "lm-proxy, shared runtime (--threads 0)",
        "lm-proxy-default": "lm-proxy (default config)",
        "lm-proxy-python": "lm-proxy Python package",
        "reference": "reference Python lm-proxy"
        + (f" ({variant})" if variant and scenario.variant != "metrics_off" else ""),
        "litellm": "LiteLLM",
    }
    return titles[target]


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Server:
    """A process this script started (in its own process group), with its log file."""

    running: typing.ClassVar[list[Server]] = []

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        health: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.name, self.port, self.health = name, port, health
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd or ROOT,
            # Its own process group (so that stop() reaches its workers) but not its
            # own session: with the kernel's autogroup scheduling
            # (/proc/sys/kernel/sched_autogroup_enabled), each session gets an equal
            # share of the CPU when all are busy, which capped the proxy (the busiest
            # process) at the share of the load generator or the mock.
            process_group=0,
        )
        Server.running.append(self)

    def wait_ready(self, timeout: float, any_status: bool = False) -> None:
        """Poll the health endpoint until it answers 200 (any status with `any_status`),
        or the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.last_lines()}"
                )
            try:
                status, _ = http_get(self.port, self.health, timeout=1.0)
                if status == 200 or any_status:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s: {self.last_lines()}")

    def last_lines(self, n: int = 3) -> str:
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(line.strip() for line in lines[-n:])
        return ""

    def pids(self) -> list[int]:
        """The process and its descendants."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo.extend(int(c) for c in f.read().split())
        return out

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time of the process tree so far: (user, kernel) seconds."""
        user = kernel = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user, kernel = user + int(fields[11]), kernel + int(fields[12])
        ticks = os.sysconf("SC_CLK_TCK")
        return user / ticks, kernel / ticks

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        if self in Server.running:
            Server.running.remove(self)


def stop_all() -> None:
    for server in list(reversed(Server.running)):
        server.stop()
    for stop in reversed(CLEANUPS):
        stop()
    CLEANUPS.clear()


CLEANUPS: list[typing.Callable[[], None]] = []


def postgres_bindir() -> Path:
    """initdb and pg_ctl: on PATH, or in Debian's versioned folder."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (bindir / "pg_ctl").exists():
            return bindir
    raise SystemExit("ledger-postgres-c64 needs PostgreSQL (apt-get install postgresql)")


@functools.cache
def postgres_url(work: Path) -> str:
    """A throwaway cluster for this run (stopped by stop_all), as a URL."""
    bindir = postgres_bindir()
    data = work / "pg"
    port = free_port()
    # PostgreSQL refuses to run as root: the cluster belongs to `nobody` then.
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "nobody", "--"]
        data.mkdir()
        shutil.chown(data, "nobody")
        os.chmod(work, 0o755)
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "bench", "--auth=trust"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "start"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    CLEANUPS.append(
        lambda: subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
        )
    )
    return f"postgres://bench@127.0.0.1:{port}/postgres"


class RssSampler(threading.Thread):
    """Largest RSS seen while running (every 20 ms)."""

    def __init__(self, server: Server):
        super().__init__(daemon=True)
        self.server, self.peak, self.done = server, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.server.rss_kib())
            self.done.wait(0.02)

    def finish(self) -> int:
        self.done.set()
        self.join()
        self.peak = max(self.peak, self.server.rss_kib())
        return self.peak


# --------------------------------------------------------------------------- configs


def lm_proxy_config(port: int, upstream: int, variant: str, work: Path) -> Path:
    lines = [
        'host = "127.0.0.1"',
        f"port = {port}",
        'encryption_key = "bench-encryption-key"',
    ]
    if variant == "python_ext":
        lines += ['api_key_check = "bench_ext.validate"', 'before = ["bench_ext.tag_request"]']
    lines += [
        "[connections.mock]",
        'api_type = "open_ai"',
        f'api_base = "http://127.0.0.1:{upstream}/v1"',
        'api_key = "upstream-key"',
        "[connections.claude]",
        'api_type = "anthropic"',
        f'api_base = "http://127.0.0.1:{upstream}"',
        'api_key = "upstream-key"',
        "[routing]",
        '"claude*" = "claude.*"',
        '"*" = "mock.*"',
        "[groups.default]",
        f'api_keys = ["{KEY}"]',
    ]
    if variant in ("ledger_sqlite", "ledger_postgres"):
        # A budget far from spent: every request reserves and settles it, which is
        # the request path's only contact with the ledger besides its row.
        lines.append('budget = { usd = 1000000, period = "month" }')
        url = f"sqlite://{work / 'ledger.db'}" if variant == "ledger_sqlite" else postgres_url(work)
        lines += ["[database]", f'url = "{url}"']
    if variant == "json_logger":
        lines += [
            "[[loggers]]",
            'class = "lm_proxy.loggers.BaseLogger"',
            "[loggers.log_writer]",
            # The reference's module path; lm-proxy accepts it and the log_writers form.
            'class = "lm_proxy.loggers.JsonLogWriter"',
            f'file_name = "{work / "json.log"}"',
        ]
    if variant == "metrics_off":
        lines += ["[metrics]", "enabled = false"]
    path = work / f"lm-proxy-{variant}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def nginx_config(
    port: int, upstream: int, work: Path, access_log: bool = False, workers: int | None = None
) -> Path:
    """A plain reverse proxy to the mock: no logging, upstream keep-alive, no buffering.

    With `access_log` (target `nginx-log`), a line per request into a file, written
    in batches as lm-proxy writes its request lines (64 KB buffer, flushed at least
    every 100 ms): the same job as lm-proxy's default config, which logs every
    request. Everything it writes (pid, temp directories, the access log) stays in
    its own directory under the run's work dir; the error log is stderr (the
    server's log file here). `workers`: one per CPU unless given (bench/scale_cores.sh
    gives the cores it pins nginx to)."""
    prefix = work / f"nginx-{port}"
    prefix.mkdir()
    lines = [f"worker_processes {workers or os.cpu_count() or 1};", "daemon off;"]
    if os.geteuid() == 0:
        # Workers as an unprivileged user (nginx's compiled-in default group, "nobody",
        # does not exist everywhere); request bodies stay in memory (below), never in
        # its temp files, which that user could not write.
        import grp
        import pwd

        nobody = pwd.getpwnam("nobody")
        lines.append(f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};")
    lines += [
        f"pid {prefix / 'nginx.pid'};",
        "error_log stderr warn;",
        # Two connections per proxied request (client and upstream), up to 1,000 clients.
        "events { worker_connections 4096; }",
        "http {",
        (
            f"    access_log {prefix / 'access.log'} combined buffer=64k flush=100ms;"
            if access_log
            else "    access_log off;"
        ),
        # Never close a client or upstream connection after N requests (the default
        # 1,000 would make wrk reconnect; the other servers keep connections open).
        "    keepalive_requests 1000000;",
        # Request bodies up to 64 KB in memory, as the other servers keep them (the
        # default 8 KB sends tools-c64's 11 KB body to a temp file).
        "    client_body_buffer_size 64k;",
    ]
    # The temp paths of the modules built in, so that nothing is created under /var.
    configure = version_of_all([nginx_bin() or "nginx", "-V"])
    for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        option = "client-body" if module == "client_body" else module
        if f"--http-{option}-temp-path" in configure and (
            f"--without-http_{module}_module" not in configure
        ):
            lines.append(f"    {module}_temp_path {prefix / module};")
    lines += [
        "    upstream mock {",
        f"        server 127.0.0.1:{upstream};",
        # Idle upstream connections kept: more than the most clients at once
        # (bench/scale_cores.sh's 256), so that none is closed and opened again.
        "        keepalive 512;",
        "        keepalive_requests 1000000;",
        "    }",
        "    server {",
        f"        listen 127.0.0.1:{port};",
        "        location / {",
        "            proxy_pass http://mock;",
        "            proxy_http_version 1.1;",
        '            proxy_set_header Connection "";',
        "            proxy_buffering off;",
        "        }",
        "    }",
        "}",
    ]
    path = prefix / "nginx.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def litellm_config(upstream: int, models: list[str], work: Path) -> Path:
    lines = ["model_list:"]
    for model in models:
        if model.startswith("claude"):
            target, base = f"anthropic/{model}", f"http://127.0.0.1:{upstream}"
        else:
            target, base = f"openai/{model}", f"http://127.0.0.1:{upstream}/v1"
        lines += [
            f"  - model_name: {model}",
            "    litellm_params:",
            f"      model: {target}",
            f"      api_base: {base}",
            "      api_key: upstream-key",
        ]
    lines += [
        "general_settings:",
        f"  master_key: {LITELLM_KEY}",
        "litellm_settings:",
        "  drop_params: true",
        "  telemetry: false",
    ]
    path = work / "litellm.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- load


WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,' ..
    '"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,' ..
    '"p50":%%d,"p90":%%d,"p99":%%d,"mean":%%.1f,"max":%%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


@dataclass
class Request:
    port: int
    path: str
    body: dict
    headers: dict[str, str]


def wrk(req: Request, conns: int, threads: int, seconds: float, timeout_s: int, work: Path) -> dict:
    script = work / "wrk.lua"
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in req.headers.items())
    script.write_text(WRK_SCRIPT % {"body": json.dumps(req.body), "headers": headers})
    argv = [
        "wrk",
        f"-t{min(threads, conns)}",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        f"{timeout_s}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{req.port}{req.path}",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            result = json.loads(line[len("BENCHJSON ") :])
            result["errors"] = sum(
                result[k] for k in ("connect", "read", "write", "status", "timeout")
            )
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")


def check_answer(req: Request, stream: bool) -> str | None:
    """One request before the load: is the answer what the scenario expects?"""
    conn = http.client.HTTPConnection("127.0.0.1", req.port, timeout=30)
    try:
        conn.request(
            "POST",
            req.path,
            json.dumps(req.body),
            {"Content-Type": "application/json", **req.headers},
        )
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
    finally:
        conn.close()
    if response.status != 200:
        return f"HTTP {response.status}: {body[:300]}"
    if not stream:
        data = json.loads(body)
        ok = "choices" in data or "content" in data or "data" in data
        return None if ok else f"unexpected answer: {body[:300]}"
    if "anthropic" in req.path or req.path.endswith("/messages"):
        return None if "message_stop" in body else f"incomplete stream: {body[-300:]}"
    events = [e[len("data: ") :] for e in body.split("\n\n") if e.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return f"stream does not end with [DONE]: {body[-300:]}"
    text = ""
    for event in events[:-1]:
        chunk = json.loads(event)
        if chunk.get("error"):
            return f"error chunk: {event[:300]}"
        for choice in chunk.get("choices", []):
            text += (choice.get("delta") or {}).get("content") or ""
    words = len(text.split())
    return None if words == CHUNKS else f"expected {CHUNKS} words, got {words}: {text[:100]!r}"


# --------------------------------------------------------------------------- targets


@dataclass
class Result:
    scenario: str
    target: str
    status: str = "ok"  # ok | not run | failed
    reason: str = ""
    rps: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    errors: int = 0
    requests: int = 0
    peak_rss_kib: int = 0
    idle_rss_kib: int = 0
    cpu_us_per_req: float = 0.0
    # The user-space part of it (the rest is the kernel's: system calls, TCP).
    cpu_user_us_per_req: float = 0.0
    raw: dict = field(default_factory=dict)
    # Over the repeated runs: how many, and the range of requests/s.
    runs: int = 1
    rps_min: float = 0.0
    rps_max: float = 0.0


def python_package(python: str) -> str:
    """Version and install time of this project's lm_proxy package for `python`."""
    code = (
        "import datetime, os, lm_proxy, lm_proxy._lm_proxy as m; "
        "t = datetime.datetime.fromtimestamp(os.path.getmtime(m.__file__), datetime.UTC); "
        "print(lm_proxy.__version__, 'installed', t.strftime('%Y-%m-%d %H:%M UTC'))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "not installed"


def python_ext_support(python: str) -> str | None:
    """None if `python` has this project's lm_proxy package; else why not."""
    probe = subprocess.run(
        [python, "-c", "import lm_proxy, lm_proxy._lm_proxy as m; print(lm_proxy.__file__)"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"this project's lm_proxy package is not installed for {python}"
    return None


def median_run(runs: list[Result], by_latency: bool) -> Result:
    """The middle run by requests/s (by p50 for latency scenarios), with the range."""
    ok = [r for r in runs if r.status == "ok"]
    if not ok:
        return runs[-1]
    ok.sort(key=(lambda r: r.p50_us) if by_latency else (lambda r: r.rps))
    mid = ok[(len(ok) - 1) // 2] if by_latency else ok[len(ok) // 2]
    mid.runs = len(ok)
    mid.rps_min = min(r.rps for r in ok)
    mid.rps_max = max(r.rps for r in ok)
    mid.raw["p50_runs"] = sorted(r.p50_us for r in ok)
    mid.raw["rps_runs"] = sorted(r.rps for r in ok)
    return mid


def start_target(
    target: str,
    scenario: Scenario,
    upstream: int,
    work: Path,
    log_dir: Path,
    args: argparse.Namespace,
) -> tuple[Server, Request]:
    port = free_port()
    tag = f"{scenario.name}-{target}"
    body = scenario.body()
    path = scenario.path
    auth = {"Authorization": f"Bearer {KEY}"}
    if target == "floor":
        argv = [
            str(FLOOR_BIN),
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{upstream}/v1",
        ]
        server = Server(tag, argv, port, "/health", log_dir)
        server.wait_ready(30)
        return server, Request(port, path, body, {})
    if target in ("nginx", "nginx-log"):
        config = nginx_config(port, upstream, work, access_log=target == "nginx-log")
        # In the foreground (daemon off in the config): the master is this script's
        # child and its workers are the master's children, so the process-tree
        # sampling sees them all. -e: the error log before the config is read.
        argv = [nginx_bin() or "nginx", "-c", str(config), "-p", str(config.parent), "-e", "stderr"]
        server = Server(tag, argv, port, "/health", log_dir)
        server.wait_ready(30)
        return server, Request(port, path, body, {})
    if target in OURS:
        variant = "default" if target == "lm-proxy-default" else scenario.variant
        config = lm_proxy_config(port, upstream, variant, work)
        env = {"PYTHONPATH": str(BENCH)}
        if target == "lm-proxy-python":
            argv = [args.ext_python, "-m", "lm_proxy", "--config", str(config), "--env", ""]
        else:
            binary = COMPARED_BIN if target == "lm-proxy-b" else PROXY_BIN
            argv = [str(binary), "--config", str(config), "--env", ""]
        if target == "lm-proxy-shared":
            argv += ["--threads", "0"]
        server = Server(tag, argv, port, "/health", log_dir, env=env)
        server.wait_ready(30)
        return server, Request(port, path, body, auth)
    if target == "reference":
        config = lm_proxy_config(port, upstream, scenario.variant, work)
        # The reference reads the same config keys; it has no [metrics] table.
        text = config.read_text().replace("[metrics]\nenabled = false\n", "")
        config.write_text(text)
        argv = [str(REF_VENV / "bin" / "lm-proxy"), "--config", str(config), "--env", ""]
        server = Server(tag, argv, port, "/v1/models", log_dir, env={"PYTHONPATH": str(BENCH)})
        server.wait_ready(60, any_status=True)
        return server, Request(port, "/v1/chat/completions", body, auth)
    if target == "litellm":
        models = sorted({s.model for s in SCENARIOS})
        config = litellm_config(upstream, models, work)
        argv = [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            # One process per CPU (LiteLLM's advice for production); Python is
            # single-threaded per process.
            "--num_workers",
            str(os.cpu_count() or 1),
        ]
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "NO_DOCS": "True",
        }
        server = Server(tag, argv, port, "/health/liveliness", log_dir, env=env)
        server.wait_ready(180)
        return server, Request(
            port, "/v1/chat/completions", body, {"Authorization": f"Bearer {LITELLM_KEY}"}
        )
    raise ValueError(target)


def direct_request(scenario: Scenario, upstream: int) -> Request:
    if scenario.direct_api == "anthropic":
        body = {"model": scenario.model, "max_tokens": 256, "messages": PROMPT}
        if scenario.stream:
            body["stream"] = True
        return Request(
            upstream,
            "/v1/messages",
            body,
            {"x-api-key": "upstream-key", "anthropic-version": "2023-06-01"},
        )
    return Request(
        upstream, scenario.path, scenario.body(), {"Authorization": "Bearer upstream-key"}
    )


def available(target: str, args: argparse.Namespace) -> str | None:
    """None if the target can run here; else why not."""
    if target == "reference" and not (REF_VENV / "bin" / "lm-proxy").exists():
        return "not installed (bench/run.sh --install-peers puts it in bench/.venv-ref)"
    if target == "litellm" and not (LITELLM_VENV / "bin" / "litellm").exists():
        return "not installed (bench/run.sh --install-peers puts it in bench/.venv-litellm)"
    if target == "lm-proxy-python":
        return python_ext_support(args.ext_python)
    if target == "floor" and not FLOOR_BIN.exists():
        return f"missing {FLOOR_BIN.relative_to(ROOT)} (cargo build --release --bins)"
    if target in ("nginx", "nginx-log") and not nginx_bin():
        return "not installed (bench/run.sh --install-peers runs apt-get install nginx-light)"
    return None


def run_one(
    scenario: Scenario,
    target: str,
    upstream_port: int,
    upstream: Server,
    work: Path,
    log_dir: Path,
    args: argparse.Namespace,
) -> Result:
    result = Result(scenario.name, target)
    server = None
    try:
        if target == "direct":
            req, measured = direct_request(scenario, upstream_port), upstream
        else:
            server, req = start_target(target, scenario, upstream_port, work, log_dir, args)
            measured = server
            result.idle_rss_kib = server.rss_kib()
        problem = check_answer(req, scenario.stream)
        if problem:
            raise RuntimeError(f"wrong answer: {problem}")
        # Warm-up (connection pools, lazy initialisation), not recorded.
        wrk(req, scenario.conns, scenario.threads, args.warmup, scenario.timeout_s, work)
        sampler = RssSampler(measured)
        sampler.start()
        cpu_before = measured.cpu_seconds()
        out = wrk(req, scenario.conns, scenario.threads, args.duration, scenario.timeout_s, work)
        cpu_after = measured.cpu_seconds()
        result.peak_rss_kib = sampler.finish()
        result.rps, result.p50_us, result.p99_us = out["rps"], out["p50"], out["p99"]
        result.errors, result.requests, result.raw = out["errors"], out["requests"], out
        per_request = 1e6 / max(out["requests"], 1)
        result.cpu_us_per_req = (sum(cpu_after) - sum(cpu_before)) * per_request
        result.cpu_user_us_per_req = (cpu_after[0] - cpu_before[0]) * per_request
        if target in OURS and not (target == "lm-proxy" and scenario.variant == "metrics_off"):
            # wrk cuts the streams still open when it stops; the gauge must come back
            # to 0 once the proxy has noticed (a leak would keep it up).
            deadline = time.monotonic() + 15
            metrics = proxy_metrics(req.port)
            open_at_end = metrics.get("lm_proxy_open_streams", 0)
            while metrics.get("lm_proxy_open_streams", 0) > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
                metrics = proxy_metrics(req.port)
            metrics["open_at_end"] = open_at_end
            metrics["drained_s"] = 15 - max(0.0, deadline - time.monotonic())
            result.raw["metrics"] = metrics
    except Exception as e:  # reported in the results
        result.status, result.reason = "failed", str(e)[:400]
    finally:
        if server is not None:
            server.stop()
    return result


def proxy_metrics(port: int) -> dict:
    """A few series from lm-proxy's own /metrics after the run."""
    try:
        status, body = http_get(port, "/metrics")
    except OSError:
        return {}
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        for name in (
            "lm_proxy_open_streams",
            "lm_proxy_upstream_errors_total",
            "lm_proxy_overhead_seconds_sum",
            "lm_proxy_overhead_seconds_count",
        ):
            if line.startswith(name):
                value = float(line.rsplit(" ", 1)[1])
                out[name] = out.get(name, 0.0) + value
    return out


# --------------------------------------------------------------------------- report


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "load": os.getloadavg(),
    }


def version_of(argv: list[str]) -> str:
    text = version_of_all(argv).splitlines()
    return text[0] if text else "?"


def version_of_all(argv: list[str]) -> str:
    """Everything `argv` prints (stdout and stderr), or "" if it cannot run."""
    with contextlib.suppress(Exception):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip()
    return ""


def pip_version(venv: Path, package: str) -> str:
    if not venv.exists():
        return "not installed"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "show", package], capture_output=True, text=True
    )
    for line in out.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "not installed"


def fmt_cpu(r: Result) -> str:
    """CPU per request, with its user-space part: `20 µs (user 9)`."""
    return f"{fmt_us(r.cpu_us_per_req)} (user {r.cpu_user_us_per_req:.0f})"


def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def fmt_rss(kib: int) -> str:
    return f"{kib / 1024:.1f} MB" if kib else "-"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def fmt_rps(r: Result) -> str:
    if r.runs > 1:
        return f"{r.rps:,.0f} ({r.rps_min:,.0f}..{r.rps_max:,.0f})"
    return f"{r.rps:,.0f}"


def report(results: dict[tuple[str, str], Result], meta: dict, args: argparse.Namespace) -> str:
    def get(scenario: str, target: str) -> Result | None:
        r = results.get((scenario, target))
        return r if r and r.status == "ok" else None

    m = meta["machine"]
    lb, la = meta["load_before"], meta["load_after"]
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB RAM, "
        f"Linux {m['kernel']}; load generator, mock upstream and server share these CPUs",
        f"- Load average (1/5/15 min): {lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f} before, "
        f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} after; other work on the machine "
        "(other engineers' builds) shares the CPUs and adds noise",
        f"- Command: `{meta['command']}`",
        f"- lm-proxy: {meta['lm_proxy']}; reference lm-proxy: {meta['reference']}; "
        f"LiteLLM: {meta['litellm']}; nginx: {meta['nginx']}; load: {meta['wrk']}",
        f"- lm-proxy Python package (Python-extension scenario): `{meta['python_package']}` "
        f"for `{args.ext_python}`; it is whatever wheel is installed there (`pip install .` "
        "or `bash scripts/test` puts this checkout's there), which this run does not rebuild",
        f"- Each run: {args.warmup:g} s warm-up, then {args.duration:g} s measured; HTTP/1.1 "
        "keep-alive; every server started afresh for each run. The mock, the floor proxy, "
        f"nginx and the lm-proxy configurations take turns {args.repeat} times per scenario "
        "and the median run is shown, with the range of requests/s over the runs; the "
        "peers run once",
        "",
        "Rows besides lm-proxy and its peers: *direct* is the mock itself, no proxy; "
        "*floor* is `bench-floor-proxy`, a proxy that does nothing, built the usual way on "
        "the crates lm-proxy uses (axum/hyper, reqwest's pooled client, tokio's "
        "multi-threaded runtime): it forwards the request's bytes to the mock and streams "
        "the answer back, no auth, no parsing; *nginx* is nginx as a plain reverse proxy "
        "to the mock (upstream keep-alive, no buffering, no access log, one worker per "
        "CPU). Floor and nginx show what the second hop costs a proxy on this machine; "
        "lm-proxy does all its own work (key check, routing, JSON, logging, metrics) on "
        "top, with its own upstream client and one runtime per thread.",
        "",
        "Columns: requests/s (median, range); latency p50 and p99 (wrk); errors (connect, "
        "read, write, timeout, non-2xx); peak RSS of the server's process tree during the "
        "run (VmRSS sampled every 20 ms; nginx's master and workers); CPU time of the "
        "server's process tree per request, user space's part of it in brackets (the "
        "rest is the kernel's); requests/s relative to direct and, for "
        "lm-proxy, to the floor proxy and to each peer.",
        "",
        "What was changed after profiling and what limits lm-proxy on this machine: "
        "[README.md](README.md#findings-what-was-changed-and-what-limits-lm-proxy-here).",
        "",
    ]
    for scenario in SCENARIOS:
        if args.only and scenario.name not in args.only:
            continue
        base = scenario.baseline or scenario.name
        direct = get(scenario.name, "direct") or get(base, "direct")
        lines += [f"## {scenario.name}: {scenario.title}", ""]
        if scenario.note:
            lines += [f"{scenario.note}.", ""]
        if scenario.no_floor:
            lines += [f"Floor proxy and nginx: not applicable ({scenario.no_floor}).", ""]
        floor = get(scenario.name, "floor")
        lines += [
            "| server | req/s | p50 | p99 | errors | peak RSS | CPU/req | vs direct "
            "| vs floor | vs reference | vs LiteLLM |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        targets = list(scenario.targets)
        if "direct" not in targets:
            targets.insert(0, "direct")
        if "lm-proxy" in targets:
            targets.insert(targets.index("lm-proxy") + 1, "lm-proxy-b")
        for target in targets:
            r = results.get((scenario.name, target))
            if r is None and target == "direct":
                r = results.get((base, target))
            if r is None:
                continue
            title = title_of(target, scenario)
            if target == "direct" and scenario.baseline:
                title += f", {scenario.baseline}'s request"
            if r.status != "ok":
                lines.append(f"| {title} | {r.status}: {r.reason} | | | | | | | | | |")
                continue
            peer_cols = []
            for peer in PEERS:
                p = get(scenario.name, peer)
                peer_cols.append(ratio(r.rps, p.rps) if p and target in OURS else "-")
            vs_direct = ratio(r.rps, direct.rps) if direct and target != "direct" else "-"
            vs_floor = ratio(r.rps, floor.rps) if floor and target in OURS else "-"
            if r.requests == 0:
                lines.append(
                    f"| {title} | 0 (no request completed within the run) | - | - "
                    f"| {r.errors} | {fmt_rss(r.peak_rss_kib)} | - | - | - | - | - |"
                )
                continue
            lines.append(
                f"| {title} | {fmt_rps(r)} | {fmt_us(r.p50_us)} | {fmt_us(r.p99_us)} "
                f"| {r.errors} | {fmt_rss(r.peak_rss_kib)} | {fmt_cpu(r)} "
                f"| {vs_direct} | {vs_floor} | {peer_cols[0]} | {peer_cols[1]} |"
            )
        lines.append("")
        ours = get(scenario.name, "lm-proxy") or get(scenario.name, "lm-proxy-default")
        if ours and ours.raw.get("metrics"):
            mt = ours.raw["metrics"]
            count = mt.get("lm_proxy_overhead_seconds_count", 0)
            if count:
                avg = mt["lm_proxy_overhead_seconds_sum"] / count * 1e6
                streams = ""
                if mt.get("open_at_end"):
                    streams = (
                        f"; {mt['open_at_end']:.0f} streams were open when wrk stopped, "
                        f"{mt.get('lm_proxy_open_streams', 0):.0f} still open "
                        f"{mt['drained_s']:.1f} s later"
                    )
                lines += [
                    "lm-proxy's own /metrics after its median run: mean overhead "
                    f"{avg:.0f} µs per request (whole request minus time waiting on the "
                    "upstream), upstream errors "
                    f"{mt.get('lm_proxy_upstream_errors_total', 0):.0f}{streams}.",
                    "",
                ]
    lines += targets_section(results, get)
    return "\n".join(lines) + "\n"


def targets_section(results, get) -> list[str]:
    lines = [
        "## Targets",
        "",
        "Targets are lm-proxy's; next to each, what the floor proxy (floor) and nginx "
        "reached in the same run, for scale.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]

    def row(name: str, measured: str, ok: bool | None) -> None:
        mark = {True: "yes", False: "**no**", None: "not run"}[ok]
        lines.append(f"| {name} | {measured} | {mark} |")

    def bare(scenario: str, describe: typing.Callable[[Result], str]) -> str:
        """`; floor ...; nginx ...` for the proxies without app logic that ran."""
        out = ""
        for target in BARE:
            r = get(scenario, target)
            if r:
                out += f"; {target} {describe(r)}"
        return out

    d, o = get("latency-c1", "direct"), get("latency-c1", "lm-proxy")
    if d and o:
        delta = o.p50_us - d.p50_us
        runs = ", ".join(f"{x:.0f}" for x in o.raw.get("p50_runs", []))
        druns = ", ".join(f"{x:.0f}" for x in d.raw.get("p50_runs", []))
        row(
            "concurrency-1 p50 within 100 µs of direct",
            f"lm-proxy +{delta:.0f} µs (median p50 {fmt_us(o.p50_us)} vs {fmt_us(d.p50_us)}; "
            f"runs: lm-proxy {runs} µs, direct {druns} µs)"
            + bare(
                "latency-c1",
                lambda r: f"+{r.p50_us - d.p50_us:.0f} µs (p50 {fmt_us(r.p50_us)})",
            ),
            delta <= 100,
        )
    for scenario, share in (("throughput-c64", 0.35), ("stream-c64", 0.40)):
        d, o = get(scenario, "direct"), get(scenario, "lm-proxy")
        if d and o:
            row(
                f"{scenario}: at least {share:.0%} of direct",
                f"lm-proxy {o.rps / d.rps:.0%} ({o.rps:,.0f} vs {d.rps:,.0f} req/s)"
                + bare(scenario, lambda r, d=d: f"{r.rps / d.rps:.0%} ({r.rps:,.0f} req/s)"),
                o.rps / d.rps >= share,
            )
    for scenario in ("throughput-c64", "stream-c64"):
        o, ref = get(scenario, "lm-proxy"), get(scenario, "reference")
        name = f"{scenario}: at least 50x the reference's throughput"
        if o and ref:
            row(
                name,
                f"lm-proxy {o.rps / ref.rps:.0f}x ({o.rps:,.0f} vs {ref.rps:,.0f} req/s)"
                + bare(scenario, lambda r, ref=ref: f"{r.rps / ref.rps:.0f}x"),
                o.rps / ref.rps >= 50,
            )
        elif o:
            row(name, "reference not run", None)
    o = get("throughput-c64", "lm-proxy")
    if o:
        row(
            "idle RSS under 25 MB",
            f"lm-proxy {fmt_rss(o.idle_rss_kib)} (after start, before load)"
            + bare("throughput-c64", lambda r: fmt_rss(r.idle_rss_kib)),
            o.idle_rss_kib < 25 * 1024,
        )
    o = get("streams-1000", "lm-proxy")
    if o:
        row(
            "1,000 open streams under 100 MB, zero errors",
            f"lm-proxy peak {fmt_rss(o.peak_rss_kib)}, {o.errors} errors"
            + bare("streams-1000", lambda r: f"{fmt_rss(r.peak_rss_kib)}, {r.errors} errors"),
            o.peak_rss_kib < 100 * 1024 and o.errors == 0,
        )
    r = results.get(("python-ext-c64", "lm-proxy-python"))
    name = "Python validator + handler: at least 5,000 req/s"
    if r and r.status == "ok":
        row(name, f"{r.rps:,.0f} req/s", r.rps >= 5000)
    else:
        row(name, f"not run: {r.reason if r else 'not selected'}", None)
    costs = []
    for scenario in ("metrics-off-c64", "metrics-off-stream-c64"):
        on, off = get(scenario, "lm-proxy-default"), get(scenario, "lm-proxy")
        if on and off:
            costs.append(
                f"{scenario}: {on.rps:,.0f} req/s with /metrics, {off.rps:,.0f} without "
                f"({(on.rps / off.rps - 1) * 100:+.1f} %), CPU per request "
                f"{fmt_us(on.cpu_us_per_req)} vs {fmt_us(off.cpu_us_per_req)}."
            )
    if costs:
        lines += ["", "Cost of metrics (same scenario, runs taking turns):", ""]
        lines += [f"- {c}" for c in costs]
    return [*lines, ""]


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up seconds per run")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of the mock, floor, nginx and lm-proxy per scenario",
    )
    parser.add_argument(
        "--only", type=lambda s: s.split(","), default=None, help="comma-separated scenarios"
    )
    parser.add_argument(
        "--targets",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated: direct, floor, nginx, nginx-log, lm-proxy, lm-proxy-shared, "
        "lm-proxy-default, lm-proxy-python, reference, litellm",
    )
    parser.add_argument(
        "--ext-python",
        default=shutil.which("python3") or "python3",
        help="interpreter whose lm_proxy package runs the Python-extension scenario "
        "(default: python3 on PATH)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="a second lm-proxy-server binary, run as target lm-proxy-b after lm-proxy "
        "wherever it runs (same config, taking turns)",
    )
    parser.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global COMPARED_BIN
    COMPARED_BIN = args.compare.resolve() if args.compare else None

    for binary in (PROXY_BIN, UPSTREAM_BIN, *([COMPARED_BIN] if COMPARED_BIN else [])):
        if not binary.exists():
            print(f"missing {binary}: run `cargo build --release` first", file=sys.stderr)
            return 1
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = BENCH / "out" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lm-proxy-bench-"))
    meta = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "load_before": os.getloadavg(),
        "command": args.command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "lm_proxy": version_of([str(PROXY_BIN), "--version"])
        + " @ "
        + version_of(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "reference": pip_version(REF_VENV, "lm-proxy"),
        "litellm": pip_version(LITELLM_VENV, "litellm"),
        "python_package": python_package(args.ext_python),
        "wrk": version_of(["wrk", "--version"]).split(" [")[0],
        "nginx": nginx_version(),
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    results: dict[tuple[str, str], Result] = {}

    def wanted(target: str) -> bool:
        return not args.targets or target in args.targets

    try:
        upstream_port = free_port()
        upstream = Server(
            "bench-upstream",
            [str(UPSTREAM_BIN), "--port", str(upstream_port), "--chunks", str(CHUNKS)],
            upstream_port,
            "/health",
            log_dir,
        )
        upstream.wait_ready(10)
        for scenario in SCENARIOS:
            if args.only and scenario.name not in args.only:
                continue
            targets = [t for t in scenario.targets if wanted(t)]
            if COMPARED_BIN and "lm-proxy" in targets:
                targets.insert(targets.index("lm-proxy") + 1, "lm-proxy-b")
            base = scenario.baseline
            if base and wanted("direct"):
                # The direct run of the baseline's request, taking turns with the others
                # here, so that a change in the machine's load hits both sides alike.
                targets.insert(0, "direct")
            runs: dict[str, list[Result]] = {t: [] for t in targets}
            for target in list(targets):
                why_not = available(target, args)
                if why_not:
                    targets.remove(target)
                    results[(scenario.name, target)] = Result(
                        scenario.name, target, "not run", why_not
                    )
                    print(f"[{scenario.name}] {target}: not run ({why_not})", flush=True)
            for round_ in range(args.repeat):
                for target in list(targets):
                    if target in PEERS and round_ > 0:
                        continue
                    measured = (
                        next(x for x in SCENARIOS if x.name == base)
                        if (target == "direct" and base)
                        else scenario
                    )
                    print(f"[{measured.name}] {target} #{round_ + 1} ...", end="", flush=True)
                    r = run_one(measured, target, upstream_port, upstream, work, log_dir, args)
                    runs[target].append(r)
                    if r.status == "ok":
                        print(
                            f" {r.rps:,.0f} req/s, p50 {fmt_us(r.p50_us)}, p99 "
                            f"{fmt_us(r.p99_us)}, errors {r.errors}, peak RSS "
                            f"{fmt_rss(r.peak_rss_kib)}, CPU {fmt_cpu(r)} a request",
                            flush=True,
                        )
                    else:
                        print(f" {r.status}: {r.reason}", flush=True)
                    if r.status != "ok" and target == "lm-proxy-python":
                        # This project's package without Python support: say so, once.
                        r.status = "not run"
                        r.reason = r.reason.split(" | ")[-1][:300]
                        targets.remove(target)
            for target, target_runs in runs.items():
                if not target_runs:
                    continue
                results[(scenario.name, target)] = median_run(
                    target_runs, by_latency=(scenario.conns == 1)
                )
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
    meta["load_after"] = os.getloadavg()
    raw = {"meta": meta, "results": [r.__dict__ for r in results.values()]}
    (log_dir / "results.json").write_text(json.dumps(raw, indent=1))
    Path(args.out).write_text(report(results, meta, args))
    print(f"wrote {args.out} (logs and raw results in {log_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
