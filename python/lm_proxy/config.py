"""The config as Python objects: ``Config`` and ``Group``, pydantic v2 models with the
reference's fields and defaults, whose values may be Python callables.

A ``.py`` config file builds a ``Config`` and exports it as ``config``; TOML, JSON
and YAML files load into the same class with :meth:`Config.load`, so equivalent
files give equal objects. Serving a ``Config`` hands it to the Rust core as a JSON
tree (see ``_to_tree``), where it is checked exactly like a config file: the models
check the shapes the reference's models checked, the core everything else.

As in the reference, ``model_dump``, ``model_validate``, ``model_copy`` and
``model_json_schema`` work; ``Config.model_validate(config.model_dump())`` is an
equal config that serves the same gateway.
"""

from __future__ import annotations

import enum
import os
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from . import _lm_proxy
from .errors import ConfigError

__all__ = ["DEFAULT_KEY_CHECK", "Config", "Group", "ModelListingMode"]

DEFAULT_KEY_CHECK = "lm_proxy.api_key_check.check_api_key_in_config"


class ModelListingMode(enum.StrEnum):
    """How ``GET /models`` shows routing patterns."""

    AS_IS = "as_is"
    IGNORE_WILDCARDS = "ignore_wildcards"
    EXPAND_WILDCARDS = "expand_wildcards"


class Group(BaseModel):
    """A group of client keys and the connections they may use.

    ``allowed_connections`` is ``"*"``, comma-separated names, or a list of names.
    ``connections=`` is accepted as another name for it (the reference's examples
    write ``Group(connections="*")``).
    """

    model_config = ConfigDict(extra="forbid")

    api_keys: list[str] = Field(default_factory=list)
    allowed_connections: str | list[str] = "*"
    # This project's addition: the group's spend cap, as a config file writes it
    # (``{"usd": 50, "period": "month"}`` or ``tokens``; needs ``database``).
    budget: dict[str, Any] | None = None

    def __init__(
        self,
        api_keys: list[str] | None = None,
        allowed_connections: str | list[str] | None = None,
        **data: Any,
    ) -> None:
        # Positional arguments as before this was a pydantic model.
        if api_keys is not None:
            data["api_keys"] = api_keys
        if allowed_connections is not None:
            data["allowed_connections"] = allowed_connections
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        # Also for model_validate, which does not go through __init__.
        if isinstance(data, Mapping):
            data = dict(data)
            if "connections" in data:
                data["allowed_connections"] = data.pop("connections")
            if data.get("api_keys", ()) is None:
                data["api_keys"] = []
        return data

    @model_serializer(mode="wrap")
    def _without_unset_budget(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A group without a budget dumps as the reference's did (two keys).
        dumped = handler(self)
        if isinstance(dumped, dict) and dumped.get("budget") is None:
            dumped.pop("budget", None)
        return dumped

    def allows_connecting_to(self, connection_name: str) -> bool:
        names = self.allowed_connections
        if isinstance(names, str):
            names = names.split(",")
        names = [n.strip() for n in names if n.strip()]
        return "*" in names or connection_name in names

    def to_dict(self) -> dict[str, Any]:
        allowed = self.allowed_connections
        out: dict[str, Any] = {
            "api_keys": list(self.api_keys),
            "allowed_connections": list(allowed) if not isinstance(allowed, str) else allowed,
        }
        if self.budget is not None:
            out["budget"] = dict(self.budget)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Group) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        budget = "" if self.budget is None else f", budget={self.budget!r}"
        return (
            f"Group(api_keys={self.api_keys!r}, "
            f"allowed_connections={self.allowed_connections!r}{budget})"
        )


def _default_trusted_proxies() -> list[str]:
    return ["127.0.0.0/8", "::1/128"]


# A config value that names code: a dotted path, a `{"class": ..., **kwargs}` table or
# the object itself (the reference's `Union[str, Callable, dict]`).
CodeValue = Union[str, dict[str, Any], Callable[..., Any]]  # noqa: UP007 - pydantic reads it
# Numbers of this project's settings keep the type they were given (the core wants
# whole numbers for some); the core checks the ranges.
Number = Union[int, float]  # noqa: UP007

# Fields whose values may hold code objects; JSON dumps write the built-ins as tables.
_CODE_FIELDS = ("connections", "api_key_check", "loggers", "components", "before")


