"""The reference's built-ins as Python values that stand for the Rust built-ins.

``RateLimiter(max_requests=2, window_seconds=2)`` in a Python ``Config`` becomes the
table ``{"class": "lm_proxy.handlers.RateLimiter", "max_requests": 2, ...}`` that a
TOML file would give, so it runs in Rust with no Python on the request path. The
same names work as ``class = "..."`` strings in any config file.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["Builtin", "builtin_table"]


class Builtin:
    """A Rust built-in with its keyword arguments (see :func:`builtin_table`)."""

    #: The dotted name the Rust core knows this built-in by.
    target: str = ""

    def __init__(self, **kwargs: Any) -> None:
        # Only what differs from the defaults is kept, so that the table equals the
        # one a config file with the same settings gives.
        defaults = _defaults(type(self))
        self.kwargs = {k: v for k, v in kwargs.items() if k not in defaults or defaults[k] != v}
        # Every setting, defaults included, for the Python implementations of calls.
        self._args: dict[str, Any] = {**defaults, **kwargs}
        self._init_runtime()

    #: Attributes holding the run-time state of direct calls (locks, caches, windows).
    _runtime_attrs: tuple[str, ...] = ()

    def _init_runtime(self) -> None:
        """Create the run-time state of direct calls (see ``_runtime_attrs``)."""

    def __getstate__(self) -> dict[str, Any]:
        # Copies (Config.model_copy(deep=True)) and pickles get fresh run-time state:
        # locks cannot be copied, and windows or caches must not be shared.
        state = dict(self.__dict__)
        for name in self._runtime_attrs:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def _lm_proxy_table_(self) -> dict[str, Any] | None:
        # A subclass that changes what a call does is Python code: it runs in Python.
        mro = type(self).__mro__
        builtin = next(k for k in mro if "target" in vars(k))
        caller = next((k for k in mro if "__call__" in vars(k)), object)
        if caller not in builtin.__mro__:
            return None
        return {"class": self.target, **self.kwargs}

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Builtin) and type(other) is type(self) and other.kwargs == self.kwargs
        )

    def __hash__(self) -> int:
        return hash((type(self), repr(sorted(self.kwargs.items(), key=lambda kv: kv[0]))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{type(self).__name__}({args})"


class RustOnly(Builtin):
    """A built-in that only runs inside the server (in Rust)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{type(self).__name__} runs inside the lm-proxy server (in Rust): use it as a "
            "value in a Config (api_key_check, before, loggers or connections)"
        )


def _defaults(cls: type) -> dict[str, Any]:
    try:
        params = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def builtin_table(value: Any) -> dict[str, Any] | str | None:
    """The ``class`` table (or dotted name) of a built-in value, None for any other object.

    Built-in classes given uninstantiated are instantiated with their defaults (as
    the reference instantiates classes named without arguments); functions marked
    with ``_lm_proxy_builtin_`` become their dotted name.
    """
    if inspect.isclass(value) and issubclass(value, Builtin):
        value = value()
    table = getattr(value, "_lm_proxy_table_", None)
    if table is not None and callable(table) and not inspect.isclass(value):
        return table()  # type: ignore[no-any-return]
    name = getattr(value, "_lm_proxy_builtin_", None)
    if isinstance(name, str) and not inspect.isclass(value):
        return name
    return None
