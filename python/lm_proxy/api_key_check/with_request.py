"""``lm_proxy.api_key_check.CheckAPIKeyWithRequest``."""

from __future__ import annotations

from .._builtins import RustOnly


class CheckAPIKeyWithRequest(RustOnly):
    """A key is valid when an HTTP service answers 2xx to a request carrying it.

    ``{api_key}`` (``key_placeholder``) in ``url`` and header values is replaced by
    the client key. Runs in Rust, with an optional TTL cache (no extra install).
    See docs/builtins.md for every argument.
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
