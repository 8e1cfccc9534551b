"""Header names reach a plain-http upstream as a Python handler spelled them in
``ctx.llm_params["extra_headers"]`` and as the config spelled a connection's
``http_headers`` (issue 19, point 9); the provider's key keeps ``Authorization``."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import (
    CLIENT_KEY,
    UPSTREAM_KEY,
    MockUpstream,
    client_for,
    import_lm_proxy,
)

lm_proxy = import_lm_proxy()
from lm_proxy import Config, Group  # noqa: E402
from lm_proxy.base_types import RequestContext  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello there"}]


def _spelling_handler(ctx: RequestContext) -> None:
    ctx.llm_params.setdefault("extra_headers", {}).update(
        {"X-Tenant-ID": "acme", "x-trace": "t-1", "X-Audit-Ref": "r-1"}
    )


def test_handler_and_config_spellings_reach_the_upstream(
    serve_config: Any, upstream: MockUpstream
) -> None:
    config = Config(
        host="127.0.0.1",
        port=0,
        connections={
            "upstream": {
                "api_type": "openai",
                "api_base": upstream.api_base,
                "api_key": UPSTREAM_KEY,
                "http_headers": {"X-API-key": "configured", "x-lower-case": "configured"},
            }
        },
        routing={"*": "upstream.*"},
        groups={"default": Group(api_keys=[CLIENT_KEY])},
        before=[_spelling_handler],
    )
    server = serve_config(config, debug=False)
    client = client_for(server.url)
    client.chat.completions.create(model="m", messages=MESSAGES)
    names = upstream.only_request().header_names
    for spelled in ["X-Tenant-ID", "x-trace", "X-Audit-Ref", "X-API-key", "x-lower-case"]:
        assert spelled in names, names
    assert "Authorization" in names and "Content-Type" in names, names
    assert upstream.only_request().headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_extra_headers_of_an_awaited_connection_keep_their_spelling(
    upstream: MockUpstream,
) -> None:
    """``await env.connections[...](..., extra_headers=...)`` from extension code."""
    from lm_proxy.bootstrap import bootstrap, env

    config = Config(
        connections={
            "up": {"api_type": "openai", "api_base": upstream.api_base, "api_key": UPSTREAM_KEY}
        },
        routing={"*": "up.*"},
    )
    bootstrap(config, env_file=None)

    async def call() -> Any:
        return await env.connections["up"](
            MESSAGES, model="m", extra_headers={"X-Request-ID": "r-1", "x-lower": "l"}
        )

    asyncio.run(call())
    names = upstream.only_request().header_names
    assert "X-Request-ID" in names and "x-lower" in names, names