class Config(BaseModel):
    """Everything a gateway needs; keyword arguments only, unknown keys rejected.

    Values that name code (``api_key_check``, ``before``, ``loggers``,
    ``components``, connections) may be dotted paths, ``{"class": ..., **kwargs}``
    dicts, or the Python objects themselves: functions (sync or async), async
    generators, callable instances, or the built-ins of :mod:`lm_proxy.handlers`,
    :mod:`lm_proxy.api_key_check`, :mod:`lm_proxy.loggers` and
    :mod:`lm_proxy.strategies`, which run in Rust.
    """

    model_config = ConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        # `model_listing_mode` and `model_info` are the reference's names.
        protected_namespaces=(),
    )

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = 8000
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    api_prefix: str = "/v1"
    dev_autoreload: bool = False
    connections: dict[str, CodeValue]
    routing: dict[str, str] = Field(default_factory=dict)
    groups: dict[str, Group] = Field(default_factory=lambda: {"default": Group()})
    api_key_check: CodeValue | None = DEFAULT_KEY_CHECK
    loggers: list[CodeValue] = Field(default_factory=list)
    encryption_key: str = "Eclipse"
    model_listing_mode: ModelListingMode | str = ModelListingMode.AS_IS
    model_info: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Components may be any object (a database, a client), not only callables.
    components: dict[str, Any] = Field(default_factory=dict)
    before: list[CodeValue] = Field(default_factory=list)
    # This project's additions.
    max_request_body_mb: Number = 32
    model_listing_cache_seconds: Number = 300
    trusted_proxies: list[str] = Field(default_factory=_default_trusted_proxies)
    shutdown_grace_seconds: Number = 30
    invalid_api_key_status: int = 401
    max_response_body_mb: Number = 64
    # Tables whose keys and defaults the core defines (README: `[metrics]`,
    # `[limits]`, `[log_queue]`); empty means "the defaults".
    metrics: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    log_queue: dict[str, Any] = Field(default_factory=dict)
    # The usage ledger, prices and the admin API (README, "Usage, budgets and
    # keys"): tables as a config file writes them; ``None``: no such section.
    database: dict[str, Any] | None = None
    pricing: dict[str, Any] = Field(default_factory=dict)
    admin: dict[str, Any] | None = None

    _source: str | None = PrivateAttr(default=None)

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)

    @model_validator(mode="before")
    @classmethod
    def _settings(cls, data: Any) -> Any:
        # TypeError (not a ValidationError) for the mistakes a call makes, as before
        # Config was a pydantic model; model_validate goes through here too.
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if "check_api_key" in data:
            # The reference's earlier name of `api_key_check`.
            if "api_key_check" in data:
                raise TypeError("give api_key_check or check_api_key, not both")
            data["api_key_check"] = data.pop("check_api_key")
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise TypeError(
                f"unknown config key(s): {', '.join(unknown)}; "
                f"known keys: {', '.join(cls.model_fields)}"
            )
        if "connections" not in data:
            raise TypeError("Config() needs `connections`")
        if data.get("groups") is None or data.get("groups") == {}:
            data["groups"] = {"default": Group()}
        for name in ("ssl_keyfile", "ssl_certfile"):
            if isinstance(data.get(name), os.PathLike):
                data[name] = os.fspath(data[name])
        return data

    @field_validator("model_listing_mode")
    @classmethod
    def _listing_mode(cls, value: ModelListingMode | str) -> ModelListingMode | str:
        # An unknown mode is reported with the file and key when the config is checked.
        try:
            return ModelListingMode(value)
        except ValueError:
            return value

    @field_serializer(*_CODE_FIELDS, when_used="json")
    def _code_as_json(self, value: Any) -> Any:
        # The built-ins as the tables a config file would hold, so that a JSON dump
        # loads back into the same gateway; other objects stay for pydantic to report.
        return _tables(value)

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
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "groups":
                value = {k: g.to_dict() for k, g in value.items()}
            elif isinstance(value, enum.Enum):
                value = value.value
            out[name] = value
        return out

    def __eq__(self, other: object) -> bool:
        # The settings only: where a config was loaded from does not matter.
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

        tree = {name: convert(getattr(self, name)) for name in type(self).model_fields}
        return tree, objects


def _tables(value: Any) -> Any:
    """``value`` with the package's built-ins replaced by their config tables."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {k: _tables(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tables(v) for v in value]
    from ._builtins import builtin_table

    table = builtin_table(value)
    return value if table is None else _tables(table)


def load(config_path: str | os.PathLike[str] = "config.toml") -> Config:
    """Same as :meth:`Config.load`."""
    return Config.load(config_path)
