"""The reference's ``lm_proxy.models_endpoint``: the model list a client's key may
see, for extension code that builds it itself.

The server answers ``GET {api_prefix}/models`` in Rust; :func:`models` gives the
same list in Python from the current config (``lm_proxy.bootstrap.env.config``).
It returns the body as a dict, where the reference returned a Starlette
``JSONResponse``.
"""

from __future__ import annotations

from typing import Any

from .config import Group, ModelListingMode
from .core import _config, check, fail_if_service_disabled, parse_routing_rule

__all__ = ["models"]


async def models(request: Any) -> dict[str, Any]:
    """``{"object": "list", "data": [...]}``: for each routing rule whose connection
    the key's group may use, ``{"id": pattern, "object": "model", "created": 0,
    "owned_by": connection}`` merged with ``model_info[pattern]``.

    ``request`` is any object with ``.headers`` (the client key in
    ``Authorization``). Raises :class:`~lm_proxy.errors.OpenAIHTTPException` as the
    server answers: 503 when disabled, 401 for a bad key. With
    ``model_listing_mode = "expand_wildcards"`` the server asks the upstreams; here
    patterns are listed as written.
    """
    fail_if_service_disabled()
    group_name, _api_key, _user_info = await check(request)
    config = _config()
    group: Group = config.groups[group_name]
    listing: list[dict[str, Any]] = []
    for pattern, rule in config.routing.items():
        connection, _model = parse_routing_rule(rule, config)
        if not group.allows_connecting_to(connection):
            continue
        wildcard = "*" in pattern or "?" in pattern
        if wildcard and config.model_listing_mode == ModelListingMode.IGNORE_WILDCARDS:
            continue
        entry: dict[str, Any] = {
            "id": pattern,
            "object": "model",
            "created": 0,
            "owned_by": connection,
        }
        entry.update(config.model_info.get(pattern) or {})
        listing.append(entry)
    return {"object": "list", "data": listing}
