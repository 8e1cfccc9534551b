"""A Python connection that stops answering cannot hold its client (issue 21, point 3).

`first_byte_timeout` bounds a non-streamed answer and a stream's first chunk (504
`upstream_timeout`), `chunk_timeout` the silence between chunks (an error chunk,
then the end); both default to `timeout`. The function's generator is closed when
the deadline passes, so its `finally` runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from conftest import client_for, import_lm_proxy

import_lm_proxy()
from lm_proxy import Config  # noqa: E402

MESSAGES = [{"role": "user", "content": "hi"}]
closed = threading.Event()


async def silent_after_first(messages: list[dict[str, Any]], **params: Any) -> AsyncIterator[str]:
    """One piece when asked for (`first`), then nothing for a minute."""
    try:
        if params.get("first"):
            yield "first"
        await asyncio.sleep(60)
        yield "too late"
    finally:
        closed.set()


release = threading.Event()
returned = threading.Event()


def silent_whole(messages: list[dict[str, Any]], **params: Any) -> str:
    """A sync function that takes longer than its deadline (until the test releases
    it: a caller thread still inside Python when the interpreter exits crashes it)."""
    try:
        release.wait(30)
        return "too late"
    finally:
        returned.set()


def serve(serve_config: Any, connection: dict[str, Any]) -> openai.OpenAI:
    config = Config(
        connections={"slow": {"api_type": "function", "model": "slow", **connection}},
        routing={"*": "slow.*"},
        groups={"default": {"api_keys": ["k"]}},
        port=0,
    )
    return client_for(serve_config(config, debug=False).url, "k")


def test_first_byte_timeout_answers_504_and_closes_the_generator(serve_config: Any) -> None:
    client = serve(
        serve_config,
        {"inference_func": silent_after_first, "first_byte_timeout": 0.5, "chunk_timeout": 30},
    )
    for stream in (False, True):
        closed.clear()
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as late:
            client.chat.completions.create(model="m", messages=MESSAGES, stream=stream)
        assert late.value.status_code == 504
        assert late.value.body["code"] == "upstream_timeout"
        assert time.monotonic() - started < 20, "did not wait for the function"
        assert closed.wait(20), "the generator was closed (its finally ran)"


def test_chunk_timeout_ends_the_stream_with_an_error_chunk(serve_config: Any) -> None:
    client = serve(
        serve_config,
        {"inference_func": silent_after_first, "timeout": 30, "chunk_timeout": 0.5},
    )
    closed.clear()
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_body={"first": True}
    )
    text = ""
    started = time.monotonic()
    with pytest.raises(openai.APIError) as late:
        for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text == "first"
    assert "did not answer in time" in str(late.value)
    assert time.monotonic() - started < 20
    assert closed.wait(20), "the generator was closed (its finally ran)"


def test_timeout_applies_to_a_slow_sync_function(serve_config: Any) -> None:
    client = serve(serve_config, {"inference_func": silent_whole, "timeout": 0.5})
    release.clear()
    returned.clear()
    try:
        with pytest.raises(openai.APIStatusError) as late:
            client.chat.completions.create(model="m", messages=MESSAGES)
        assert late.value.status_code == 504
    finally:
        release.set()
    assert returned.wait(20)


def test_timeouts_must_be_positive(serve_config: Any) -> None:
    with pytest.raises(Exception, match=r"connections\.slow\.chunk_timeout"):
        serve(serve_config, {"inference_func": silent_whole, "chunk_timeout": 0})
