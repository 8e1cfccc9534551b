"""/v1/responses with the official openai SDK (issue 16, point 1).

Against the native binary: an OpenAI-compatible chat upstream and the built-in mock
(the request translated to chat completions and the answer and events back),
``responses.create`` with a string and with items, ``responses.stream`` and its final
response, a function-calling loop of two turns, ``responses.parse`` with a pydantic
model, what needs server-side state refused with a 400, an upstream that speaks
the Responses API itself (``responses_api = true``: body and events passed through),
and one run of the OpenAI Agents SDK with a function tool.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from conftest import (
    CLIENT_KEY,
    SHUTDOWN_TIMEOUT_S,
    GatewayProcess,
    async_client_for,
    client_for,
    gateway_binary,
)

CHAT_TEXT = "Hello from the chat upstream."
WEATHER_JSON = '{"city": "Paris", "temperature": 21}'
PASSED_TEXT = "Straight from a Responses API."


def chat_message(model: str, request: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """What the chat upstream answers: a message and its finish reason."""
    if model == "chat-weather":
        if any(m.get("role") == "tool" for m in request["messages"]):
            return {"role": "assistant", "content": "It is sunny in Paris."}, "stop"
        call = {
            "id": "call_weather_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    if model == "chat-json":
        return {"role": "assistant", "content": WEATHER_JSON}, "stop"
    return {"role": "assistant", "content": CHAT_TEXT}, "stop"


def stream_chunks(model: str, message: dict[str, Any], finish: str) -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-r",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    chunks = [chunk({"role": "assistant"})]
    text = message.get("content") or ""
    for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
        if piece:
            chunks.append(chunk({"content": piece}))
    for i, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        head = {"index": i, "id": call["id"], "type": "function"}
        head["function"] = {"name": call["function"]["name"], "arguments": arguments[:5]}
        chunks.append(chunk({"tool_calls": [head]}))
        rest = {"index": i, "function": {"arguments": arguments[5:]}}
        chunks.append(chunk({"tool_calls": [rest]}))
    chunks.append(chunk({}, finish))
    usage = chunk({})
    usage["choices"] = []
    usage["usage"] = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    chunks.append(usage)
    return chunks


def responses_answer(model: str) -> dict[str, Any]:
    """A Responses API answer as OpenAI writes it."""
    return {
        "id": "resp_upstream_1",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "model": model,
        "output": [
            {
                "id": "msg_up_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": PASSED_TEXT, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 5,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 6,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 11,
        },
    }


def responses_events(model: str) -> list[dict[str, Any]]:
    """The events of a streamed Responses API answer, as OpenAI writes them."""
    done = responses_answer(model)
    started = dict(done, status="in_progress", output=[], usage=None)
    item = dict(done["output"][0], status="in_progress", content=[])
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": "msg_up_1", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
        {"type": "response.output_text.delta", **where, "delta": PASSED_TEXT[:8], "logprobs": []},
        {"type": "response.output_text.delta", **where, "delta": PASSED_TEXT[8:], "logprobs": []},
        {"type": "response.output_text.done", **where, "text": PASSED_TEXT, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": dict(part, text=PASSED_TEXT)},
        {"type": "response.output_item.done", "output_index": 0, "item": done["output"][0]},
        {"type": "response.completed", "response": done},
    ]
    for n, event in enumerate(events):
        event["sequence_number"] = n
    return events


class Upstream:
    """An OpenAI-compatible `/v1/chat/completions` and a Responses API `/v1/responses`
    that record the bodies they get."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw)
                upstream.requests.append((self.path, body))
                model = body["model"]
                if self.path == "/v1/responses":
                    if not body.get("stream"):
                        return self._json(responses_answer(model))
                    self._events(
                        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n"
                        for e in responses_events(model)
                    )
                    return None
                message, finish = chat_message(model, body)
                if not body.get("stream"):
                    answer = {
                        "id": "chatcmpl-r",
                        "object": "chat.completion",
                        "created": 1,
                        "model": model,
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
                    }
                    return self._json(answer)
                chunks = stream_chunks(model, message, finish)
                self._events([*(f"data: {json.dumps(c)}\n\n" for c in chunks), "data: [DONE]\n\n"])
                return None

            def _events(self, events: Any) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for event in events:
                    self.wfile.write(event.encode())

            def _json(self, answer: dict[str, Any]) -> None:
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def last(self) -> tuple[str, dict[str, Any]]:
        return self.requests[-1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=SHUTDOWN_TIMEOUT_S)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("responses") / "config.toml"
    config.write_text(
        f"""
host = "127.0.0.1"
port = 0
shutdown_grace_seconds = 2
[connections.mock]
api_type = "mock"
[connections.mockjson]
api_type = "mock"
response = {json.dumps(WEATHER_JSON)}
[connections.chat]
api_type = "openai"
api_base = {json.dumps(upstream.base)}
api_key = "sk-upstream"
[connections.native]
api_type = "openai"
api_base = {json.dumps(upstream.base)}
api_key = "sk-upstream"
responses_api = true
[routing]
"chat-*" = "chat.*"
"gpt-*" = "native.*"
"mockjson" = "mockjson.*"
"*" = "mock.*"
[groups.default]
api_keys = [{json.dumps(CLIENT_KEY)}]
"""
    )
    process = GatewayProcess(gateway_binary(), config)
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture
def client(gateway: str) -> Iterator[openai.OpenAI]:
    with client_for(gateway) as sync_client:
        yield sync_client


