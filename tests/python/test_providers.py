"""Anthropic- and Gemini-backed routes driven with the official `openai` client.

A stdlib mock plays both providers' wire formats (the Anthropic Messages API and
Gemini's generateContent / streamGenerateContent with SSE), and the tests check that
an OpenAI client sees ordinary OpenAI answers: text, streamed text, tool calls whose
arguments arrive in fragments, `n > 1`, usage and errors.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import CLIENT_KEY, GatewayProcess, gateway_binary, make_client

ANTHROPIC_KEY = "sk-ant-provider-test"
GEMINI_KEY = "gemini-provider-test"
TOOL_ARGS = ['{"city": ', '"Oslo", "unit"', ': "celsius"}']
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        },
    },
}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def _sse(event: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _anthropic_events(body: dict[str, Any]) -> list[bytes]:
    """A streamed Messages API answer: text, or a tool call in several fragments."""
    events = [
        _sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 11, "output_tokens": 1},
                },
            },
        ),
        _sse("ping", {"type": "ping"}),
    ]
    if body.get("tools"):
        events.append(
            _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "get_weather",
                        "input": {},
                    },
                },
            )
        )
        for fragment in TOOL_ARGS:
            events.append(
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": fragment},
                    },
                )
            )
        stop_reason = "tool_use"
    else:
        events.append(
            _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        )
        for piece in ["Hello ", "from ", "Claude."]:
            events.append(
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
            )
        stop_reason = "end_turn"
    events += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 7},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def _anthropic_message(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("tools"):
        content = [
            {
                "type": "tool_use",
                "id": "toolu_01",
                "name": "get_weather",
                "input": json.loads("".join(TOOL_ARGS)),
            }
        ]
        stop_reason = "tool_use"
    else:
        content = [{"type": "text", "text": "Hello from Claude."}]
        stop_reason = "end_turn"
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": 7},
    }


def _gemini_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Gemini answers as a list of stream chunks (one chunk when not streamed)."""
    count = body.get("generationConfig", {}).get("candidateCount", 1)
    usage = {"promptTokenCount": 9, "candidatesTokenCount": 5, "totalTokenCount": 14}
    if body.get("tools"):
        part = {"functionCall": {"name": "get_weather", "args": json.loads("".join(TOOL_ARGS))}}
        return [
            {
                "candidates": [
                    {
                        "index": i,
                        "content": {"role": "model", "parts": [part]},
                        "finishReason": "STOP",
                    }
                    for i in range(count)
                ],
                "usageMetadata": usage,
                "responseId": "resp1",
            }
        ]
    pieces = ["Hello ", "from ", "Gemini."]
    chunks = []
    for n, piece in enumerate(pieces):
        last = n == len(pieces) - 1
        chunks.append(
            {
                "candidates": [
                    {
                        "index": i,
                        "content": {"role": "model", "parts": [{"text": piece}]},
                        **({"finishReason": "STOP"} if last else {}),
                    }
                    for i in range(count)
                ],
                "usageMetadata": usage,
                "responseId": "resp1",
            }
        )
    return chunks


def _merge_gemini(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer: the chunks' parts joined per candidate."""
    merged = json.loads(json.dumps(chunks[0]))
    for chunk in chunks[1:]:
        for candidate, extra in zip(merged["candidates"], chunk["candidates"], strict=True):
            text = candidate["content"]["parts"][0]["text"] + extra["content"]["parts"][0]["text"]
            candidate["content"]["parts"][0]["text"] = text
            if "finishReason" in extra:
                candidate["finishReason"] = extra["finishReason"]
    return merged


class _ProviderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in events:
            self.wfile.write(event)
            self.wfile.flush()
        self.close_connection = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.received.append((self.path, dict(self.headers), body))  # type: ignore[attr-defined]
        if self.path == "/v1/messages":
            if self.headers.get("x-api-key") != ANTHROPIC_KEY:
                self._json(
                    401,
                    {
                        "type": "error",
                        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
                    },
                )
            elif body["model"] == "claude-overloaded":
                self._json(
                    529,
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    },
                )
            elif body.get("stream"):
                self._stream(_anthropic_events(body))
            else:
                self._json(200, _anthropic_message(body))
            return
        if self.path.startswith("/v1beta/models/"):
            if self.headers.get("x-goog-api-key") != GEMINI_KEY:
                self._json(
                    400,
                    {
                        "error": {
                            "code": 400,
                            "message": "API key not valid. Please pass a valid API key.",
                            "status": "INVALID_ARGUMENT",
                        }
                    },
                )
                return
            chunks = _gemini_chunks(body)
            if ":streamGenerateContent" in self.path:
                # CRLF framing, as Gemini sends it.
                self._stream([f"data: {json.dumps(c)}\r\n\r\n".encode() for c in chunks])
            else:
                self._json(200, _merge_gemini(chunks))
            return
        self._json(404, {"error": {"message": f"no route {self.path}"}})


