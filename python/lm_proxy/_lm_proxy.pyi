"""Type stubs for the native module built from src/python/ (PyO3).

Users reach these through the pure-Python modules (``lm_proxy.Server``,
``lm_proxy.serve``, ``lm_proxy.bootstrap``, ``lm_proxy.config.Config.load``).
"""

import os
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from .bootstrap import Env
from .config import Config

__version__: str
#: Prefix of the strings that stand for objects of a Python ``Config`` in the tree
#: handed to the Rust core.
OBJECT_REF_PREFIX: str

def run_cli(argv: list[str], flag: SignalFlag | None = None) -> int:
    """Run the server's command line with ``argv`` (program name first).

    Blocks until the server stops, with the GIL released; Python's signal handlers
    run every 100 ms. A signal recorded by ``flag`` (or a ``KeyboardInterrupt`` /
    ``SystemExit`` another handler raises) starts a graceful shutdown; a second one
    returns at once. Returns the process exit status.
    """

class SignalFlag:
    """A signal handler that only records the signal: ``signal.signal(SIGINT, flag)``."""

    def __init__(self) -> None: ...
    def __call__(self, signum: int, frame: object = None) -> None: ...
    @property
    def signal(self) -> int | None: ...

def bootstrap(config: Config, env: Env, debug: bool = False) -> None:
    """Build ``config``'s connections and components into ``env`` without serving,
    and make ``env`` the default ``lm_proxy.bootstrap.env``."""

def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML, JSON or YAML config file as the native binary does (parsed,
    ``env:`` substituted, checked). Raises ``lm_proxy.errors.ConfigError``."""

def check_config(config: Config) -> None:
    """Check a ``Config`` as serving would, without importing or calling anything."""

def load_dotenv(path: str | os.PathLike[str] | None = None) -> None:
    """Load a ``.env`` file (values override the environment); ``None``: ``.env``
    in the working directory, if present."""

def stop_bridge(timeout: float = 2.0) -> None:
    """Stop the bridge's asyncio loop (at interpreter exit)."""

def drain_python_calls(timeout: float = 5.0) -> bool:
    """Refuse new sync Python calls, wait for the running ones (at interpreter exit)."""

def flush_request_log() -> None:
    """Write the request log lines waiting in the stderr batch (at interpreter exit)."""

class Server:
    """A gateway serving ``config`` in the background; returns once listening."""

    def __init__(
        self,
        config: Config,
        *,
        host: str | None = None,
        port: int | None = None,
        debug: bool | None = None,
    ) -> None: ...
    @property
    def url(self) -> str: ...
    @property
    def running(self) -> bool: ...
    @property
    def grace(self) -> float: ...
    def stop(self, grace: float | None = None, flag: SignalFlag | None = None) -> int | None:
        """Stop gracefully and wait (GIL released) until stopped and logs written;
        returns the signal ``flag`` recorded if one ended the wait early."""

    def wait(self, flag: SignalFlag | None = None) -> int | None:
        """Wait until the server stops, or until ``flag`` records a signal (returned);
        exceptions other signal handlers raise propagate."""

class Connection:
    """A connection served by Rust, as ``env.connections[name]``."""

    @property
    def name(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    def __call__(self, messages: Any, **params: Any) -> Awaitable[str]:
        """``await conn(messages, **params)``: the answer's text as an
        ``lm_proxy.LLMResponse``; ``callback=`` receives streamed pieces."""

    def complete(self, messages: Any, params: dict[str, Any]) -> Awaitable[dict[str, Any]]:
        """The whole ``chat.completion`` dict."""

    def stream(self, messages: Any, params: dict[str, Any]) -> ChunkIterator:
        """The ``chat.completion.chunk`` dicts of a streamed answer."""

class ChunkIterator(AsyncIterator[dict[str, Any]]):
    def __aiter__(self) -> ChunkIterator: ...
    def __anext__(self) -> Awaitable[dict[str, Any]]: ...