# The translated connections, and the text each answers "Hi" with.
TRANSLATED = [("chat-text", CHAT_TEXT), ("mock", "You said: Hi")]


@pytest.mark.parametrize(("model", "text"), TRANSLATED)
def test_create_with_a_string_and_with_items(
    client: openai.OpenAI, upstream: Upstream, model: str, text: str
) -> None:
    response = client.responses.create(model=model, input="Hi", instructions="Be brief.")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text == text
    assert response.instructions == "Be brief."
    assert response.usage is not None and response.usage.output_tokens > 0
    items = client.responses.create(
        model=model,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
        max_output_tokens=64,
        temperature=0.5,
        metadata={"ticket": "42"},
    )
    assert items.output_text == text
    assert items.metadata == {"ticket": "42"}
    if model.startswith("chat-"):
        path, sent = upstream.last()
        assert path == "/v1/chat/completions"
        assert sent["messages"] == [{"role": "user", "content": "Hi"}]
        assert sent["max_completion_tokens"] == 64
        assert sent["temperature"] == 0.5


@pytest.mark.parametrize(("model", "text"), TRANSLATED)
def test_stream_and_its_final_response(client: openai.OpenAI, model: str, text: str) -> None:
    with client.responses.stream(model=model, input="Hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == text
    assert final.output_text == text
    assert final.usage is not None and final.usage.output_tokens > 0


def test_a_function_calling_loop_of_two_turns(client: openai.OpenAI, upstream: Upstream) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    history: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    # The first turn streamed: the call's arguments come in pieces.
    with client.responses.stream(model="chat-weather", input=history, tools=tools) as stream:
        first = stream.get_final_response()
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.call_id == "call_weather_1"
    assert json.loads(call.arguments) == {"city": "Paris"}
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny"})
    second = client.responses.create(model="chat-weather", input=history, tools=tools)
    assert second.output_text == "It is sunny in Paris."
    _, sent = upstream.last()
    assert sent["messages"][1]["tool_calls"][0]["id"] == "call_weather_1"
    assert sent["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_weather_1",
        "content": "sunny",
    }
    assert sent["tools"][0]["function"]["name"] == "get_weather"

    # The mock calls the tool when it must.
    forced = client.responses.create(model="mock", input="x", tools=tools, tool_choice="required")
    assert forced.output[0].type == "function_call"


class Weather(pydantic.BaseModel):
    city: str
    temperature: int


@pytest.mark.parametrize("model", ["chat-json", "mockjson"])
def test_parse_with_a_pydantic_model(client: openai.OpenAI, upstream: Upstream, model: str) -> None:
    parsed = client.responses.parse(model=model, input="Weather?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris", temperature=21)
    if model == "chat-json":
        _, sent = upstream.last()
        format_ = sent["response_format"]
        assert format_["type"] == "json_schema"
        assert format_["json_schema"]["name"] == "Weather"
        assert format_["json_schema"]["strict"] is True
        assert format_["json_schema"]["schema"]["required"] == ["city", "temperature"]


def test_what_needs_server_state_is_a_400_on_translated_connections(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="chat-text", input="Hi", previous_response_id="resp_1")
    assert "server-side state" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="mock", input="Hi", tools=[{"type": "web_search"}])
    assert "built-in" in str(refused.value)


