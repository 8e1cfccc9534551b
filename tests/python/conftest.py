"""Fixtures for the Python tests: a recording mock OpenAI-compatible upstream, the
native gateway binary as a child process, the installed ``lm_proxy`` package (its
in-process ``Server`` and its console scripts as child processes), and `openai`
clients.

The binary comes from ``LM_PROXY_BIN`` (default ``<repo>/target/debug/lm-proxy-server``);
build it first (``cargo build --bin lm-proxy-server``, or run ``scripts/test``). The
package is whatever ``import lm_proxy`` finds: ``scripts/test`` installs the wheel
with ``pip install .`` first.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = REPO_ROOT / "target" / "debug" / "lm-proxy-server"

CLIENT_KEY = "test-key"
UPSTREAM_KEY = "sk-upstream-secret"
# What the mock upstream answers to every non-streamed request.
UPSTREAM_CONTENT = "Hello from the mock upstream."
# The arguments of the tool call in the upstream's streamed answer, split in two
# fragments so that clients must reassemble them.
UPSTREAM_TOOL_ARGUMENTS = ('{"city": "Pa', 'ris", "unit": "celsius"}')

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0
READY_LINE = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")

# Routing of the main gateway; the order matters (first match wins).
MAIN_ROUTES = {
    "fixed-up": "upstream.upstream-real-model",
    "up-*": "upstream.*",
    "*": "mock.*",
}
# A gateway without a catch-all rule, for "no route" errors.
STRICT_ROUTES = {"mock-*": "mock.*"}


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit that:
    # give the gateways and scripts these tests start the disposition a terminal
    # would, so that the Ctrl+C tests mean the same everywhere.
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# --------------------------------------------------------------------------------------
# Mock OpenAI-compatible upstream
# --------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the upstream received it (header names in lower case)."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    # The header names as spelled on the wire.
    header_names: list[str] = field(default_factory=list)


@dataclass
class MockUpstream:
    """A stdlib HTTP server that plays an OpenAI-compatible `/v1/chat/completions`."""

    server: ThreadingHTTPServer
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api_base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def record(self, request: RecordedRequest) -> None:
        with self.lock:
            self.requests.append(request)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    def only_request(self) -> RecordedRequest:
        """The single request received since the last `clear()`."""
        with self.lock:
            assert len(self.requests) == 1, f"expected one upstream request: {self.requests}"
            return self.requests[0]


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-upstream-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": UPSTREAM_CONTENT},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }


def _stream_chunks(model: str) -> list[dict[str, Any]]:
    """A streamed answer: role, a tool call head, two argument fragments, finish."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-upstream-2",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    head = {
        "index": 0,
        "id": "call_upstream_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    return [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [head]}),
        *(
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
            for fragment in UPSTREAM_TOOL_ARGUMENTS
        ),
        chunk({}, finish_reason="tool_calls"),
    ]


class _UpstreamHandler(BaseHTTPRequestHandler):
    # HTTP/1.0: each response ends by closing the connection, which frames the
    # streamed body without chunked encoding.
    protocol_version = "HTTP/1.0"
    upstream: MockUpstream  # set on the per-server subclass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            self._send_json(400, {"error": {"message": "body is not JSON", "type": "bad"}})
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.upstream.record(
            RecordedRequest(
                path=self.path, headers=headers, body=body, header_names=list(self.headers.keys())
            )
        )

        if self.path != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": "unknown path", "type": "not_found"}})
            return
        model = str(body.get("model", ""))
        if model.startswith("fail-"):
            # An upstream outage, for fallback tests.
            self._send_json(500, {"error": {"message": "upstream is down", "type": "server_error"}})
            return
        if not body.get("stream"):
            self._send_json(200, _completion(model))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for chunk in _stream_chunks(model):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[MockUpstream]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _UpstreamHandler)
    server.daemon_threads = True
    upstream = MockUpstream(server=server)
    # A subclass per server so the handler can reach this recorder.
    server.RequestHandlerClass = type(
        "BoundUpstreamHandler", (_UpstreamHandler,), {"upstream": upstream}
    )
    thread = threading.Thread(target=server.serve_forever, name="mock-upstream", daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=SHUTDOWN_TIMEOUT_S)


@pytest.fixture
def upstream(upstream_server: MockUpstream) -> MockUpstream:
    """The mock upstream, with the requests of earlier tests forgotten."""
    upstream_server.clear()
    return upstream_server


