"""``lm_proxy.handlers.RateLimiter``."""

from __future__ import annotations

import enum

from .._builtins import RustOnly


class RateLimitScope(enum.StrEnum):
    API_KEY = "api_key"
    CONNECTION = "connection"
    GROUP = "group"
    IP = "ip"
    GLOBAL = "global"


class RateLimiter(RustOnly):
    """Sliding-window rate limit: over ``max_requests`` per ``window_seconds`` (per
    key, IP, connection, group or globally) the answer is 429 with ``Retry-After``."""

    target = "lm_proxy.handlers.RateLimiter"

    def __init__(
        self,
        max_requests: int = 60,
        window_seconds: float = 60.0,
        per: RateLimitScope | str = RateLimitScope.API_KEY,
        max_buckets: int = 10000,
    ) -> None:
        super().__init__(
            max_requests=max_requests,
            window_seconds=window_seconds,
            per=RateLimitScope(per).value,
            max_buckets=max_buckets,
        )