def test_a_responses_upstream_gets_the_request_passed_through(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    response = client.responses.create(
        model="gpt-5", input="Hi", previous_response_id="resp_0", store=True
    )
    assert response.id == "resp_upstream_1"
    assert response.output_text == PASSED_TEXT
    path, sent = upstream.last()
    assert path == "/v1/responses"
    assert sent == {
        "model": "gpt-5",
        "input": "Hi",
        "previous_response_id": "resp_0",
        "store": True,
    }
    with client.responses.stream(model="gpt-5", input="Hi") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds == [e["type"] for e in responses_events("gpt-5")]
    assert final.output_text == PASSED_TEXT
    assert upstream.last()[0] == "/v1/responses"


def test_an_agent_run_with_a_function_tool(gateway: str, upstream: Upstream) -> None:
    agents = pytest.importorskip("agents")

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    async def run() -> Any:
        client = async_client_for(gateway)
        model = agents.OpenAIResponsesModel(model="chat-weather", openai_client=client)
        agent = agents.Agent(
            name="Weather", instructions="Answer briefly.", model=model, tools=[get_weather]
        )
        try:
            return await agents.Runner.run(agent, "What is the weather in Paris?")
        finally:
            await client.close()

    agents.set_tracing_disabled(True)
    result = asyncio.run(run())
    assert result.final_output == "It is sunny in Paris."
    _, sent = upstream.last()
    tool_message = next(m for m in sent["messages"] if m["role"] == "tool")
    assert tool_message["content"] == "sunny in Paris"


# --------------------------------------------------------------------------------------
# A Python connection and a before handler (the package)
# --------------------------------------------------------------------------------------

FUNCTIONS = """
def answer(messages, **params):
    # What the connection got, so the test can see the translated request.
    system = [m["content"] for m in messages if m["role"] == "system"]
    return "python says: " + " | ".join(system) + " / " + messages[-1]["content"]

async def stream(messages, **params):
    for piece in ["py", "thon ", "streams"]:
        yield piece

def brief(ctx):
    # A before handler sees the door and the Responses-shaped parameters.
    if ctx.endpoint == "responses":
        ctx.llm_params["instructions"] = "Be brief."
"""


def test_a_python_connection_through_the_responses_door(serve_config: Any, tmp_path: Path) -> None:
    (tmp_path / "responses_functions.py").write_text(FUNCTIONS)
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
host = "127.0.0.1"
port = 0
before = ["responses_functions.brief"]
[connections.py]
api_type = "function"
inference_func = "responses_functions.answer"
[connections.pystream]
api_type = "function"
inference_func = "responses_functions.stream"
[routing]
"stream*" = "pystream.*"
"*" = "py.*"
[groups.default]
api_keys = [{json.dumps(CLIENT_KEY)}]
"""
    )
    server = serve_config(str(config))
    client = client_for(server.url)
    response = client.responses.create(model="local", input="Hi")
    assert response.output_text == "python says: Be brief. / Hi"
    assert response.instructions == "Be brief.", "the handler's change is echoed"
    with client.responses.stream(model="stream-local", input="Hi") as events:
        kinds = [e.type for e in events]
        final = events.get_final_response()
    assert final.output_text == "python streams"
    assert kinds[-1] == "response.completed"
