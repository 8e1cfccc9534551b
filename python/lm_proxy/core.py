"""The reference's ``lm_proxy.core`` helpers that have a meaning outside its FastAPI
app, for extension code that imports them.

The server itself is the Rust core: these functions do in Python what it does, for
code that calls them directly. ``check`` and ``models_endpoint.models`` take any
request object with ``.headers`` (a mapping) and ``.client.host``, such as a
Starlette request or :class:`lm_proxy.base_types.HTTPRequest`; errors are
:class:`~lm_proxy.errors.OpenAIHTTPException` with the status and body the server
answers with (the reference raised FastAPI's ``HTTPException``).

Not here, because they belong to the reference's FastAPI app: ``chat_completions``,
``process_stream``, ``print_llm_request`` (see the README's differences).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import inspect
import logging
import threading
from datetime import datetime
from typing import Any

from .base_types import RequestContext
from .bootstrap import env
from .config import Config
from .errors import OpenAIHTTPException
from .utils import header_value, resolve_instance_or_callable

__all__ = [
    "api_key_id",
    "check",
    "fail_if_service_disabled",
    "log",
    "log_non_blocking",
    "parse_routing_rule",
    "read_api_key",
    "resolve_connection_and_model",
]

log_ = logging.getLogger(__name__)


def parse_routing_rule(rule: str, config: Config) -> tuple[str, str]:
    """``"connection.model"`` (or ``"connection.*"``) as ``(connection, model)``.

    Raises ValueError for a rule without a dot or naming an unknown connection.
    """
    if "." not in rule:
        raise ValueError(
            f"Invalid routing rule '{rule}'. Expected format: 'connection.model' or 'connection.*'"
        )
    connection, model = rule.split(".", 1)
    if connection not in config.connections:
        raise ValueError(
            f"Routing selected unknown connection '{connection}'. "
            f"Defined connections: {', '.join(config.connections) or '(none)'}"
        )
    return connection, model


def resolve_connection_and_model(config: Config, external_model: str) -> tuple[str, str]:
    """The connection and upstream model for a client's model name: the first routing
    rule (in config order) whose shell-style pattern matches the whole name, case
    sensitively; ``connection.*`` passes the name through. Raises ValueError when no
    rule matches.
    """
    for pattern, rule in config.routing.items():
        if fnmatch.fnmatchcase(external_model, pattern):
            connection, model = parse_routing_rule(rule, config)
            return connection, external_model if model == "*" else model
    raise ValueError(
        f"No routing rule matched model '{external_model}'. "
        'Add a catch-all rule like "*" = "openai.gpt-3.5-turbo" if desired.'
    )


def read_api_key(request: Any) -> str:
    """The key of ``Authorization: Bearer <key>`` (scheme case-insensitive), else ``""``."""
    auth = header_value(request, "authorization")
    if not auth:
        return ""
    scheme, _, rest = auth.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else ""


def api_key_id(api_key: str | None) -> str | None:
    """The key's id as the server computes it: HMAC-SHA256 under ``encryption_key``,
    hex (the reference used md5 of key + encryption key)."""
    if not api_key:
        return None
    return hmac.new(_config().encryption_key.encode(), api_key.encode(), hashlib.sha256).hexdigest()


def fail_if_service_disabled() -> None:
    """Raise the server's 503 ``service_disabled`` error when ``enabled`` is false."""
    if not _config().enabled:
        raise OpenAIHTTPException(
            "The service is disabled.",
            status_code=503,
            error_type="service_unavailable",
            code="service_disabled",
        )


async def check(request: Any) -> tuple[str, str, dict[str, Any]]:
    """Check the request's client key with the config's ``api_key_check``.

    Returns ``(group, api_key, user_info)``; an invalid key raises the server's
    ``invalid_api_key`` error (status ``invalid_api_key_status``, 401 by default).
    """
    config = _config()
    api_key = read_api_key(request)
    key_check = _resolved(config, "api_key_check")
    result = key_check(api_key) if key_check is not None else None
    if inspect.isawaitable(result):
        result = await result
    user_info: Any = {}
    if isinstance(result, tuple):
        group, user_info = result
    else:
        group = result
    if not group:
        raise OpenAIHTTPException(
            "Incorrect API key provided: your API key is invalid, expired, or revoked.",
            status_code=config.invalid_api_key_status,
            error_type="invalid_request_error",
            code="invalid_api_key",
        )
    return group, api_key, user_info if user_info is not None else {}


async def log(request_ctx: RequestContext) -> None:
    """Hand the context to each of the config's loggers (in Python): sync loggers
    are called in turn, async ones run as tasks. A logger's error is logged, not
    raised."""
    if request_ctx.duration is None and request_ctx.created_at is not None:
        now = datetime.now(request_ctx.created_at.tzinfo)
        request_ctx.duration = (now - request_ctx.created_at).total_seconds()
    for logger in _resolved(_config(), "loggers"):
        try:
            result = logger(request_ctx)
            if inspect.isawaitable(result):
                _keep(asyncio.ensure_future(result))
        except Exception:
            log_.exception("Error in logger %r", logger)


async def log_non_blocking(request_ctx: RequestContext) -> asyncio.Task[None] | None:
    """Schedule :func:`log` as a task and return it (None when there are no loggers)."""
    if not _config().loggers:
        return None
    task = asyncio.create_task(log(request_ctx))
    _keep(task)
    return task


# ---------------------------------------------------------------------- internals

# Tasks are kept until done: the event loop holds only weak references to them.
_tasks: set[asyncio.Future[Any]] = set()


def _keep(task: asyncio.Future[Any]) -> None:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _config() -> Config:
    config = env.config
    if config is None:
        raise RuntimeError(
            "no lm-proxy config: start a server or call lm_proxy.bootstrap.bootstrap() first"
        )
    return config


# Config values resolved to Python objects once per config (loggers keep state).
_resolved_cache: dict[int, tuple[Config, dict[str, Any]]] = {}
_resolved_lock = threading.Lock()


def _resolved(config: Config, name: str) -> Any:
    with _resolved_lock:
        entry = _resolved_cache.get(id(config))
        if entry is None or entry[0] is not config:
            if len(_resolved_cache) >= 8:
                _resolved_cache.clear()
            entry = (config, {})
            _resolved_cache[id(config)] = entry
        objects = entry[1]
        if name not in objects:
            value = getattr(config, name)
            if name == "loggers":
                objects[name] = [
                    resolve_instance_or_callable(v, debug_name="logger") for v in value
                ]
            else:
                objects[name] = resolve_instance_or_callable(value, debug_name=name)
        return objects[name]
