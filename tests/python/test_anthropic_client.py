"""The Anthropic Messages door (`/v1/messages`), driven by the official `anthropic` SDK.

Two upstreams, both mocks in this file: an Anthropic Messages API (the door passes
requests and answers through, byte for byte) and an OpenAI-compatible server (the
door translates both ways). Covered: `messages.create`, `messages.stream` with
`get_final_message()`, a two-turn tool-use loop, `count_tokens`, and the SDK's
error classes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import pytest
from conftest import SHUTDOWN_TIMEOUT_S, GatewayProcess, gateway_binary

CLIENT_KEY = "anthropic-door-key"
OTHER_GROUP_KEY = "anthropic-door-other-group"
UPSTREAM_KEY = "sk-ant-upstream-secret"

# A thinking block with its signature and a field nobody has heard of, written with
# escapes and spacing a re-serialisation would change.
ANSWER = (
    '{"id":"msg_01","type":"message","role":"assistant","model":"claude-real",'
    '"content":[{"type":"thinking","thinking":"Let me see\\u2026","signature":"EqQBCkYIBx=="},'
    '{"type":"text","text":"Bonjour!"}],"stop_reason":"end_turn","stop_sequence":null,'
    '"usage":{"input_tokens":12,"output_tokens":3},"zz_future_field":{"b":1.50,"a":[]}}'
)
EVENTS = [
    (
        "message_start",
        '{"type":"message_start","message":{"id":"msg_02","type":"message","role":"assistant",'
        '"model":"claude-real","content":[],"stop_reason":null,"stop_sequence":null,'
        '"usage":{"input_tokens":25,"output_tokens":1}}}',
    ),
    (
        "content_block_start",
        '{"type":"content_block_start","index":0,'
        '"content_block":{"type":"thinking","thinking":"","signature":""}}',
    ),
    (
        "content_block_delta",
        '{"type":"content_block_delta","index":0,'
        '"delta":{"type":"thinking_delta","thinking":"Hm\\u2026"}}',
    ),
    (
        "content_block_delta",
        '{"type":"content_block_delta","index":0,'
        '"delta":{"type":"signature_delta","signature":"EqQBCkYIBx=="}}',
    ),
    ("content_block_stop", '{"type":"content_block_stop","index":0 }'),
    ("ping", '{"type": "ping"}'),
    (
        "content_block_start",
        '{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}',
    ),
    (
        "content_block_delta",
        '{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Salut"}}',
    ),
    ("content_block_stop", '{"type":"content_block_stop","index":1}'),
    (
        "message_delta",
        '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
        '"usage":{"output_tokens":15}}',
    ),
    ("message_stop", '{"type":"message_stop"}'),
]
SSE_BODY = "".join(f"event: {name}\ndata: {data}\n\n" for name, data in EVENTS)

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TOOL_ARGUMENT_FRAGMENTS = ['{"city": "Pa', 'ris"}']


@dataclass
class Recorder:
    server: ThreadingHTTPServer
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def last(self) -> tuple[str, dict[str, str], bytes]:
        with self.lock:
            return self.requests[-1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    recorder: Recorder

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.recorder.lock:
            self.recorder.requests.append((self.path, headers, raw))
        self.answer(json.loads(raw))

    def answer(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def send(self, status: int, data: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(data)

    def sse(self, events: list[str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for event in events:
            self.wfile.write(event.encode())
            self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _AnthropicHandler(_Handler):
    """The Anthropic Messages API: fixed bytes, errors chosen by the model name."""

    def answer(self, body: dict[str, Any]) -> None:
        if self.path == "/v1/messages/count_tokens":
            self.send(200, b'{"input_tokens":12}', "application/json")
            return
        model = body.get("model")
        if model == "claude-busy":
            error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
            self.send(429, json.dumps(error).encode(), "application/json", retry_after="3")
            return
        if body.get("stream"):
            self.sse([f"event: {name}\ndata: {data}\n\n" for name, data in EVENTS])
        else:
            self.send(200, ANSWER.encode(), "application/json")


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    chunk = {
        "id": "chatcmpl-t",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-real",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


class _OpenAIHandler(_Handler):
    """An OpenAI-compatible server: a tool call when tools are offered and the last
    message is the user's; otherwise text that names what it got."""

    def answer(self, body: dict[str, Any]) -> None:
        messages = body["messages"]
        wants_tool = bool(body.get("tools")) and messages[-1]["role"] == "user"
        text = "The weather in Paris: " + (
            messages[-1]["content"] if messages[-1]["role"] == "tool" else "unknown"
        )
        usage = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if wants_tool else text}
            if wants_tool:
                arguments = "".join(TOOL_ARGUMENT_FRAGMENTS)
                message["tool_calls"] = [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    }
                ]
            completion = {
                "id": "chatcmpl-t",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-real",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if wants_tool else "stop",
                    }
                ],
                "usage": usage,
            }
            self.send(200, json.dumps(completion).encode(), "application/json")
            return
        events = [_chunk({"role": "assistant", "reasoning_content": "Thinking"})]
        if wants_tool:
            events.append(
                _chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ]
                    }
                )
            )
            for fragment in TOOL_ARGUMENT_FRAGMENTS:
                events.append(
                    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
                )
            events.append(_chunk({}, "tool_calls"))
        else:
            for word in text.split(" "):
                events.append(_chunk({"content": word + " "}))
            events.append(_chunk({}, "stop"))
        final = {
            "id": "chatcmpl-t",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-real",
            "choices": [],
            "usage": usage,
        }
        events.append(f"data: {json.dumps(final)}\n\n")
        events.append("data: [DONE]\n\n")
        self.sse(events)


