"""``lm_proxy.handlers.HTTPHeadersForwarder``."""

from __future__ import annotations

from collections.abc import Iterable

from .._builtins import RustOnly

# Never forwarded, whatever the lists say (the Rust built-in adds a few credentials).
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


class HTTPHeadersForwarder(RustOnly):
    """Copy the client's request headers to the upstream request (never the
    sensitive ones); with ``white_list_headers``, only those."""

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
