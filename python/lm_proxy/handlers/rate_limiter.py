"""``lm_proxy.handlers.RateLimiter``."""

from __future__ import annotations

import enum
import math
import threading
import time
from collections import OrderedDict
from typing import Any

from .._builtins import Builtin
from ..errors import OpenAIHTTPException


class RateLimitScope(enum.StrEnum):
    API_KEY = "api_key"
    CONNECTION = "connection"
    GROUP = "group"
    IP = "ip"
    GLOBAL = "global"


class RateLimiter(Builtin):
    """Sliding-window rate limit: over ``max_requests`` per ``window_seconds`` (per
    key, IP, connection, group or globally) the answer is 429 with ``Retry-After``.
    ``max_tokens`` limits the tokens (prompt + completion, from the answers' usage)
    spent in the window too; ``max_requests`` is 60 unless only ``max_tokens`` is
    given.

    As a config value it runs in Rust. Called from Python (``await limiter(ctx)``, as
    the reference's) it keeps its own request windows and raises the same
    :class:`~lm_proxy.errors.OpenAIHTTPException` (429) over the limit; it does not
    see answers there, so ``max_tokens`` applies only to the config value.
    """

    target = "lm_proxy.handlers.RateLimiter"

    def __init__(
        self,
        max_requests: int | None = None,
        window_seconds: float = 60.0,
        per: RateLimitScope | str = RateLimitScope.API_KEY,
        max_buckets: int = 10000,
        max_tokens: int | None = None,
    ) -> None:
        limits: dict[str, int] = {}
        if max_requests is not None or max_tokens is None:
            limits["max_requests"] = 60 if max_requests is None else max_requests
        if max_tokens is not None:
            limits["max_tokens"] = max_tokens
        super().__init__(
            window_seconds=window_seconds,
            per=RateLimitScope(per).value,
            max_buckets=max_buckets,
            **limits,
        )

    _runtime_attrs = ("_buckets", "_lock")

    def _init_runtime(self) -> None:
        # bucket key -> admission times (monotonic clock), least recently used first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _bucket(self, ctx: Any) -> str:
        per = RateLimitScope(self._args["per"])
        if per is RateLimitScope.GLOBAL:
            return ""
        field = {
            RateLimitScope.API_KEY: "api_key_id",
            RateLimitScope.IP: "remote_addr",
            RateLimitScope.CONNECTION: "connection",
            RateLimitScope.GROUP: "group",
        }[per]
        return str(getattr(ctx, field, None) or "")

    async def __call__(self, ctx: Any) -> None:
        if self._args.get("max_requests") is None:
            return  # tokens only: counted where answers are seen (the config value)
        max_requests = int(self._args["max_requests"])
        window = float(self._args["window_seconds"])
        key = self._bucket(ctx)
        now = time.monotonic()
        cutoff = now - window
        with self._lock:
            admitted = [t for t in self._buckets.get(key, ()) if t > cutoff]
            if len(admitted) >= max_requests:
                self._buckets[key] = admitted
                # Whole seconds, rounded up, never 0 (a client retrying at once would fail).
                retry_after = max(math.ceil(admitted[0] - cutoff), 1) if admitted else 1
                raise OpenAIHTTPException(
                    message=f"Rate limit exceeded: {max_requests}/{_seconds(window)}s",
                    status_code=429,
                    error_type="rate_limit_error",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(retry_after)},
                )
            admitted.append(now)
            self._buckets[key] = admitted
            self._buckets.move_to_end(key)
            limit = max(int(self._args["max_buckets"]), 1)
            if len(self._buckets) > limit:
                # Expired windows first, then the least recently used.
                for name in [k for k, v in self._buckets.items() if not v or v[-1] <= cutoff]:
                    del self._buckets[name]
                while len(self._buckets) > limit:
                    self._buckets.popitem(last=False)


def _seconds(window: float) -> str:
    return str(int(window)) if float(window).is_integer() else str(window)
