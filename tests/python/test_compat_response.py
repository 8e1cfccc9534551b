"""What loggers and log writers get, as the reference gave it (issue 19, point 1), and
connections whose answer is a ``str`` subclass carrying the completion (point 5).

The reference's ``ctx.response`` was microcore's ``LLMResponse``: the answer's text
(a real ``str``: the lm-proxy-db-connector add-on writes it into a text column)
with the completion's fields as attributes; ``created_at`` a ``datetime``. Its JSON
log wrote the answer as that text.
"""

from __future__ import annotations

import copy
import json
import pickle
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import CLIENT_KEY, client_for, import_lm_proxy

lm_proxy = import_lm_proxy()
from lm_proxy import Config, Group  # noqa: E402
from lm_proxy._bridge import completion_of_text  # noqa: E402
from lm_proxy.base_types import LLMResponse, RequestContext  # noqa: E402
from lm_proxy.loggers import BaseLogger, JsonLogWriter, LogEntryTransformer  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello there"}]
ANSWER = "You said: Hello there"  # the mock connection's answer to MESSAGES
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def config(**overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "encryption_key": "compat-response-tests",
        "shutdown_grace_seconds": 2,
        "connections": {"mock": {"api_type": "mock"}},
        "routing": {"*": "mock.*"},
        "groups": {"default": Group(api_keys=[CLIENT_KEY])},
    }
    settings.update(overrides)
    return Config(**settings)


def run_requests(url: str) -> None:
    """A plain answer, a streamed one (usage asked for) and a tool call."""
    client = client_for(url)
    client.chat.completions.create(model="plain", messages=MESSAGES)
    stream = client.chat.completions.create(
        model="streamed",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ANSWER
    answer = client.chat.completions.create(
        model="tools",
        messages=MESSAGES,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
    )
    assert answer.choices[0].message.tool_calls


def assert_is_answer(response: Any, model: str) -> None:
    """``response`` behaves as the reference's ``LLMResponse`` of the mock's answer."""
    assert isinstance(response, str) and isinstance(response, LLMResponse)
    assert response == ANSWER and str(response) == ANSWER
    assert response[0] == "Y" and response[:8] == "You said"  # ints and slices: the text
    assert response.choices[0].message.content == ANSWER
    assert response["choices"][0]["message"]["content"] == ANSWER  # str keys: the completion
    assert response.usage.completion_tokens == response["usage"]["completion_tokens"] > 0
    assert response.model == model and response.id.startswith("chatcmpl")
    assert response.content == ANSWER and response.role == "assistant"
    assert json.dumps({"r": response}) == json.dumps({"r": ANSWER})


def test_loggers_get_the_answer_as_text_carrying_the_completion(serve_config: Any) -> None:
    seen: list[RequestContext] = []
    server = serve_config(config(loggers=[seen.append]), debug=False)
    run_requests(server.url)
    server.stop()  # writes out every queued entry

    plain, streamed, tools = sorted(
        seen, key=lambda ctx: ["plain", "streamed", "tools"].index(ctx.model or "")
    )
    assert_is_answer(plain.response, "plain")
    # Streamed: the joined text of the stream, with the assembled completion.
    assert_is_answer(streamed.response, "streamed")
    # Tool calls only: empty text, the calls on the completion.
    assert tools.response == ""
    call = tools.response.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert tools.response.choices[0].finish_reason == "tool_calls"
    for ctx in seen:
        assert isinstance(ctx.created_at, datetime) and ctx.created_at.tzinfo is not None
        assert ctx.user_info == {}  # the in-config key check gives no user info
        assert ctx.to_dict()["response"] is ctx.response

    # What the add-on's DBLogger does with it: a text column takes it.
    db = sqlite3.connect(":memory:")
    db.execute("create table log (response text, created_at text)")
    db.execute("insert into log values (?, ?)", (plain.response, plain.created_at.isoformat()))
    assert db.execute("select response from log").fetchone() == (ANSWER,)


def test_python_log_writers_get_the_answer_and_a_datetime(serve_config: Any) -> None:
    whole: list[dict[str, Any]] = []
    mapped: list[dict[str, Any]] = []
    loggers = [
        # Rust BaseLogger, Python writer: the whole context.
        BaseLogger(log_writer=whole.append),
        # Rust BaseLogger and transformer, Python writer.
        BaseLogger(
            log_writer=mapped.append,
            entry_transformer=LogEntryTransformer(
                answer="response",
                at="created_at",
                tokens="response.usage.completion_tokens",
                info="user_info",
            ),
        ),
    ]
    server = serve_config(config(loggers=loggers), debug=False)
    client_for(server.url).chat.completions.create(model="plain", messages=MESSAGES)
    server.stop()

    assert len(whole) == len(mapped) == 1
    entry = whole[0]
    assert_is_answer(entry["response"], "plain")
    assert isinstance(entry["created_at"], datetime) and entry["created_at"].tzinfo is not None
    assert entry["user_info"] == {}
    assert_is_answer(mapped[0]["answer"], "plain")
    assert isinstance(mapped[0]["at"], datetime) and mapped[0]["at"].tzinfo is not None
    assert mapped[0]["tokens"] == entry["response"].usage.completion_tokens
    assert mapped[0]["info"] == {}

    db = sqlite3.connect(":memory:")
    db.execute("create table log (id text, response text, user_info text)")
    db.execute(
        "insert into log values (?, ?, ?)",
        (entry["id"], entry["response"], json.dumps(entry["user_info"])),
    )
    assert db.execute("select response, user_info from log").fetchone() == (ANSWER, "{}")


def test_json_log_writes_the_answer_text(serve_config: Any, tmp_path: Path) -> None:
    whole = tmp_path / "whole.jsonl"
    mapped = tmp_path / "mapped.jsonl"
    loggers = [
        BaseLogger(log_writer=JsonLogWriter(file_name=str(whole))),
        BaseLogger(
            log_writer=JsonLogWriter(file_name=str(mapped)),
            entry_transformer=LogEntryTransformer(
                answer="response",
                tokens="response.usage.completion_tokens",
                tool="response.choices.0.message.tool_calls.0.function.name",
            ),
        ),
    ]
    server = serve_config(config(loggers=loggers), debug=False)
    run_requests(server.url)
    server.stop()

    lines = [json.loads(line) for line in whole.read_text().splitlines()]
    by_model = {line["model"]: line for line in lines}
    assert by_model["plain"]["response"] == ANSWER
    assert by_model["streamed"]["response"] == ANSWER
    assert by_model["tools"]["response"] == ""
    assert all(line["user_info"] == {} for line in lines)
    assert all(line["created_at"].endswith("Z") for line in lines)

    rows = [json.loads(line) for line in mapped.read_text().splitlines()]
    assert sorted(row["answer"] for row in rows) == ["", ANSWER, ANSWER]
    assert all(isinstance(row["tokens"], int) for row in rows)
    assert [row["tool"] for row in rows if row["answer"] == ""] == ["get_weather"]


# ---- the LLMResponse type -------------------------------------------------------------


def test_llm_response_type() -> None:
    completion = {
        "id": "chatcmpl-1",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    response = LLMResponse.from_completion(completion)
    assert response == "hi" and response.usage.total_tokens == 3
    assert response.get("usage") == completion["usage"] and response.get("nope", 5) == 5
    assert response.completion == completion
    for clone in (pickle.loads(pickle.dumps(response)), copy.deepcopy(response)):
        assert clone == "hi" and clone.usage.total_tokens == 3
    assert LLMResponse("text") == "text" and LLMResponse("text").get("usage") is None
    try:
        response.no_such_field  # noqa: B018
    except AttributeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("unknown attributes raise AttributeError")
    # Content parts are joined, as the Rust side does for the JSON log.
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}}]}
    assert LLMResponse.from_completion(parts) == "ab"


