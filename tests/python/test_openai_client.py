"""The native gateway, driven by the official `openai` package.

These tests check what real clients rely on: response shapes, streaming (text, usage
and tool-call fragments), `n`, tools, passthrough of unknown fields to an
OpenAI-compatible upstream, the model list, and the error classes the SDK raises.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from typing import Any

import openai
import pytest
from conftest import (
    CLIENT_KEY,
    MAIN_ROUTES,
    UPSTREAM_CONTENT,
    UPSTREAM_KEY,
    UPSTREAM_TOOL_ARGUMENTS,
    GatewayProcess,
    MockUpstream,
    make_async_client,
    make_client,
)

PROMPT = "Hello there, gateway"
ECHO = f"You said: {PROMPT}"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": PROMPT},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


def collect_stream(stream: Any) -> dict[str, Any]:
    """Reassemble a chat completion stream the way clients do, per choice index."""
    text: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    tools: dict[int, dict[int, dict[str, str]]] = {}
    ids: set[str] = set()
    usage = None
    chunks = 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.setdefault(choice.index, "")
            text[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
            for call in choice.delta.tool_calls or []:
                slot = tools.setdefault(choice.index, {}).setdefault(
                    call.index, {"id": "", "name": "", "arguments": ""}
                )
                slot["id"] += call.id or ""
                if call.function is not None:
                    slot["name"] += call.function.name or ""
                    slot["arguments"] += call.function.arguments or ""
    return {
        "text": text,
        "finish": finish,
        "tools": tools,
        "ids": ids,
        "usage": usage,
        "chunks": chunks,
    }


# ---- the built-in mock connection ----------------------------------------------------


def test_chat_completion_shape(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="mock-model", messages=MESSAGES)

    assert completion.id
    assert completion.object == "chat.completion"
    assert completion.created > 0
    assert completion.model == "mock-model"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == ECHO
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(ECHO.split())
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


@pytest.mark.parametrize("include_usage", [True, False])
def test_streamed_text_matches_non_streamed(client: openai.OpenAI, include_usage: bool) -> None:
    whole = client.chat.completions.create(model="mock-model", messages=MESSAGES)
    stream = client.chat.completions.create(
        model="mock-model",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    result = collect_stream(stream)

    assert result["text"] == {0: whole.choices[0].message.content}
    assert result["finish"] == {0: "stop"}
    # One word per content chunk, plus the role and finish chunks.
    assert result["chunks"] >= len(ECHO.split()) + 2
    assert len(result["ids"]) == 1, f"chunks of one stream carry one id: {result['ids']}"
    if include_usage:
        assert result["usage"] is not None
        assert result["usage"].completion_tokens == whole.usage.completion_tokens
        assert result["usage"].prompt_tokens == whole.usage.prompt_tokens
    else:
        assert result["usage"] is None


def test_n_choices(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="mock-model", messages=MESSAGES, n=2)
    assert [c.index for c in completion.choices] == [0, 1]
    assert [c.message.content for c in completion.choices] == [ECHO, ECHO]

    stream = client.chat.completions.create(model="mock-model", messages=MESSAGES, n=2, stream=True)
    result = collect_stream(stream)
    assert result["text"] == {0: ECHO, 1: ECHO}
    assert result["finish"] == {0: "stop", 1: "stop"}


def test_max_tokens_gives_length_finish(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="mock-model", messages=MESSAGES, max_tokens=2)
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == "You said: "


def test_tool_call_non_streamed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="mock-model",
        messages=MESSAGES,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.id == "call_mock_0"
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {}


def test_tool_call_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="mock-model",
        messages=MESSAGES,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        stream=True,
    )
    result = collect_stream(stream)
    assert result["finish"] == {0: "tool_calls"}
    assert result["tools"] == {0: {0: {"id": "call_mock_0", "name": "get_time", "arguments": "{}"}}}


# ---- passthrough to an OpenAI-compatible upstream ------------------------------------


def test_passthrough_non_streamed(client: openai.OpenAI, upstream: MockUpstream) -> None:
    completion = client.chat.completions.create(
        model="up-large",
        messages=MESSAGES,
        temperature=0.25,
        extra_body={"my_custom_field": {"x": 1}},
    )
    assert completion.choices[0].message.content == UPSTREAM_CONTENT
    assert completion.model == "up-large"

    received = upstream.only_request()
    assert received.path == "/v1/chat/completions"
    assert received.body["model"] == "up-large"
    assert received.body["my_custom_field"] == {"x": 1}
    assert received.body["temperature"] == 0.25
    assert received.body["messages"] == MESSAGES
    assert not received.body.get("stream")
    # The connection's key goes upstream; the client's key does not.
    assert received.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in json.dumps(received.headers)


def test_passthrough_fixed_model_is_rewritten(
    client: openai.OpenAI, upstream: MockUpstream
) -> None:
    completion = client.chat.completions.create(model="fixed-up", messages=MESSAGES)
    assert completion.choices[0].message.content == UPSTREAM_CONTENT
    assert upstream.only_request().body["model"] == "upstream-real-model"


def test_passthrough_streamed_tool_call(client: openai.OpenAI, upstream: MockUpstream) -> None:
    stream = client.chat.completions.create(
        model="up-large",
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"my_custom_field": {"x": 1}},
    )
    result = collect_stream(stream)

    full_arguments = "".join(UPSTREAM_TOOL_ARGUMENTS)
    assert result["tools"] == {
        0: {0: {"id": "call_upstream_1", "name": "get_weather", "arguments": full_arguments}}
    }
    assert json.loads(result["tools"][0][0]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert result["finish"] == {0: "tool_calls"}

    received = upstream.only_request()
    assert received.body["model"] == "up-large"
    assert received.body["stream"] is True
    assert received.body["stream_options"] == {"include_usage": True}
    assert received.body["my_custom_field"] == {"x": 1}
    assert received.body["tools"] == [WEATHER_TOOL]
    assert received.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}"


# ---- models and errors ---------------------------------------------------------------


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models] == list(MAIN_ROUTES)
    assert all(model.object == "model" for model in models)


def test_bad_key_is_an_authentication_error(gateway: GatewayProcess) -> None:
    with make_client(gateway, api_key="not-a-valid-key") as bad_client:
        # GET first: see test_rejected_request_keeps_connection_usable for why a rejected
        # POST is the last request made on this client.
        with pytest.raises(openai.AuthenticationError) as raised:
            bad_client.models.list()
        assert raised.value.status_code == 401
        assert raised.value.code == "invalid_api_key"

        with pytest.raises(openai.AuthenticationError) as raised:
            bad_client.chat.completions.create(model="mock-model", messages=MESSAGES)
        assert raised.value.status_code == 401
        assert raised.value.code == "invalid_api_key"


def test_rejected_request_keeps_connection_usable(gateway: GatewayProcess) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    body = json.dumps({"model": "mock-model", "messages": MESSAGES}).encode()
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        # Headers and body in separate writes, a moment apart, as httpx sends them: the
        # gateway answers the bad key before the body has arrived.
        connection.putrequest("POST", "/v1/chat/completions")
        connection.putheader("Authorization", "Bearer not-a-valid-key")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        time.sleep(0.2)
        connection.send(body)
        response = connection.getresponse()
        response.read()
        assert response.status == 401
        # The claim is that the connection stays usable: announcing a close would
        # make clients open a new one (and http.client would do so silently).
        assert (response.getheader("Connection") or "").lower() != "close"
        # A gateway that closed the connection anyway cannot answer on it: the
        # next request then fails with RemoteDisconnected or a reset, whenever
        # the close arrives, so no waiting is needed.
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_unknown_model_is_not_found(strict_gateway: GatewayProcess) -> None:
    with make_client(strict_gateway) as strict_client:
        # A routed model still works on this gateway...
        completion = strict_client.chat.completions.create(model="mock-a", messages=MESSAGES)
        assert completion.choices[0].message.content == ECHO
        # ...and one no rule matches is a 404 the SDK maps to NotFoundError.
        with pytest.raises(openai.NotFoundError) as raised:
            strict_client.chat.completions.create(model="gpt-unrouted", messages=MESSAGES)
        assert raised.value.status_code == 404
        assert raised.value.code == "model_not_found"


# ---- the async client ----------------------------------------------------------------


def test_async_client(gateway: GatewayProcess) -> None:
    async def scenario() -> None:
        async with make_async_client(gateway) as client:
            # Concurrent requests on one client: the mock echoes each prompt back.
            prompts = [f"message number {i}" for i in range(4)]
            completions = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="mock-model", messages=[{"role": "user", "content": p}]
                    )
                    for p in prompts
                )
            )
            assert [c.choices[0].message.content for c in completions] == [
                f"You said: {p}" for p in prompts
            ]

            stream = await client.chat.completions.create(
                model="mock-model", messages=MESSAGES, stream=True
            )
            text = ""
            async for chunk in stream:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
            assert text == ECHO

    asyncio.run(scenario())