@pytest.fixture(scope="module")
def provider_upstream() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ProviderHandler)
    server.daemon_threads = True
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="provider-mock", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def provider_gateway(
    provider_upstream: ThreadingHTTPServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    host, port = provider_upstream.server_address[:2]
    base = f"http://{host}:{port}"
    config = f"""
host = "127.0.0.1"
port = 0
encryption_key = "provider-tests"
shutdown_grace_seconds = 2
[connections.claude]
api_type = "anthropic"
api_base = "{base}"
api_key = "{ANTHROPIC_KEY}"
[connections.gemini]
api_type = "google"
api_base = "{base}"
api_key = "{GEMINI_KEY}"
[connections.gemini_badkey]
api_type = "google"
api_base = "{base}"
api_key = "not-the-key"
[routing]
"claude-*" = "claude.*"
"gemini-bad" = "gemini_badkey.gemini-2.5-flash"
"gemini-*" = "gemini.*"
[groups.default]
api_keys = ["{CLIENT_KEY}"]
"""
    path: Path = tmp_path_factory.mktemp("providers") / "config.toml"
    path.write_text(config)
    gateway = GatewayProcess(gateway_binary(), path)
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def client(provider_gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with make_client(provider_gateway) as sync_client:
        yield sync_client


MODELS = [("claude-sonnet-4", "Hello from Claude."), ("gemini-2.5-flash", "Hello from Gemini.")]


@pytest.mark.parametrize(("model", "text"), MODELS)
def test_text_answers(
    client: openai.OpenAI, provider_upstream: ThreadingHTTPServer, model: str, text: str
) -> None:
    provider_upstream.received.clear()  # type: ignore[attr-defined]
    completion = client.chat.completions.create(model=model, messages=MESSAGES)
    # What the provider got: its own endpoint, key header and request shape.
    [(path, headers, body)] = provider_upstream.received  # type: ignore[attr-defined]
    headers = {name.lower(): value for name, value in headers.items()}
    if model.startswith("claude"):
        assert path == "/v1/messages"
        assert headers["x-api-key"] == ANTHROPIC_KEY
        assert body["model"] == model
        assert body["system"] == [{"type": "text", "text": "Be brief."}]
        assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    else:
        assert path == f"/v1beta/models/{model}:generateContent"
        assert headers["x-goog-api-key"] == GEMINI_KEY
        assert body["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert "authorization" not in headers
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == text
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (
        completion.usage.total_tokens
        == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


@pytest.mark.parametrize(("model", "text"), MODELS)
def test_streamed_text_and_usage(client: openai.OpenAI, model: str, text: str) -> None:
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == text
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("model", ["claude-sonnet-4", "gemini-2.5-flash"])
def test_tool_calls(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=MESSAGES, tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo", "unit": "celsius"}


@pytest.mark.parametrize("model", ["claude-sonnet-4", "gemini-2.5-flash"])
def test_streamed_tool_calls_reassemble(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, tools=[WEATHER_TOOL], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    fragments = 0
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if delta.id:
                    entry["id"] = delta.id
                if delta.function and delta.function.name:
                    entry["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    entry["arguments"] += delta.function.arguments
                    fragments += 1
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Oslo", "unit": "celsius"}
    if model.startswith("claude"):
        # Every input_json_delta fragment is forwarded as it came, never buffered.
        assert fragments == len(TOOL_ARGS)


@pytest.mark.parametrize("model", ["claude-sonnet-4", "gemini-2.5-flash"])
def test_n_choices(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(model=model, messages=MESSAGES, n=2)
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content for c in completion.choices)


def test_provider_errors_reach_the_client_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as overloaded:
        client.chat.completions.create(model="claude-overloaded", messages=MESSAGES)
    assert overloaded.value.status_code == 503
    with pytest.raises(openai.AuthenticationError) as bad_key:
        client.chat.completions.create(model="gemini-bad", messages=MESSAGES)
    assert bad_key.value.status_code == 401
    assert "API key not valid" in str(bad_key.value)
    assert "not-the-key" not in str(bad_key.value)
