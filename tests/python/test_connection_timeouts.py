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


EXIT_SCRIPT = """
import sys, time, urllib.request, urllib.error
from lm_proxy import Config, Server

started = time.monotonic()

def slow(messages, **params):
    time.sleep(1.5)
    print("function returned", flush=True)
    return "too late"

config = Config(
    connections={"slow": {"api_type": "function", "model": "slow",
                          "inference_func": slow, "timeout": 0.2}},
    routing={"*": "slow.*"},
    groups={"default": {"api_keys": ["k"]}},
    host="127.0.0.1",
    port=0,
)
server = Server(config)
request = urllib.request.Request(
    server.url + "/v1/chat/completions",
    data=b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
    headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
)
try:
    urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as error:
    print("status", error.code, flush=True)
# Exit while `slow` still sleeps on its caller thread.
"""


def test_exiting_while_a_sync_call_runs_waits_for_it(tmp_path: Any) -> None:
    """The interpreter exits while a timed-out sync function still runs on its caller
    thread: exit waits for it instead of aborting (`PyGILState_Release` on a thread
    state the finalizing interpreter already freed, exit status 134/139)."""
    import subprocess
    import sys

    script = tmp_path / "exit_while_running.py"
    script.write_text(EXIT_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "status 504" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "function returned" in done.stdout, done.stdout + done.stderr
