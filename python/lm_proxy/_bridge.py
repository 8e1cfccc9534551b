"""Plumbing between the Rust core and Python code. Not public API.

The Rust side (src/python/) calls these functions: the bridge's asyncio loop thread,
calling user code with the server's ``env`` current, telling what a callable or a
returned value is, building request contexts, loading ``.py`` configs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import dataclasses
import enum
import importlib.util
import inspect
import logging
import sys
import threading
import traceback
import uuid
import warnings
import weakref
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import _lm_proxy
from .base_types import (
    Address,
    ChatCompletionRequest,
    Headers,
    HTTPRequest,
    LLMResponse,
    RequestContext,
)
from .bootstrap import Env, _current, _Default
from .config import Config
from .errors import ConfigError, OpenAIHTTPException
from .utils import add_import_dirs, resolve_callable

log = logging.getLogger("lm_proxy")

# ---------------------------------------------------------------------------- the loop

_loops: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []
_servers: weakref.WeakSet[Any] = weakref.WeakSet()
_background: set[asyncio.Task[Any]] = set()


def start_loop(fd: int, drain: Any) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """Start the bridge's event loop on a daemon thread; ``drain`` runs whenever
    ``fd`` (the Rust job queue's wake-up socket) is readable."""
    loop = asyncio.new_event_loop()
    loop.add_reader(fd, drain)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            _close_loop(loop)

    thread = threading.Thread(target=run, name="lm-proxy-asyncio", daemon=True)
    thread.start()
    ready.wait()
    _loops.append((loop, thread))
    return loop, thread


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    except Exception:  # pragma: no cover - best effort at exit
        log.debug("closing the lm-proxy event loop", exc_info=True)
    finally:
        loop.close()


def stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, timeout: float) -> None:
    if loop.is_closed():
        return
    loop.call_soon_threadsafe(loop.stop)
    if thread is not threading.current_thread():
        thread.join(timeout)


def register_server(server: Any) -> None:
    _servers.add(server)


@atexit.register
def _at_exit() -> None:
    # Servers first (they may still call into the loop), then the loop; last, the
    # request log lines still waiting in the stderr batch (up to 100 ms of them).
    for server in list(_servers):
        with contextlib.suppress(BaseException):  # exiting anyway
            server.stop(grace=1.0)
    try:
        _lm_proxy.stop_bridge(2.0)
    finally:
        # Sync calls still running (a handler, a connection that timed out but whose
        # function still runs) must end before the interpreter finalizes under them.
        if not _lm_proxy.drain_python_calls(5.0):
            warnings.warn("lm-proxy: Python calls still running at exit", stacklevel=1)
        _lm_proxy.flush_request_log()


# --------------------------------------------------------------- calling user code


def kind(obj: Any) -> str:
    """``async``, ``asyncgen``, ``gen`` or ``sync``: how ``obj`` is to be called."""
    for candidate in (obj, getattr(obj, "__call__", None)):  # noqa: B004
        if candidate is None:
            continue
        if inspect.isasyncgenfunction(candidate):
            return "asyncgen"
        if inspect.iscoroutinefunction(candidate):
            return "async"
        if inspect.isgeneratorfunction(candidate):
            return "gen"
    return "sync"


def call(env: Env, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``fn(*args, **kwargs)`` with ``env`` as the current environment."""
    token = _current.set(env)
    try:
        return fn(*args, **kwargs)
    finally:
        _current.reset(token)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def spawn(loop: asyncio.AbstractEventLoop, env: Env, awaitable: Any) -> asyncio.Future[Any]:
    """A task running ``awaitable`` on ``loop`` with ``env`` current (a finished future
    for a value that is not awaitable)."""
    if not inspect.isawaitable(awaitable):
        future = loop.create_future()
        future.set_result(awaitable)
        return future
    context = contextvars.copy_context()
    context.run(_current.set, env)
    if not asyncio.iscoroutine(awaitable):
        awaitable = _await(awaitable)
    return loop.create_task(awaitable, context=context)


def set_future(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def abandon(
    loop: asyncio.AbstractEventLoop, env: Env, iterator: Any, pending: asyncio.Future[Any] | None
) -> None:
    """Close an async iterator that will not be read on: cancel the step in flight,
    then ``aclose()`` it, so that the generator's ``finally`` blocks run."""

    async def close() -> None:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):  # cancelled on purpose
                await pending
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                log.warning("closing a Python stream failed", exc_info=True)

    context = contextvars.copy_context()
    context.run(_current.set, env)
    task = loop.create_task(close(), context=context)
    _background.add(task)
    task.add_done_callback(_background.discard)


