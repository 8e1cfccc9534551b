"""A custom load-balancing connection, as a Python config (the reference's
`examples/load_balancer_config.py`, runnable offline).

`load_balancer` is a connection written in Python: it picks one of the other
connections at random, weighted, and delegates to it by awaiting
``env.connections[name](messages, **params)`` (connections served by Rust are
awaitable from Python with the reference's signature; ``callback=`` streams).
Run:

    lm-proxy-server --config examples/load_balancer_config.py

Out of the box both servers are the built-in mock; point them at real providers
by setting the environment variables below (e.g. in `.env`).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

from lm_proxy.bootstrap import env
from lm_proxy.config import Config, Group

WEIGHTS = {"server1": 3, "server2": 1}


def server(name: str, default_model: str) -> dict[str, Any]:
    base = os.getenv(f"{name.upper()}_API_BASE")
    if not base:
        return {"api_type": "mock", "model": default_model, "response": f"Answered by {name}."}
    return {
        "api_type": "openai",
        "api_base": base,
        "api_key": os.getenv(f"{name.upper()}_API_KEY", ""),
        "model": os.getenv(f"{name.upper()}_MODEL", default_model),
    }


async def load_balancer(messages: list[dict[str, Any]], **params: Any) -> Any:
    names = list(WEIGHTS)
    name = random.choices(names, weights=[WEIGHTS[n] for n in names])[0]
    logging.getLogger("load_balancer").info("load balancer picked %s", name)
    # Each server uses its own `model` setting; `callback`, `stream`, `temperature`,
    # tools and every other parameter are passed on.
    params.pop("model", None)
    return await env.connections[name](messages, **params)


config = Config(
    host="127.0.0.1",
    port=8000,
    encryption_key=os.getenv("LM_PROXY_ENCRYPTION_KEY", "change-me"),
    connections={
        "load_balancer": load_balancer,
        "server1": server("server1", "gpt-5-mini"),
        "server2": server("server2", "gpt-4.1-mini"),
    },
    routing={"*": "load_balancer.*"},
    groups={"default": Group(api_keys=["KEY1"], allowed_connections="load_balancer")},
)
