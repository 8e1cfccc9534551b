"""Reasoning on the chat door, driven by the official `openai` client.

A mock Anthropic Messages API answers with a signed thinking block (plus a redacted
one) and a tool call. The client reads the reasoning as `reasoning_content` (an
extra field of the message and of the stream deltas) and sends the assistant turn
back the way OpenAI clients do; the second upstream request must carry the signed
blocks again, in front of the turn's tool call.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import SHUTDOWN_TIMEOUT_S, GatewayProcess, gateway_binary

CLIENT_KEY = "reasoning-chat-key"
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


class _Upstream:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.base = ""


def _blocks(k: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "thinking",
            "thinking": f"Weather needs a tool ({k}).",
            "signature": f"EqSig{k}==",
        },
        {"type": "redacted_thinking", "data": f"opaque-{k}"},
        {
            "type": "tool_use",
            "id": f"toolu_py_{k}",
            "name": "get_weather",
            "input": {"city": "Oslo"},
        },
    ]


def _events(k: int) -> list[dict[str, Any]]:
    thinking, redacted, tool = _blocks(k)
    return [
        {
            "type": "message_start",
            "message": {
                "id": f"msg_{k}",
                "type": "message",
                "role": "assistant",
                "model": "claude-real",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 9, "output_tokens": 1},
            },
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": thinking["thinking"][:8]},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": thinking["thinking"][8:]},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": thinking["signature"]},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": redacted},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {**tool, "input": {}}},
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": json.dumps(tool["input"])},
        },
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 20},
        },
        {"type": "message_stop"},
    ]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    upstream: _Upstream

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        with self.upstream.lock:
            self.upstream.requests.append(body)
            k = next(self.upstream.counter)
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for event in _events(k):
                self.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            return
        answer = {
            "id": f"msg_{k}",
            "type": "message",
            "role": "assistant",
            "model": "claude-real",
            "content": _blocks(k),
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 9, "output_tokens": 20},
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[_Upstream]:
    state = _Upstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Bound", (_Handler,), {"upstream": state}))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    state.base = f"http://{host!s}:{port}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=SHUTDOWN_TIMEOUT_S)


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, upstream: _Upstream
) -> Iterator[openai.OpenAI]:
    path: Path = tmp_path_factory.mktemp("reasoning-chat") / "config.toml"
    path.write_text(f"""
host = "127.0.0.1"
port = 0
[connections.anth]
api_type = "anthropic"
api_base = {json.dumps(upstream.base)}
api_key = "sk-ant-upstream"
[routing]
"*" = "anth.*"
[groups.default]
api_keys = [{json.dumps(CLIENT_KEY)}]
""")
    gateway = GatewayProcess(gateway_binary(), path)
    try:
        url = gateway.wait_ready()
        yield openai.OpenAI(
            base_url=url + "/v1",
            api_key=CLIENT_KEY,
            max_retries=0,
            timeout=10,
            http_client=httpx.Client(trust_env=False),
        )
    finally:
        gateway.stop()


def _second_turn(
    client: openai.OpenAI, upstream: _Upstream, assistant: dict[str, Any], call_id: str
) -> dict[str, Any]:
    answer = client.chat.completions.create(
        model="claude-real",
        reasoning_effort="low",
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            assistant,  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call_id, "content": "3°C"},
        ],
    )
    assert answer.choices[0].message.tool_calls
    with upstream.lock:
        return upstream.requests[-1]


def _signed(k: int) -> list[dict[str, Any]]:
    return _blocks(k)[:2]


def test_reasoning_and_its_signature_survive_two_turns(
    client: openai.OpenAI, upstream: _Upstream
) -> None:
    first = client.chat.completions.create(
        model="claude-real",
        reasoning_effort="low",
        tools=TOOLS,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
    )
    with upstream.lock:
        sent = upstream.requests[-1]
        k = len(upstream.requests) - 1
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    message = first.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == f"Weather needs a tool ({k})."
    assert message.tool_calls and message.tool_calls[0].id == f"toolu_py_{k}"
    # The turn as most clients send it back: content and tool calls only.
    assistant = {
        "role": "assistant",
        "content": message.content,
        "tool_calls": [call.model_dump() for call in message.tool_calls],
    }
    sent = _second_turn(client, upstream, assistant, message.tool_calls[0].id)
    content = sent["messages"][1]["content"]
    assert content[:2] == _signed(k)
    assert content[2]["type"] == "tool_use" and content[2]["id"] == f"toolu_py_{k}"
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}

    # The whole message sent back (model_dump keeps the extra fields).
    whole = message.model_dump(exclude_none=True)
    sent = _second_turn(client, upstream, whole, message.tool_calls[0].id)
    assert sent["messages"][1]["content"][:2] == _signed(k)


def test_streamed_reasoning_and_its_signature_survive_two_turns(
    client: openai.OpenAI, upstream: _Upstream
) -> None:
    reasoning = ""
    call_id = ""
    arguments = ""
    with client.chat.completions.create(
        model="claude-real",
        reasoning_effort="medium",
        tools=TOOLS,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        stream=True,
    ) as stream:
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            for call in delta.tool_calls or []:
                call_id = call.id or call_id
                arguments += (call.function and call.function.arguments) or ""
    with upstream.lock:
        k = len(upstream.requests) - 1
        assert upstream.requests[-1]["thinking"]["budget_tokens"] == 8192
    assert reasoning == f"Weather needs a tool ({k})."
    assert call_id == f"toolu_py_{k}"
    # Sent back with its reasoning_content, the vLLM / DeepSeek way.
    assistant = {
        "role": "assistant",
        "content": None,
        "reasoning_content": reasoning,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": arguments},
            }
        ],
    }
    sent = _second_turn(client, upstream, assistant, call_id)
    assert sent["messages"][1]["content"][:2] == _signed(k)