def close_iterator(env: Env, iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        call(env, close, (), {})


def classify(value: Any, yielded: bool) -> tuple[str, Any]:
    """What a connection returned (or yielded): see src/python/provider.rs."""
    if value is None:
        return "none", None
    if isinstance(value, str):
        completion = None if yielded else completion_of_text(value)
        if completion is not None:
            return "completion", completion
        return "text", str(value)
    if isinstance(value, bytes):
        return "text", value.decode("utf-8", "replace")
    if not isinstance(value, Mapping) and hasattr(value, "model_dump"):
        value = value.model_dump(exclude_none=True)
    if isinstance(value, Mapping):
        value = dict(value)
        if "choices" in value:
            return ("chunk" if yielded else "completion"), value
        return ("delta" if yielded else "message"), value
    if inspect.isawaitable(value):
        return "await", value
    if hasattr(value, "__anext__"):
        return "aiter", value
    if isinstance(value, Iterator):
        return "iter", value
    raise TypeError(
        f"a connection {'yielded' if yielded else 'returned'} {type(value).__name__}; expected "
        "text, an OpenAI-shaped dict, or (to stream) an async generator or iterator"
    )


# What a str subclass may carry besides its text (ai-microcore's LLMResponse sets the
# OpenAI answer's fields as attributes): the completion's top-level fields.
_COMPLETION_FIELDS = ("id", "object", "created", "model", "system_fingerprint", "service_tier")


def _plain(value: Any) -> Any:
    """A JSON tree from what a connection's answer holds (pydantic models included)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        try:
            return _plain(value.model_dump(exclude_none=True, mode="json"))
        except TypeError:
            return _plain(value.model_dump())
    return _plain(to_jsonable(value))


def _carried(value: str, name: str) -> Any:
    # Instance attributes first: microcore's ExtendedString answers unknown attribute
    # names with functions from its caller's globals.
    attrs = getattr(value, "__dict__", None) or {}
    if name in attrs:
        return attrs[name]
    try:
        return getattr(value, name, None)
    except Exception:
        return None


def completion_of_text(value: str) -> dict[str, Any] | None:
    """The whole ``chat.completion`` a ``str`` answer carries, or None for plain text.

    Our ``LLMResponse`` keeps it whole; other ``str`` subclasses (ai-microcore's
    ``LLMResponse``, as ``mc.env().llm_async_function`` returns it) carry ``choices``
    (message, tool calls, finish reasons) and ``usage`` as attributes. One that carries
    only ``usage`` (microcore's streamed answers) gives its text as choice 0.
    """
    if type(value) is str:
        return None
    completion = value.__dict__.get("_lm_proxy_completion")
    if isinstance(completion, Mapping):
        return dict(completion)
    choices = _carried(value, "choices")
    usage = _carried(value, "usage")
    raw = _carried(value, "response")
    raw_usage = _carried(raw, "usage") if raw is not None and not isinstance(raw, str) else None
    if raw_usage is None and isinstance(raw, Mapping):
        raw_usage = raw.get("usage")
    if not isinstance(choices, (list, tuple)) and usage is None:
        return None
    out: dict[str, Any] = {}
    for name in _COMPLETION_FIELDS:
        field_value = _carried(value, name)
        if isinstance(field_value, (str, int, float)) and not isinstance(field_value, bool):
            out[name] = field_value
    if isinstance(choices, (list, tuple)) and choices:
        out["choices"] = _plain(list(choices))
    else:
        out["choices"] = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": str(value)},
                "finish_reason": "stop",
            }
        ]
    # The upstream's own usage (OpenAI's shape) over microcore's normalized copy.
    usage = raw_usage if raw_usage is not None else usage
    if usage is not None:
        out["usage"] = _plain(usage)
    return out


def to_jsonable(o: Any) -> Any:
    """A JSON-friendly stand-in for an object the Rust side cannot convert itself."""
    if isinstance(o, (datetime, date, time)):
        return o.isoformat()
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, Decimal):
        return float(o)
    if isinstance(o, uuid.UUID):
        return str(o)
    if isinstance(o, Mapping):
        return dict(o)
    if isinstance(o, BaseException):
        if isinstance(o, OpenAIHTTPException):
            return o.to_dict()
        return {"type": type(o).__name__, "message": str(o)}
    if hasattr(o, "model_dump"):
        try:
            return o.model_dump(mode="json")
        except TypeError:
            return o.model_dump()
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (list, tuple, set, frozenset)):
        return list(o)
    return str(o)


def format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()


# ----------------------------------------------------------------- resolving config


def resolve(
    target: Any, kwargs: dict[str, Any], class_table: bool, base_dir: str, need_callable: bool
) -> Any:
    """A config value naming code as the object to use (the reference's rules)."""
    if isinstance(target, str):
        add_import_dirs(base_dir or None)
        target = resolve_callable(target)
    if class_table:
        obj = target(**kwargs)
    elif inspect.isclass(target):
        obj = target()
    else:
        obj = target
    if need_callable and not callable(obj):
        raise TypeError(f"{obj!r} is not callable")
    return obj


def load_python_config(path: str) -> Config:
    """Execute a ``.py`` config and return its ``config``."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"cannot read config file: {file} does not exist")
    add_import_dirs(file.resolve().parent)
    spec = importlib.util.spec_from_file_location("config_module", file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load {file} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules["config_module"] = module
    spec.loader.exec_module(module)
    config = getattr(module, "config", None)
    if isinstance(config, Mapping):
        config = Config(**dict(config))
    if not isinstance(config, Config):
        raise ConfigError(
            "a .py config must define `config = lm_proxy.config.Config(...)`"
            + ("" if config is None else f", found {type(config).__name__}")
        )
    config._source = str(file)
    return config


def config_from_tree(tree: dict[str, Any], path: str) -> Config:
    return Config._from_tree(tree, path)


# ------------------------------------------------------------------------ contexts


def handler_context(fields: dict[str, Any], headers: list[tuple[str, str]]) -> RequestContext:
    """The context a Python ``before`` handler gets."""
    model = fields["model"]
    ctx = RequestContext(
        id=fields["id"],
        endpoint=fields.get("endpoint"),
        request=ChatCompletionRequest.wrap(fields["request"]),
        http_request=HTTPRequest(
            headers=Headers(headers), client=Address(fields["remote_addr"], None)
        ),
        group=fields["group"],
        connection=fields["connection"],
        model=model,
        llm_params={"model": model, **fields["llm_params"]},
        api_key_id=fields["api_key_id"],
        remote_addr=fields["remote_addr"],
        created_at=datetime.fromtimestamp(fields["created_at"], tz=UTC),
        duration=fields["duration"],
        user_info=fields["user_info"] if fields["user_info"] is not None else {},
        extra=fields["extra"],
    )
    ctx._lm_proxy_model = model  # type: ignore[attr-defined]
    ctx._lm_proxy_user_info_none = fields["user_info"] is None  # type: ignore[attr-defined]
    return ctx


def handler_changes(ctx: RequestContext) -> dict[str, Any]:
    """What a handler left in the context, for the Rust side to apply."""
    original = getattr(ctx, "_lm_proxy_model", None)
    params = dict(ctx.llm_params or {})
    model = params.pop("model", original)
    if model == original and ctx.model != original:
        model = ctx.model
    user_info = ctx.user_info
    if user_info == {} and getattr(ctx, "_lm_proxy_user_info_none", False):
        user_info = None
    request = ctx.request
    if request is not None and not isinstance(request, Mapping):
        request = to_jsonable(request)
    return {
        "llm_params": params,
        "model": model,
        "request": dict(request or {}),
        "extra": dict(ctx.extra or {}),
        "user_info": user_info,
    }


def log_context(entry: dict[str, Any]) -> RequestContext:
    """The context a Python logger gets, rebuilt from the log entry."""
    created = _timestamp(entry.get("created_at"))
    created_at = created if isinstance(created, datetime) else None
    error = entry.get("error")
    if isinstance(error, Mapping):
        error = OpenAIHTTPException(
            str(error.get("message") or ""),
            status_code=int(error.get("status") or 500),
            error_type=str(error.get("type") or "server_error"),
            code=error.get("code"),
            param=error.get("param"),
        )
    response = entry.get("response")
    request = entry.get("request")
    user_info = entry.get("user_info")
    return RequestContext(
        id=entry.get("id"),
        endpoint=entry.get("endpoint"),
        request=ChatCompletionRequest.wrap(request) if isinstance(request, Mapping) else None,
        http_request=None,
        response=_response(response),
        error=error,
        group=entry.get("group"),
        connection=entry.get("connection"),
        model=entry.get("model"),
        llm_params=dict(entry.get("llm_params") or {}),
        api_key_id=entry.get("api_key_id"),
        remote_addr=entry.get("remote_addr"),
        created_at=created_at,
        duration=entry.get("duration"),
        user_info=user_info if user_info is not None else {},
        extra=dict(entry.get("extra") or {}),
    )


def _response(value: Any) -> Any:
    """The answer as the reference's loggers got it: its text carrying the completion."""
    if isinstance(value, Mapping):
        return LLMResponse.from_completion(value)
    return value


def _timestamp(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def log_entry(entry: Any, kinds: list[tuple[str, str]]) -> Any:
    """A log entry as a Python log writer gets it: the answer an ``LLMResponse`` and
    timestamps timezone-aware ``datetime`` objects, as the reference's ``BaseLogger``
    handed them over. ``kinds`` names those fields (``response`` / ``timestamp``)."""
    if not isinstance(entry, dict):
        return entry
    for key, field_kind in kinds:
        if key not in entry:
            continue
        if field_kind == "response":
            entry[key] = _response(entry[key])
        elif field_kind == "timestamp":
            entry[key] = _timestamp(entry[key])
    return entry


# ---------------------------------------------------------------------- environment


def new_env() -> Env:
    return Env()


_MISSING = object()


def publish_env(
    env: Env,
    *,
    config: Any = _MISSING,
    connections: Any = _MISSING,
    components: Any = _MISSING,
    debug: Any = _MISSING,
    make_default: bool = False,
) -> None:
    if config is not _MISSING:
        env.config = config
    if connections is not _MISSING:
        env.connections = connections
    if components is not _MISSING:
        env.components = components
    if debug is not _MISSING:
        env.debug = bool(debug)
    if make_default:
        _Default.env = env


async def call_connection(conn: Any, messages: Any, params: dict[str, Any]) -> LLMResponse:
    """``await env.connections[name](messages, **params)`` for a Rust connection."""
    callback = params.pop("callback", None)
    if callback is None and not params.get("stream"):
        return LLMResponse.from_completion(await conn.complete(messages, params))
    params.pop("stream", None)
    parts: list[str] = []
    # The stream's identity, choice 0's finish reason and the usage, so that the
    # answer carries a completion as a non-streamed one does.
    completion: dict[str, Any] = {}
    finish_reason = None
    tool_calls: dict[int, dict[str, Any]] = {}
    async for chunk in conn.stream(messages, params):
        for key in ("id", "created", "model"):
            if key in chunk and key not in completion:
                completion[key] = chunk[key]
        if chunk.get("usage"):
            completion["usage"] = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            finish_reason = choice.get("finish_reason") or finish_reason
            _add_tool_call_deltas(tool_calls, (choice.get("delta") or {}).get("tool_calls"))
            text = (choice.get("delta") or {}).get("content")
            if text:
                parts.append(text)
                if callback is not None:
                    result = callback(text)
                    if inspect.isawaitable(result):
                        await result
    text = "".join(parts)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = [tool_calls[i] for i in sorted(tool_calls)]
    completion["object"] = "chat.completion"
    completion["choices"] = [
        {"index": 0, "message": message, "finish_reason": finish_reason or "stop"}
    ]
    return LLMResponse(text, completion)


def _add_tool_call_deltas(calls: dict[int, dict[str, Any]], deltas: Any) -> None:
    """Streamed tool-call pieces put together by their ``index`` (arguments joined)."""
    for delta in deltas or []:
        if not isinstance(delta, Mapping):
            continue
        call = calls.setdefault(
            int(delta.get("index") or 0),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""


class _Done:
    """What the stream ``callback`` returns: awaitable, already done, so that both
    ``callback(piece)`` and ``await callback(piece)`` work."""

    __slots__ = ()

    def __await__(self) -> Iterator[None]:
        return iter(())

    def __repr__(self) -> str:
        return "<done>"


DONE = _Done()
