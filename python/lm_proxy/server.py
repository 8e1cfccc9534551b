"""Serving from Python: :class:`Server` in the background, :func:`serve` blocking.

Both run the Rust server; the GIL is released while it serves. Python owns the
signals: :func:`serve` (and the ``lm-proxy-server`` command) stop gracefully on
Ctrl+C and SIGTERM, letting open requests finish within ``shutdown_grace_seconds``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

from . import _bridge, _lm_proxy
from .config import Config

__all__ = ["Server", "serve"]


class Server:
    """A gateway serving in the background of this process.

    ``Server(config)`` starts listening before it returns (``config``: a
    :class:`~lm_proxy.config.Config` or the path of a config file of any format);
    ``url`` says where. ``stop()`` (or leaving a ``with`` block) stops accepting
    connections, gives open requests the grace period, and returns once the server
    has stopped and its request log is written.
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str] = "config.toml",
        *,
        host: str | None = None,
        port: int | None = None,
        debug: bool | None = None,
        env_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if env_file:
            _lm_proxy.load_dotenv(os.fspath(env_file))
        if not isinstance(config, Config):
            config = Config.load(config)
        self.config = config
        self._server = _lm_proxy.Server(config, host=host, port=port, debug=debug)
        _bridge.register_server(self)

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server (``0.0.0.0`` shown as ``127.0.0.1``)."""
        return self._server.url

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url``: ``url`` plus the config's ``api_prefix``."""
        prefix = (self.config.api_prefix or "").strip().rstrip("/")
        if prefix and not prefix.startswith("/"):
            prefix = "/" + prefix
        return self.url + prefix

    @property
    def running(self) -> bool:
        return self._server.running

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully (``grace`` seconds, default ``shutdown_grace_seconds``)."""
        self._server.stop(grace)

    def wait(self) -> None:
        """Block until the server stops; signal handlers run meanwhile."""
        self._server.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<lm_proxy.Server {self.url} {state}>"


def serve(
    config: Config | str | os.PathLike[str] = "config.toml",
    *,
    host: str | None = None,
    port: int | None = None,
    debug: bool | None = None,
    env_file: str | os.PathLike[str] | None = None,
) -> None:
    """Serve until Ctrl+C or SIGTERM, then stop gracefully and return."""
    with terminate_raises_system_exit():
        server = Server(config, host=host, port=port, debug=debug, env_file=env_file)
        try:
            server.wait()
        except (KeyboardInterrupt, SystemExit):
            server.stop()


@contextlib.contextmanager
def terminate_raises_system_exit() -> Iterator[None]:
    """While serving from the main thread, SIGTERM raises ``SystemExit(0)`` (instead
    of killing the process), so that the server can shut down gracefully."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield  # the application has its own SIGTERM handling
        return

    def on_terminate(signum: int, frame: FrameType | None) -> Any:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