# ---- connections answering with a str subclass carrying the completion (point 5) ----


class CarryingStr(str):
    """A ``str`` with the answer's fields as attributes, as ai-microcore's is."""


def carrying(text: str, **attrs: Any) -> CarryingStr:
    value = CarryingStr(text)
    for name, attr in attrs.items():
        setattr(value, name, attr)
    return value


TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
}
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_completion_of_text() -> None:
    assert completion_of_text("plain") is None
    assert completion_of_text(CarryingStr("no attributes")) is None
    value = carrying(
        "",
        id="chatcmpl-x",
        model="m",
        choices=[
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                "finish_reason": "tool_calls",
            }
        ],
        usage=USAGE,
    )
    completion = completion_of_text(value)
    assert completion is not None
    assert completion["choices"][0]["message"]["tool_calls"] == [TOOL_CALL]
    assert completion["usage"] == USAGE and completion["id"] == "chatcmpl-x"
    # Usage alone (a streamed answer): the text is choice 0.
    streamed = completion_of_text(carrying("all of it", usage=USAGE))
    assert streamed is not None
    assert streamed["choices"][0]["message"]["content"] == "all of it"


def tool_answer(messages: Any, **params: Any) -> str:
    return carrying(
        "",
        choices=[
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                "finish_reason": "tool_calls",
            }
        ],
        usage=USAGE,
    )


def test_str_subclass_with_choices_keeps_tool_calls(serve_config: Any) -> None:
    conn_config = config(
        connections={"mock": {"api_type": "mock"}, "py": tool_answer},
        routing={"*": "py.*"},
    )
    server = serve_config(conn_config, debug=False)
    client = client_for(server.url)
    answer = client.chat.completions.create(model="m", messages=MESSAGES)
    assert answer.choices[0].finish_reason == "tool_calls"
    assert answer.choices[0].message.tool_calls is not None
    assert answer.choices[0].message.tool_calls[0].function.arguments == '{"city": "Oslo"}'
    assert answer.usage is not None and answer.usage.total_tokens == 10


async def streamed_then_returned(messages: Any, callback: Any = None, **params: Any) -> str:
    """The reference's streaming shape (microcore's): pieces to ``callback``, then the
    whole answer returned, carrying what the pieces do not (tool calls, usage)."""
    for piece in ("Let me ", "check."):
        await callback(piece)
    return carrying(
        "Let me check.",
        choices=[
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [TOOL_CALL],
                },
                "finish_reason": "tool_calls",
            }
        ],
        usage=USAGE,
    )


def test_callback_stream_ends_with_the_returned_tool_calls_and_usage(serve_config: Any) -> None:
    conn_config = config(
        connections={"mock": {"api_type": "mock"}, "py": streamed_then_returned},
        routing={"*": "py.*"},
    )
    server = serve_config(conn_config, debug=False)
    stream = client_for(server.url).chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me check."  # the returned text is not sent a second time
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [tc.function.name for tc in calls] == ["get_weather"]
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["tool_calls"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].total_tokens == 10


def test_streamed_rust_connection_answer_carries_its_completion() -> None:
    """``await env.connections[...](..., stream=True)``: the joined text carrying the
    stream's finish reason and usage, as a non-streamed answer carries its own."""
    import asyncio

    from lm_proxy.bootstrap import bootstrap, env

    bootstrap(config(), env_file=None)

    async def use() -> Any:
        return await env.connections["mock"](
            MESSAGES, model="echo", stream=True, stream_options={"include_usage": True}
        )

    answer = asyncio.run(use())
    assert isinstance(answer, LLMResponse) and answer == ANSWER
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens > 0 and answer.model == "echo"
