"""The config as Python objects: ``Config`` and ``Group``, with the reference's fields
and defaults, whose values may be Python callables.

A ``.py`` config file builds a ``Config`` and exports it as ``config``; TOML, JSON
and YAML files load into the same class with :meth:`Config.load`, so equivalent
files give equal objects. Serving a ``Config`` hands it to the Rust core as a JSON
tree (see ``_to_tree``), where it is checked exactly like a config file.
"""

from __future__ import annotations

import contextlib
import enum
import os
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from . import _lm_proxy
from .errors import ConfigError

__all__ = ["DEFAULT_KEY_CHECK", "Config", "Group", "ModelListingMode"]

DEFAULT_KEY_CHECK = "lm_proxy.api_key_check.check_api_key_in_config"


class ModelListingMode(enum.StrEnum):
    """How ``GET /models`` shows routing patterns."""

    AS_IS = "as_is"
    IGNORE_WILDCARDS = "ignore_wildcards"
    EXPAND_WILDCARDS = "expand_wildcards"


class Group:
    """A group of client keys and the connections they may use.

    ``allowed_connections`` is ``"*"``, comma-separated names, or a list of names.
    ``connections=`` is accepted as another name for it (the reference's examples
    write ``Group(connections="*")``).
    """

    def __init__(
        self,
        api_keys: list[str] | None = None,
        allowed_connections: str | list[str] = "*",
        *,
        connections: str | list[str] | None = None,
    ) -> None:
        self.api_keys: list[str] = list(api_keys or [])
        self.allowed_connections: str | list[str] = (
            connections if connections is not None else allowed_connections
        )

    def allows_connecting_to(self, connection_name: str) -> bool:
        names = self.allowed_connections
        if isinstance(names, str):
            names = names.split(",")
        names = [n.strip() for n in names if n.strip()]
        return "*" in names or connection_name in names

    def to_dict(self) -> dict[str, Any]:
        allowed = self.allowed_connections
        return {
            "api_keys": list(self.api_keys),
            "allowed_connections": list(allowed) if not isinstance(allowed, str) else allowed,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Group) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"Group(api_keys={self.api_keys!r}, allowed_connections={self.allowed_connections!r})"
        )


def _default_trusted_proxies() -> list[str]:
    return ["127.0.0.0/8", "::1/128"]


# name -> default factory, in the order of the reference (then this project's own).
_FIELDS: dict[str, Callable[[], Any]] = {
    "enabled": lambda: True,
    "host": lambda: "0.0.0.0",
    "port": lambda: 8000,
    "ssl_keyfile": lambda: None,
    "ssl_certfile": lambda: None,
    "api_prefix": lambda: "/v1",
    "dev_autoreload": lambda: False,
    "connections": dict,
    "routing": dict,
    "groups": lambda: {"default": Group()},
    "api_key_check": lambda: DEFAULT_KEY_CHECK,
    "loggers": list,
    "encryption_key": lambda: "Eclipse",
    "model_listing_mode": lambda: ModelListingMode.AS_IS,
    "model_info": dict,
    "components": dict,
    "before": list,
    # This project's additions.
    "max_request_body_mb": lambda: 32,
    "model_listing_cache_seconds": lambda: 300,
    "trusted_proxies": _default_trusted_proxies,
    "shutdown_grace_seconds": lambda: 30,
    "invalid_api_key_status": lambda: 401,
    "max_response_body_mb": lambda: 64,
    # Tables whose keys and defaults the core defines (README: `[metrics]`,
    # `[limits]`, `[log_queue]`); empty means "the defaults".
    "metrics": dict,
    "limits": dict,
    "log_queue": dict,
}


