"""The runtime environment of a gateway, for user code: ``env.config``,
``env.connections``, ``env.components``, ``env.debug``.

Inside a key check, handler, logger or connection, ``env`` is the environment of
the server that called it (each server has its own; a context variable tells them
apart). Elsewhere it is the one of the last server started or of the last
:func:`bootstrap` call.

``env.connections[name]`` is awaitable with the reference's signature
(``await env.connections["openai"](messages, **params)``): Rust connections answer
through the Rust core; Python connections are the callables themselves.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import Any

from . import _lm_proxy
from .config import Config

__all__ = ["Env", "bootstrap", "env"]


class Env:
    """What a gateway built from its config."""

    def __init__(self) -> None:
        self.config: Config | None = None
        self.connections: dict[str, Any] = {}
        self.components: dict[str, Any] = {}
        self.debug: bool = False

    def __repr__(self) -> str:
        return (
            f"<lm_proxy Env connections={list(self.connections)} "
            f"components={list(self.components)} debug={self.debug}>"
        )


_current: ContextVar[Env] = ContextVar("lm_proxy_env")


class _Default:
    env = Env()


class _EnvProxy:
    """``lm_proxy.bootstrap.env``: the current :class:`Env` (see the module docs)."""

    def _target(self) -> Env:
        return _current.get(_Default.env)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target(), name, value)

    def __repr__(self) -> str:
        return repr(self._target())


env: Env = _EnvProxy()  # type: ignore[assignment]


def bootstrap(
    config: str | os.PathLike[str] | Config = "config.toml",
    env_file: str | os.PathLike[str] | None = ".env",
    debug: bool | None = None,
) -> Env:
    """Build a config's connections and components without serving (library use).

    Loads ``env_file`` first (if it exists), then the config (a path of any format or
    a :class:`~lm_proxy.config.Config`). Afterwards ``env.connections[name]`` can be
    awaited from any asyncio loop. Returns the new environment, which also becomes
    the default ``env``.
    """
    if env_file and os.path.exists(env_file):
        _lm_proxy.load_dotenv(os.fspath(env_file))
    if debug is None:
        debug = _truthy(os.environ.get("LM_PROXY_DEBUG", ""))
    if not isinstance(config, Config):
        config = Config.load(config)
    new_env = Env()
    _lm_proxy.bootstrap(config, new_env, debug)
    return new_env


def _truthy(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on", "enabled", "y", "+"}