# --------------------------------------------------------------------------------------
# The gateway process
# --------------------------------------------------------------------------------------


def gateway_config(routes: dict[str, str], upstream_api_base: str) -> str:
    """A TOML config with the `mock` and `upstream` connections and one client key."""
    lines = [
        'host = "127.0.0.1"',
        "port = 0",
        'encryption_key = "python-client-tests"',
        # Keep teardown quick should a connection still be open.
        "shutdown_grace_seconds = 2",
        "",
        "[connections.mock]",
        'api_type = "mock"',
        "",
        "[connections.upstream]",
        'api_type = "openai"',
        f"api_base = {json.dumps(upstream_api_base)}",
        f"api_key = {json.dumps(UPSTREAM_KEY)}",
        "",
        "[routing]",
        *(f"{json.dumps(pattern)} = {json.dumps(target)}" for pattern, target in routes.items()),
        "",
        "[groups.default]",
        f"api_keys = [{json.dumps(CLIENT_KEY)}]",
        "",
    ]
    return "\n".join(lines)


def gateway_binary() -> Path:
    """The binary under test; fails the test run (not skips) when it is missing."""
    configured = os.environ.get("LM_PROXY_BIN")
    binary = Path(configured).expanduser() if configured else DEFAULT_BINARY
    if not binary.is_absolute():
        binary = Path.cwd() / binary
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        source = "LM_PROXY_BIN" if configured else "the default path"
        pytest.fail(
            f"gateway binary not found at {binary} (from {source}); build it with "
            "`cargo build --bin lm-proxy-server` or point LM_PROXY_BIN at it",
            pytrace=False,
        )
    return binary


class GatewayProcess:
    """A running `lm-proxy-server`; its stderr is drained by a thread for its lifetime.

    ``command`` is the binary, or the argv prefix of another launcher (the Python
    package's console scripts, ``python -m lm_proxy``).
    """

    def __init__(
        self,
        command: Path | Sequence[str],
        config_path: Path,
        cwd: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        env = dict(os.environ)
        env.update(extra_env or {})
        # The readiness line is logged at INFO; make sure a RUST_LOG from the caller's
        # environment cannot hide it.
        env["RUST_LOG"] = "info"
        # The gateway's HTTP client honours proxy variables; keep local traffic local.
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        self.config_path = config_path
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        prefix = [str(command)] if isinstance(command, Path) else list(command)
        argv = [*prefix, "--config", str(config_path), "--port", "0", "--env", "", "--no-debug"]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._drain, name="gateway-stderr", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        # Runs until the pipe closes (the process exited), so the child never blocks on
        # a full stderr pipe; the first readiness line also gives us the URL.
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if self.url is None and (match := READY_LINE.search(line)):
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()  # EOF: wake the waiter, which then reports the exit

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> str:
        """Wait for the readiness line and return the base URL; fail if it never comes."""
        self._ready.wait(timeout)
        if self.url is None:
            code = self.process.poll()
            state = f"exited with code {code}" if code is not None else f"no line in {timeout:.0f}s"
            self.stop()
            pytest.fail(
                f"gateway ({self.config_path}) did not report `listening on` ({state}).\n"
                f"stderr:\n{self.stderr_text()}",
                pytrace=False,
            )
        return self.url

    def stderr_text(self) -> str:
        return "\n".join(self.lines) or "(empty)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        self._reader.join(timeout=SHUTDOWN_TIMEOUT_S)


@pytest.fixture(scope="session")
def start_gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream_server: MockUpstream
) -> Iterator[Callable[[dict[str, str]], GatewayProcess]]:
    """A factory: start a gateway with the given routing; all are stopped at the end."""
    binary = gateway_binary()
    started: list[GatewayProcess] = []

    def start(routes: dict[str, str]) -> GatewayProcess:
        config_path = tmp_path_factory.mktemp("gateway") / "config.toml"
        config_path.write_text(gateway_config(routes, upstream_server.api_base))
        gateway = GatewayProcess(binary, config_path)
        started.append(gateway)
        gateway.wait_ready()
        return gateway

    try:
        yield start
    finally:
        for gateway in started:
            gateway.stop()


@pytest.fixture(scope="session")
def gateway(start_gateway: Callable[[dict[str, str]], GatewayProcess]) -> GatewayProcess:
    """The main gateway: upstream routes plus a catch-all to the mock."""
    return start_gateway(MAIN_ROUTES)


