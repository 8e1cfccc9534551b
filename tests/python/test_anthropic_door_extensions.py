"""The Anthropic door through the Python package: `before` handlers and loggers see
which door a request came in through (`ctx.endpoint`), and Python connections answer
it through the translation (non-streamed and streamed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
from conftest import CLIENT_KEY, import_lm_proxy

lm_proxy = import_lm_proxy()
from lm_proxy import Config, Group  # noqa: E402
from lm_proxy.base_types import RequestContext  # noqa: E402


def python_connection(messages: list[dict[str, Any]], **params: Any) -> Iterator[str]:
    """A Python connection: streams the last user text back in two pieces."""
    yield "Python heard: "
    yield str(messages[-1]["content"])


def test_handlers_and_loggers_see_the_door_and_python_connections_answer(
    serve_config: Any,
) -> None:
    seen: list[tuple[str, str | None]] = []
    logged: list[tuple[str | None, Any]] = []

    def handler(ctx: RequestContext) -> None:
        seen.append(("before", ctx.endpoint))

    def logger(ctx: RequestContext) -> None:
        logged.append((ctx.endpoint, ctx.response))

    config = Config(
        host="127.0.0.1",
        port=0,
        shutdown_grace_seconds=2,
        connections={"mock": {"api_type": "mock"}, "py": python_connection},
        routing={"py-*": "py.*", "*": "mock.*"},
        groups={"default": Group(api_keys=[CLIENT_KEY])},
        before=[handler],
        loggers=[logger],
    )
    server = serve_config(config, debug=False)
    client = anthropic.Anthropic(
        base_url=server.url,
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=10,
        http_client=anthropic.DefaultHttpxClient(trust_env=False),
    )
    message = client.messages.create(
        model="py-model", max_tokens=20, messages=[{"role": "user", "content": "bonjour"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Python heard: bonjour"
    with client.messages.stream(
        model="py-model", max_tokens=20, messages=[{"role": "user", "content": "salut"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text"
    assert final.content[0].text == "Python heard: salut"

    chat = openai.OpenAI(
        base_url=server.url + "/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    chat.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

    server.stop(grace=5)
    assert seen == [
        ("before", "messages"),
        ("before", "messages"),
        ("before", "chat/completions"),
    ]
    assert sorted(str(e) for e, _ in logged) == ["chat/completions", "messages", "messages"]
    # Loggers get the Anthropic door's answers in its own shape.
    shapes = [r.get("type") for e, r in logged if e == "messages"]
    assert shapes == ["message", "message"]