def _serve(handler: type[_Handler]) -> Iterator[Recorder]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    recorder = Recorder(server=server)
    server.RequestHandlerClass = type("Bound", (handler,), {"recorder": recorder})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=SHUTDOWN_TIMEOUT_S)


@pytest.fixture(scope="module")
def anthropic_upstream() -> Iterator[Recorder]:
    yield from _serve(_AnthropicHandler)


@pytest.fixture(scope="module")
def openai_upstream() -> Iterator[Recorder]:
    yield from _serve(_OpenAIHandler)


def _config(anthropic_base: str, openai_base: str, extra: str = "") -> str:
    return f"""
host = "127.0.0.1"
port = 0
shutdown_grace_seconds = 2
{extra}
[connections.anth]
api_type = "anthropic"
api_base = {json.dumps(anthropic_base)}
api_key = {json.dumps(UPSTREAM_KEY)}

[connections.oai]
api_type = "openai"
api_base = {json.dumps(openai_base + "/v1")}
api_key = "sk-oai"

[routing]
"claude-alias" = "anth.claude-real"
"claude*" = "anth.*"
"gpt*" = "oai.*"

[groups.default]
api_keys = [{json.dumps(CLIENT_KEY)}]

[groups.other]
api_keys = [{json.dumps(OTHER_GROUP_KEY)}]
allowed_connections = "oai"
"""


@pytest.fixture(scope="module")
def start(
    tmp_path_factory: pytest.TempPathFactory,
    anthropic_upstream: Recorder,
    openai_upstream: Recorder,
) -> Iterator[Callable[[str], str]]:
    """Start a gateway (config extras in TOML) and return its URL."""
    started: list[GatewayProcess] = []

    def run(extra: str = "") -> str:
        path: Path = tmp_path_factory.mktemp("anthropic-door") / "config.toml"
        path.write_text(_config(anthropic_upstream.base, openai_upstream.base, extra))
        gateway = GatewayProcess(gateway_binary(), path)
        started.append(gateway)
        return gateway.wait_ready()

    try:
        yield run
    finally:
        for gateway in started:
            gateway.stop()


@pytest.fixture(scope="module")
def url(start: Callable[[str], str]) -> str:
    return start("")


def client_for(url: str, **kwargs: Any) -> anthropic.Anthropic:
    kwargs.setdefault("api_key", CLIENT_KEY)
    return anthropic.Anthropic(
        base_url=url,
        max_retries=0,
        timeout=10,
        # No proxies from the environment: the gateway is local.
        http_client=anthropic.DefaultHttpxClient(trust_env=False),
        **kwargs,
    )


# ---- pass-through to an Anthropic upstream ---------------------------------------------


