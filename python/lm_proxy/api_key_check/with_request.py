"""``lm_proxy.api_key_check.CheckAPIKeyWithRequest``."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from typing import Any

from .._builtins import Builtin

log = logging.getLogger(__name__)

# As the Rust built-in: a key check's answer is small; more is not read.
_ANSWER_LIMIT = 1024 * 1024


class CheckAPIKeyWithRequest(Builtin):
    """A key is valid when an HTTP service answers 2xx to a request carrying it.

    ``{api_key}`` (``key_placeholder``) in ``url`` and header values is replaced by
    the client key. As a config value it runs in Rust, with an optional TTL cache (no
    extra install); see docs/builtins.md for every argument.

    Called from Python (``check(api_key)``), it asks the service the same way and
    answers as the reference did: ``(group, user_info)`` for a valid key
    (``user_info`` is the JSON answer with ``response_as_user_info``, else None),
    ``None`` for a refused key or when the service fails. Redirects are not followed
    (a 3xx refuses the key, as in the server).
    """

    target = "lm_proxy.api_key_check.CheckAPIKeyWithRequest"

    def __init__(
        self,
        url: str,
        method: str = "get",
        headers: dict[str, str] = {},  # noqa: B006 - never mutated
        response_as_user_info: bool = False,
        group_field: str | None = None,
        default_group: str = "default",
        key_placeholder: str = "{api_key}",
        use_cache: bool = False,
        cache_size: int = 16384,
        cache_ttl: float = 300,
        timeout: float = 5,
    ) -> None:
        super().__init__(
            url=url,
            method=method,
            headers=dict(headers),
            response_as_user_info=response_as_user_info,
            group_field=group_field,
            default_group=default_group,
            key_placeholder=key_placeholder,
            use_cache=use_cache,
            cache_size=cache_size,
            cache_ttl=cache_ttl,
            timeout=timeout,
        )

    _runtime_attrs = ("_cache", "_cache_lock")

    def _init_runtime(self) -> None:
        # key digest -> (expiry on the monotonic clock, answer); oldest first.
        self._cache: OrderedDict[bytes, tuple[float, tuple[str, Any] | None]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def __call__(self, api_key: str | None) -> tuple[str, Any] | None:
        args = self._args
        url = _UrlTemplate(str(args["url"]), str(args["key_placeholder"]))
        key = api_key or ""
        if not url.accepts(key):
            return None
        if not args["use_cache"]:
            return self._ask(url, key)[0]
        digest = hashlib.sha256(key.encode()).digest()
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(digest)
            if hit is not None and hit[0] > now:
                return hit[1]
        answer, cacheable = self._ask(url, key)
        if cacheable:
            with self._cache_lock:
                self._cache[digest] = (now + float(args["cache_ttl"]), answer)
                self._cache.move_to_end(digest)
                while len(self._cache) > max(int(args["cache_size"]), 1):
                    self._cache.popitem(last=False)
        return answer

    def _ask(self, url: _UrlTemplate, key: str) -> tuple[tuple[str, Any] | None, bool]:
        """The answer for ``key`` and whether it may be cached (a failure to reach
        the service is not: the next call asks again)."""
        args = self._args
        placeholder = str(args["key_placeholder"])
        headers = {
            str(name): str(value).replace(placeholder, key)
            for name, value in dict(args["headers"]).items()
        }
        request = urllib.request.Request(
            url.render(key), headers=headers, method=str(args["method"]).strip().upper()
        )
        try:
            with _OPENER.open(request, timeout=float(args["timeout"])) as response:
                if not args["response_as_user_info"]:
                    return (str(args["default_group"]), None), True
                body = response.read(_ANSWER_LIMIT + 1)
        except urllib.error.HTTPError as e:
            e.close()
            return None, True  # the service answered: not 2xx
        except (OSError, ValueError, http.client.HTTPException) as e:
            # Reported without the URL, which may contain the key.
            log.warning("API key check service unavailable, key rejected: %s", type(e).__name__)
            return None, False
        try:
            if len(body) > _ANSWER_LIMIT:
                raise ValueError("answer too large")
            user_info = json.loads(body)
        except ValueError as e:
            log.warning(
                "API key check service unavailable, key rejected: unreadable answer (%s)", e
            )
            return None, False
        group = str(args["default_group"])
        field = args["group_field"]
        if field and isinstance(user_info, dict) and isinstance(user_info.get(field), str):
            group = user_info[field]
        return (group, user_info), True


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could send the key elsewhere; a 3xx answer refuses the key instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


class _UrlTemplate:
    """The URL cut at the key placeholders, with the Rust built-in's rules: the key
    stands in the path or the query only, percent-encoded; a key that could choose
    another resource (``/ # ? % \\``, only dots) is refused without a call."""

    def __init__(self, url: str, placeholder: str) -> None:
        if not placeholder:
            raise ValueError("key_placeholder: must not be empty")
        scheme_end = url.find("://")
        if scheme_end >= 0:
            start = scheme_end + 3
            ends = [i for i in (url.find(c, start) for c in "/?#") if i >= 0]
            authority_end = min(ends) if ends else len(url)
        else:
            authority_end = 0
        self.parts = url.split(placeholder)
        self.in_path = False
        pos = 0
        for literal in self.parts[:-1]:
            pos += len(literal)
            before = url[:pos]
            if "#" in before:
                raise ValueError(
                    "url: the key placeholder may not stand in the fragment (after '#'), "
                    "which is never sent"
                )
            if "?" not in before:
                if pos < authority_end or scheme_end < 0:
                    raise ValueError(
                        "url: the key placeholder may stand in the path or the query, "
                        "not in the scheme or host"
                    )
                self.in_path = True
            pos += len(placeholder)

    def accepts(self, key: str) -> bool:
        if not key or not all(0x21 <= ord(c) <= 0x7E for c in key):
            return False
        if len(self.parts) > 1 and any(c in key for c in "/#?%\\"):
            return False
        return not (self.in_path and set(key) == {"."})

    def render(self, key: str) -> str:
        return urllib.parse.quote(key, safe="").join(self.parts)
