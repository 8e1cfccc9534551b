"""ai-microcore connections, as the reference's ``.py`` examples build them
(``mc.configure(...)`` then ``mc.env().llm_async_function``), against an
OpenAI-compatible mock upstream on 127.0.0.1 (issue 19, points 5 and 12).

microcore answers with its ``LLMResponse``: a ``str`` carrying the completion's
fields (``choices``, ``usage``, ...) as attributes. The client must get what they
hold (tool calls, finish reasons, usage), streamed and not.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import CLIENT_KEY, client_for, import_lm_proxy

mc = pytest.importorskip("microcore")
lm_proxy = import_lm_proxy()
from lm_proxy import Config, Group  # noqa: E402
from lm_proxy.base_types import LLMResponse, RequestContext  # noqa: E402

MESSAGES = [{"role": "user", "content": "What is the weather in Oslo?"}]
TEXT = "It is sunny in Oslo."
TOOL_CALL = {
    "id": "call_mc_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
USAGE = {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}


class _Upstream(BaseHTTPRequestHandler):
    """OpenAI's chat completions: a tool call for models named ``*tools*``, text
    otherwise; streamed as text pieces, a finish chunk and (when asked) usage."""

    protocol_version = "HTTP/1.0"  # the end of a streamed body is the connection's end
    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.bodies.append(body)
        model = body.get("model", "")
        base = {"id": "chatcmpl-mc-up", "created": 1_700_000_000, "model": model}
        if not body.get("stream"):
            if "tools" in model:
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [TOOL_CALL],
                }
                finish = "tool_calls"
            else:
                message, finish = {"role": "assistant", "content": TEXT}, "stop"
            answer = {
                **base,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": USAGE,
            }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def send(choices: list[Any], **extra: Any) -> None:
            chunk = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())

        send([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
        for piece in ("It is sunny", " in Oslo."):
            send([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        send([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            send([], usage=USAGE)
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def mc_upstream() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), type("Handler", (_Upstream,), {"bodies": bodies})
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}/v1", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def mc_server(
    serve_config: Any,
    mc_upstream: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Any, list[RequestContext], list[dict[str, Any]]]]:
    """A gateway whose only connection is microcore's ``llm_async_function``, as the
    reference's bootstrap built it, and a logger that keeps each context."""
    api_base, bodies = mc_upstream
    # microcore's OpenAI client honours proxy variables: keep local traffic local.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    mc.configure(
        LLM_API_TYPE=mc.ApiType.OPENAI,
        LLM_API_BASE=api_base,
        LLM_API_KEY="sk-microcore-test",
        MODEL="gpt-mc",
        USE_DOT_ENV=False,
        USE_LOGGING=False,
        EMBEDDING_DB_TYPE=mc.EmbeddingDbType.NONE,
    )
    logged: list[RequestContext] = []
    config = Config(
        host="127.0.0.1",
        port=0,
        shutdown_grace_seconds=2,
        connections={"mc": mc.env().llm_async_function},
        routing={"*": "mc.*"},
        groups={"default": Group(api_keys=[CLIENT_KEY])},
        loggers=[logged.append],
    )
    server = serve_config(config, debug=True)
    yield server, logged, bodies
    server.stop()


def test_microcore_text_answer(mc_server: Any) -> None:
    server, logged, bodies = mc_server
    answer = client_for(server.url).chat.completions.create(model="gpt-mc", messages=MESSAGES)
    assert answer.choices[0].message.content == TEXT
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.total_tokens == 17
    assert bodies[-1]["model"] == "gpt-mc" and not bodies[-1].get("stream")
    server.stop()
    assert logged[0].response == TEXT and isinstance(logged[0].response, LLMResponse)
    assert logged[0].response.usage.total_tokens == 17


def test_microcore_answers_with_tool_calls(mc_server: Any) -> None:
    server, logged, bodies = mc_server
    answer = client_for(server.url).chat.completions.create(
        model="gpt-mc-tools",
        messages=MESSAGES,
        tools=TOOLS,  # type: ignore[arg-type]
    )
    assert bodies[-1]["tools"] == TOOLS  # microcore passed them on
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_mc_1",
        "get_weather",
        '{"city": "Oslo"}',
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 6
    server.stop()
    assert logged[0].response == ""
    assert logged[0].response.choices[0].message.tool_calls[0].function.name == "get_weather"


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
def test_microcore_streamed(mc_server: Any, include_usage: bool) -> None:
    server, logged, bodies = mc_server
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client_for(server.url).chat.completions.create(
        model="gpt-mc", messages=MESSAGES, stream=True, **extra
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT  # the pieces, not the returned text a second time
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage) == 1 and usage[0].total_tokens == 17
    else:
        assert usage == []  # not shown to a client that did not ask
    assert bodies[-1]["stream"] is True
    server.stop()
    assert logged[0].response == TEXT and isinstance(logged[0].response, str)
