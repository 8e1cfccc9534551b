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
from types import TracebackType
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
        """Block until the server stops (``stop()`` from another thread).

        Ctrl+C raises ``KeyboardInterrupt`` here and SIGTERM ``SystemExit(0)`` (where
        the application kept Python's default handlers); the server keeps running.
        """
        flag = _lm_proxy.SignalFlag()
        with route_signals(flag):
            signum = self._server.wait(flag)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        if signum is not None:
            raise SystemExit(0)

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
    """Serve until Ctrl+C or SIGTERM, then stop gracefully and return.

    Open requests get ``shutdown_grace_seconds``; a second signal returns at once.
    """
    flag = _lm_proxy.SignalFlag()
    with route_signals(flag):
        server = Server(config, host=host, port=port, debug=debug, env_file=env_file)
        if server._server.wait(flag) is not None:
            server._server.stop(None, flag)


@contextlib.contextmanager
def route_signals(flag: Any, take_ignored: bool = False) -> Iterator[None]:
    """Let ``flag`` (a ``SignalFlag``) handle SIGINT and SIGTERM for a while.

    Only from the main thread (where Python runs signal handlers), and only for
    signals whose handler is still Python's default: an application's own handlers
    keep working (what they raise ends the wait). With ``take_ignored`` (the command
    line, which behaves like the native binary), signals inherited as ignored (a
    process started with ``&`` by a shell script) are taken too. The flag records
    the signal instead of raising, so that the serving loop always sees it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults: dict[int, Any] = {
        signal.SIGINT: signal.default_int_handler,
        signal.SIGTERM: signal.SIG_DFL,
    }
    replaced: dict[int, Any] = {}
    for signum, default in defaults.items():
        current = signal.getsignal(signum)
        if current is default or current is None or (take_ignored and current == signal.SIG_IGN):
            replaced[signum] = current if current is not None else default
            signal.signal(signum, flag)
    try:
        yield
    finally:
        for signum, previous in replaced.items():
            signal.signal(signum, previous)