def test_create_passes_the_answer_through_byte_for_byte(
    url: str, anthropic_upstream: Recorder
) -> None:
    client = client_for(url)
    raw = client.messages.with_raw_response.create(
        model="claude-alias",
        max_tokens=100,
        messages=[{"role": "user", "content": "Say hello in French."}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
    )
    assert raw.http_response.content == ANSWER.encode()
    message = raw.parse()
    assert message.content[0].type == "thinking"
    assert message.content[0].signature == "EqQBCkYIBx=="
    assert message.content[1].type == "text"
    assert message.content[1].text == "Bonjour!"
    assert message.to_dict()["zz_future_field"] == {"b": 1.5, "a": []}

    path, headers, body = anthropic_upstream.last()
    assert path == "/v1/messages"
    assert json.loads(body)["model"] == "claude-real"
    assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    # The client's API version is passed on (the connection does not pin one).
    assert headers["anthropic-version"] == raw.http_request.headers["anthropic-version"]
    assert headers["x-api-key"] == UPSTREAM_KEY


def test_stream_passes_every_event_through(url: str) -> None:
    client = client_for(url)
    with client.messages.with_streaming_response.create(
        model="claude-real",
        max_tokens=100,
        stream=True,
        messages=[{"role": "user", "content": "Hi"}],
    ) as response:
        assert b"".join(response.iter_bytes()) == SSE_BODY.encode()

    with client.messages.stream(
        model="claude-real", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "Salut"
    assert final.content[0].type == "thinking"
    assert final.content[0].signature == "EqQBCkYIBx=="
    assert final.content[1].text == "Salut"
    assert final.usage.output_tokens == 15


def test_count_tokens_passes_through(url: str, anthropic_upstream: Recorder) -> None:
    client = client_for(url, api_key=None, auth_token=CLIENT_KEY)  # Authorization: Bearer
    counted = client.messages.count_tokens(
        model="claude-alias", messages=[{"role": "user", "content": "Hi"}]
    )
    assert counted.input_tokens == 12
    path, _, body = anthropic_upstream.last()
    assert path == "/v1/messages/count_tokens"
    assert json.loads(body)["model"] == "claude-real"


# ---- translated for an OpenAI-compatible upstream --------------------------------------


def test_count_tokens_is_estimated_for_other_upstreams(url: str, openai_upstream: Recorder) -> None:
    client = client_for(url)
    with openai_upstream.lock:
        before = len(openai_upstream.requests)
    hello = client.messages.count_tokens(
        model="gpt-x", messages=[{"role": "user", "content": "Hello, world!"}]
    )
    # 4 tokens of text (o200k_base) and 3 of message framing.
    assert hello.input_tokens == 7
    with_tools = client.messages.count_tokens(
        model="gpt-x",
        system="Answer briefly.",
        messages=[{"role": "user", "content": "Hello, world!"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert with_tools.input_tokens > hello.input_tokens + 15
    with openai_upstream.lock:
        assert len(openai_upstream.requests) == before


def _tool_loop(client: anthropic.Anthropic, streamed: bool) -> list[anthropic.types.Message]:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    answers = []
    for _ in range(2):
        kwargs: dict[str, Any] = {
            "model": "gpt-x",
            "max_tokens": 200,
            "tools": [WEATHER_TOOL],
            "messages": messages,
        }
        if streamed:
            with client.messages.stream(**kwargs) as stream:
                answer = stream.get_final_message()
        else:
            answer = client.messages.create(**kwargs)
        answers.append(answer)
        if answer.stop_reason != "tool_use":
            break
        messages.append({"role": "assistant", "content": [b.to_dict() for b in answer.content]})
        calls = [b for b in answer.content if b.type == "tool_use"]
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": c.id, "content": "22 C, sunny"}
                    for c in calls
                ],
            }
        )
    return answers


@pytest.mark.parametrize("streamed", [False, True])
def test_a_two_turn_tool_loop_through_translation(
    url: str, openai_upstream: Recorder, streamed: bool
) -> None:
    first, second = _tool_loop(client_for(url), streamed)
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather"
    assert call.input == {"city": "Paris"}
    assert second.stop_reason == "end_turn"
    text = "".join(b.text for b in second.content if b.type == "text")
    assert text.strip() == "The weather in Paris: 22 C, sunny"
    assert second.usage.input_tokens == 11
    assert second.usage.output_tokens == 5
    if streamed:
        assert first.content[0].type == "thinking"
        assert first.content[0].thinking == "Thinking"

    _, _, body = openai_upstream.last()
    sent = json.loads(body)
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": "22 C, sunny",
    }


# ---- errors ---------------------------------------------------------------------------


def test_error_classes(url: str, start: Callable[[str], str]) -> None:
    hello = [{"role": "user", "content": "Hi"}]
    with pytest.raises(anthropic.AuthenticationError) as auth:
        client_for(url, api_key="wrong").messages.create(
            model="claude-real", max_tokens=5, messages=hello
        )
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.PermissionDeniedError):
        client_for(url, api_key=OTHER_GROUP_KEY).messages.create(
            model="claude-real", max_tokens=5, messages=hello
        )
    with pytest.raises(anthropic.NotFoundError):
        client_for(url).messages.create(model="no-such-model", max_tokens=5, messages=hello)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client_for(url).messages.create(model="claude-real", max_tokens=0, messages=hello)
    assert "max_tokens" in str(bad.value)
    # The upstream's 429, with its retry-after.
    with pytest.raises(anthropic.RateLimitError) as limited:
        client_for(url).messages.create(model="claude-busy", max_tokens=5, messages=hello)
    assert limited.value.response.headers["retry-after"] == "3"
    assert UPSTREAM_KEY not in limited.value.response.text

    # The gateway's own rate limiter answers this door too.
    strict = start(
        '[[before]]\nclass = "lm_proxy.handlers.RateLimiter"\n'
        'max_requests = 1\nwindow_seconds = 600\nper = "api_key"\n'
    )
    client = client_for(strict)
    client.messages.create(model="claude-real", max_tokens=5, messages=hello)
    with pytest.raises(anthropic.RateLimitError) as own:
        client.messages.create(model="claude-real", max_tokens=5, messages=hello)
    assert own.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