@pytest.fixture(scope="session")
def strict_gateway(start_gateway: Callable[[dict[str, str]], GatewayProcess]) -> GatewayProcess:
    """A gateway without a catch-all route."""
    return start_gateway(STRICT_ROUTES)


# --------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------


def make_client(gateway: GatewayProcess, api_key: str = CLIENT_KEY) -> openai.OpenAI:
    """A sync client for `gateway`: no retries, and no proxies from the environment."""
    return openai.OpenAI(
        base_url=f"{gateway.url}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=30.0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )


def make_async_client(gateway: GatewayProcess, api_key: str = CLIENT_KEY) -> openai.AsyncOpenAI:
    """An async client for `gateway`; create it inside the event loop that uses it."""
    return openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=30.0,
        http_client=openai.DefaultAsyncHttpxClient(trust_env=False),
    )


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with make_client(gateway) as sync_client:
        yield sync_client


# --------------------------------------------------------------------------------------
# The installed Python package
# --------------------------------------------------------------------------------------


def import_lm_proxy() -> Any:
    """The installed package; fails the test (not skips) when it is missing."""
    try:
        import lm_proxy
    except ImportError as e:  # pragma: no cover - a broken installation
        pytest.fail(
            f"the lm_proxy package is not installed ({e}); run `pip install .` "
            "(or scripts/test, which does)",
            pytrace=False,
        )
    return lm_proxy


def console_script(name: str) -> list[str]:
    """The argv of one of the package's console scripts, next to this interpreter."""
    script = Path(sys.executable).parent / name
    if not script.exists():
        pytest.fail(f"console script {name} not found next to {sys.executable}", pytrace=False)
    return [str(script)]


PYTHON_LAUNCHERS = {
    "lm-proxy-server": lambda: console_script("lm-proxy-server"),
    "lm-proxy": lambda: console_script("lm-proxy"),
    "python -m lm_proxy": lambda: [sys.executable, "-m", "lm_proxy"],
}


@pytest.fixture
def start_python_gateway() -> Iterator[Callable[..., GatewayProcess]]:
    """A factory: run the package's command line (``launcher`` of
    ``PYTHON_LAUNCHERS``) on a config file; every process is stopped at the end."""
    import_lm_proxy()
    started: list[GatewayProcess] = []

    def start(
        config_path: Path,
        launcher: str = "lm-proxy-server",
        cwd: Path | None = None,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> GatewayProcess:
        gateway = GatewayProcess(PYTHON_LAUNCHERS[launcher](), config_path, cwd, extra_env)
        started.append(gateway)
        if wait:
            gateway.wait_ready()
        return gateway

    try:
        yield start
    finally:
        unclean = []
        for gateway in started:
            gateway.stop()
            # SIGTERM must stop the Python command line gracefully (exit status 0),
            # never by the kill that follows a timeout.
            if gateway.process.returncode != 0:
                unclean.append(f"exit {gateway.process.returncode}:\n{gateway.stderr_text()}")
        if unclean:
            pytest.fail("gateway did not stop cleanly on SIGTERM: " + "\n".join(unclean))


@pytest.fixture
def serve_config() -> Iterator[Callable[..., Any]]:
    """A factory: serve a ``lm_proxy.Config`` (or config path) in this process with
    ``lm_proxy.Server``; every server is stopped at the end."""
    lm_proxy = import_lm_proxy()
    started: list[Any] = []

    def start(config: Any, **kwargs: Any) -> Any:
        server = lm_proxy.Server(config, **kwargs)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop(grace=0)


def client_for(url: str, api_key: str = CLIENT_KEY, prefix: str = "/v1") -> openai.OpenAI:
    """A sync client for a gateway at ``url``: no retries, no proxies."""
    return openai.OpenAI(
        base_url=f"{url}{prefix}",
        api_key=api_key,
        max_retries=0,
        timeout=30.0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )


def async_client_for(url: str, api_key: str = CLIENT_KEY) -> openai.AsyncOpenAI:
    """An async client for a gateway at ``url``; create it inside its event loop."""
    return openai.AsyncOpenAI(
        base_url=f"{url}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=60.0,
        http_client=openai.DefaultAsyncHttpxClient(
            trust_env=False,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000),
        ),
    )