class Config:
    """Everything a gateway needs; keyword arguments only, unknown keys rejected.

    Values that name code (``api_key_check``, ``before``, ``loggers``,
    ``components``, connections) may be dotted paths, ``{"class": ..., **kwargs}``
    dicts, or the Python objects themselves: functions (sync or async), async
    generators, callable instances, or the built-ins of :mod:`lm_proxy.handlers`,
    :mod:`lm_proxy.api_key_check`, :mod:`lm_proxy.loggers` and
    :mod:`lm_proxy.strategies`, which run in Rust.
    """

    enabled: bool
    host: str
    port: int
    ssl_keyfile: str | None
    ssl_certfile: str | None
    api_prefix: str
    dev_autoreload: bool
    connections: dict[str, Any]
    routing: dict[str, str]
    groups: dict[str, Group]
    api_key_check: Any
    loggers: list[Any]
    encryption_key: str
    model_listing_mode: ModelListingMode | str
    model_info: dict[str, dict[str, Any]]
    components: dict[str, Any]
    before: list[Any]
    max_request_body_mb: float
    model_listing_cache_seconds: float
    trusted_proxies: list[str]
    shutdown_grace_seconds: float
    invalid_api_key_status: int
    max_response_body_mb: float
    metrics: dict[str, Any]
    limits: dict[str, Any]
    log_queue: dict[str, Any]

    def __init__(self, **settings: Any) -> None:
        if "check_api_key" in settings:
            # The reference's earlier name of `api_key_check`.
            if "api_key_check" in settings:
                raise TypeError("give api_key_check or check_api_key, not both")
            settings["api_key_check"] = settings.pop("check_api_key")
        unknown = sorted(set(settings) - set(_FIELDS))
        if unknown:
            raise TypeError(
                f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(_FIELDS)}"
            )
        if "connections" not in settings:
            raise TypeError("Config() needs `connections`")
        for name, default in _FIELDS.items():
            value = settings[name] if name in settings else default()
            setattr(self, name, value)
        if not isinstance(self.connections, Mapping):
            raise TypeError("connections must be a dict of name -> connection")
        if self.groups is None or self.groups == {}:
            self.groups = {"default": Group()}
        if not isinstance(self.groups, Mapping):
            raise TypeError("groups must be a dict of name -> Group")
        self.groups = {name: _group(name, group) for name, group in dict(self.groups).items()}
        if isinstance(self.model_listing_mode, str):
            # An unknown mode is reported with the file and key when the config is checked.
            with contextlib.suppress(ValueError):
                self.model_listing_mode = ModelListingMode(self.model_listing_mode)
        for name in ("loggers", "before", "trusted_proxies"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                setattr(self, name, list(value))
        self._source: str | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, config_path: str | os.PathLike[str] = "config.toml") -> Config:
        """Load a config file of any format: ``.toml``, ``.json``, ``.yml``/``.yaml``
        (read, ``env:``-substituted and checked by the same code as the native
        binary) or ``.py`` (executed; its ``config`` is returned).
        """
        path = os.fspath(config_path)
        if path.lower().endswith(".py"):
            from ._bridge import load_python_config

            try:
                return load_python_config(path)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from e
            except Exception as e:
                raise ConfigError(f"{path}: {type(e).__name__}: {e}") from e
        return cls._from_tree(_lm_proxy.read_config(path), path)

    @classmethod
    def _from_tree(cls, tree: Mapping[str, Any], source: str | None) -> Config:
        config = cls(**dict(tree))
        config._source = source
        return config

    def check(self) -> None:
        """Check the settings as serving would (routing, groups, connection tables),
        without importing or calling anything. Raises :class:`ConfigError`."""
        _lm_proxy.check_config(self)

    @property
    def source(self) -> str | None:
        """The file this config came from, if any."""
        return self._source

    # ------------------------------------------------------------------ comparing

    def to_dict(self) -> dict[str, Any]:
        """The settings as a dict (``Group`` objects as dicts; objects as they are)."""
        out = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if name == "groups":
                value = {k: g.to_dict() for k, g in value.items()}
            elif isinstance(value, enum.Enum):
                value = value.value
            out[name] = value
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"Config({shown})"

    # ------------------------------------------------------------------ to the core

    def _to_tree(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The settings as JSON-like data for the Rust core, and the objects in them.

        Each object (a callable, an instance, a class) is replaced by a reference
        string that the core's resolver looks up; the built-ins of this package
        become their ``{"class": "lm_proxy....", **kwargs}`` tables.
        """
        token = secrets.token_hex(6)
        objects: dict[str, Any] = {}

        def ref(obj: Any) -> str:
            key = f"{_lm_proxy.OBJECT_REF_PREFIX}{token}:{len(objects)}"
            objects[key] = obj
            return key

        def convert(value: Any) -> Any:
            if value is None or isinstance(value, (bool, int, float)):
                return value
            if isinstance(value, enum.Enum):
                return convert(value.value)
            if isinstance(value, str):
                return str(value)
            if isinstance(value, os.PathLike):
                return os.fspath(value)
            if isinstance(value, Group):
                return value.to_dict()
            if isinstance(value, Mapping):
                return {str(k): convert(v) for k, v in value.items()}
            if isinstance(value, (list, tuple, set, frozenset)):
                return [convert(v) for v in value]
            from ._builtins import builtin_table

            table = builtin_table(value)
            if table is not None:
                return convert(table)
            return ref(value)

        tree = {name: convert(getattr(self, name)) for name in _FIELDS}
        return tree, objects


def _group(name: str, value: Any) -> Group:
    if isinstance(value, Group):
        return value
    if isinstance(value, Mapping):
        try:
            return Group(**dict(value))
        except TypeError as e:
            raise TypeError(f"groups.{name}: {e}") from None
    raise TypeError(f"groups.{name} must be a Group or a dict, not {type(value).__name__}")


def load(config_path: str | os.PathLike[str] = "config.toml") -> Config:
    """Same as :meth:`Config.load`."""
    return Config.load(config_path)
