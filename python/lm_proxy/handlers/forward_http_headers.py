"""``lm_proxy.handlers.HTTPHeadersForwarder``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._builtins import Builtin
from ..base_types import Headers

# Never forwarded, whatever the lists say (the reference's set; the Rust built-in
# adds the names in _ALSO_NEVER_FORWARDED).
SENSITIVE_HEADERS = frozenset(
    [
        "authorization",
        "www-authenticate",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "cache-control",
        "etag",
        "if-none-match",
        "proxy-authorization",
        "proxy-connection",
        "strict-transport-security",
        "host",
        "range",
        "if-range",
        ":method",
        ":path",
        ":scheme",
        ":authority",
        "te",
        "trailer",
    ]
)

# The rest of the Rust built-in's fixed set (src/handlers/headers_forwarder.rs):
# credentials, framing, and the client-address headers an upstream would believe.
_ALSO_NEVER_FORWARDED = frozenset(
    [
        "proxy-authenticate",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "set-cookie",
        "content-encoding",
        "expect",
        "accept-encoding",
        "http2-settings",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-server",
        "x-forwarded-prefix",
        "x-real-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-original-forwarded-for",
        "via",
        "if-modified-since",
    ]
)


class HTTPHeadersForwarder(Builtin):
    """Copy the client's request headers to the upstream request (never the
    sensitive ones); with ``white_list_headers``, only those.

    As a config value it runs in Rust. Called from Python (``await forwarder(ctx)``,
    as the reference's) it does the same to ``ctx.llm_params["extra_headers"]``:
    headers already there (set by earlier handlers) win, repeated headers are joined
    with ``", "``.
    """

    target = "lm_proxy.handlers.HTTPHeadersForwarder"

    def __init__(
        self,
        ignore_headers: Iterable[str] = [],
        white_list_headers: Iterable[str] = [],
    ) -> None:
        super().__init__(
            ignore_headers=sorted(
                h.lower() for h in ignore_headers if h.lower() not in SENSITIVE_HEADERS
            ),
            white_list_headers=sorted(h.lower() for h in white_list_headers),
        )

    async def __call__(self, ctx: Any) -> None:
        http_request = getattr(ctx, "http_request", None)
        headers = getattr(http_request, "headers", None)
        if not headers:
            return
        ignore = SENSITIVE_HEADERS | _ALSO_NEVER_FORWARDED | set(self._args["ignore_headers"])
        white_list = set(self._args["white_list_headers"])
        # Every (name, value) as sent; a Starlette request's headers.items() has them too.
        pairs = headers.raw() if isinstance(headers, Headers) else list(headers.items())
        # Headers the client declared hop-by-hop (`Connection: close, x-foo`).
        hop_by_hop = {
            name.strip().lower()
            for key, value in pairs
            if key.lower() == "connection"
            for name in str(value).split(",")
        }
        forwarded: dict[str, str] = {}
        names: dict[str, str] = {}  # lower-case name -> the name as first written
        for key, value in pairs:
            lower = key.lower()
            if (
                lower.startswith(":")
                or lower in ignore
                or lower in hop_by_hop
                or (white_list and lower not in white_list)
            ):
                continue
            name = names.setdefault(lower, key)
            forwarded[name] = f"{forwarded[name]}, {value}" if name in forwarded else str(value)
        if not forwarded:
            return
        extra = ctx.llm_params.setdefault("extra_headers", {})
        present = {str(k).lower() for k in extra}
        for name, value in forwarded.items():
            if name.lower() not in present:
                extra[name] = value
