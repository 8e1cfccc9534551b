"""Edges of Python extensions that no other test reaches: a client that leaves in
the middle of a Python stream (the generator is closed; the reference's `callback`
raises, so the function stops), a stream that yields an item of the wrong type,
and a key check that names a group the config does not define.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from conftest import CLIENT_KEY, client_for, import_lm_proxy

import_lm_proxy()
from lm_proxy import Config, Group  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello there"}]
# A generous bound for what happens "soon" (the server notices a closed socket at
# its next write, a few milliseconds later); only a broken server reaches it.
SOON_S = 30.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SOON_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {SOON_S}s: {what}"
        time.sleep(0.01)


def config_with(connection: Any, **overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "shutdown_grace_seconds": 2,
        "connections": {"py": connection},
        "routing": {"*": "py.*"},
        "groups": {"default": Group(api_keys=[CLIENT_KEY])},
    }
    settings.update(overrides)
    return Config(**settings)


def read_first_piece_and_leave(url: str) -> None:
    """Open a stream, read until the first piece of text, then close the socket."""
    with (
        httpx.Client(trust_env=False, timeout=SOON_S) as client,
        client.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {") and "tick" in line:
                return
        pytest.fail("the stream ended before its first piece")


# ---- the client leaves ---------------------------------------------------------------


def test_an_async_generator_is_closed_when_the_client_leaves(serve_config: Any) -> None:
    closed = threading.Event()

    async def endless(messages: list[dict[str, Any]], **params: Any) -> Any:
        try:
            while True:
                yield "tick "
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    server = serve_config(config_with(endless), debug=False)
    read_first_piece_and_leave(server.url)
    wait_until(closed.is_set, "the generator's finally ran")
    # The server serves on.
    assert client_for(server.url).models.list().data


def test_a_sync_generator_is_closed_when_the_client_leaves(serve_config: Any) -> None:
    closed = threading.Event()

    def endless(messages: list[dict[str, Any]], **params: Any) -> Any:
        try:
            while True:
                yield "tick "
                time.sleep(0.01)
        finally:
            closed.set()

    server = serve_config(config_with(endless), debug=False)
    read_first_piece_and_leave(server.url)
    wait_until(closed.is_set, "the generator's finally ran")


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_the_callback_raises_once_the_client_has_left(
    serve_config: Any, asynchronous: bool
) -> None:
    """The reference's streaming style: `callback(piece)` in a loop. Once the client
    is gone, a sync function's callback raises ConnectionAbortedError, which ends
    it (here it records that and stops; one that does not catch it just ends); an
    async function is cancelled (its pending await raises CancelledError)."""
    raised: list[BaseException] = []
    done = threading.Event()

    def sync_pieces(messages: list[dict[str, Any]], callback: Any = None, **params: Any) -> str:
        try:
            deadline = time.monotonic() + SOON_S
            while time.monotonic() < deadline:
                callback("tick ")
                time.sleep(0.01)
            return "never"
        except Exception as e:  # what the callback raised is the point
            raised.append(e)
            return "stopped"
        finally:
            done.set()

    async def async_pieces(
        messages: list[dict[str, Any]], callback: Any = None, **params: Any
    ) -> str:
        try:
            deadline = time.monotonic() + SOON_S
            while time.monotonic() < deadline:
                await callback("tick ")
                await asyncio.sleep(0.01)
            return "never"
        except BaseException as e:
            raised.append(e)
            raise
        finally:
            done.set()

    server = serve_config(config_with(async_pieces if asynchronous else sync_pieces), debug=False)
    read_first_piece_and_leave(server.url)
    wait_until(done.is_set, "the function stopped")
    assert len(raised) == 1, raised
    if asynchronous:
        assert isinstance(raised[0], asyncio.CancelledError), repr(raised[0])
    else:
        assert isinstance(raised[0], ConnectionAbortedError), repr(raised[0])
        assert "gone away" in str(raised[0])


# ---- items of the wrong type ---------------------------------------------------------


def test_a_stream_yielding_an_item_of_the_wrong_type_fails_cleanly(serve_config: Any) -> None:
    async def wrong_later(messages: list[dict[str, Any]], **params: Any) -> Any:
        yield "first "
        yield 12345

    def wrong_first(messages: list[dict[str, Any]], **params: Any) -> Any:
        yield object()

    config = config_with(wrong_later)
    config.connections = {**config.connections, "first": wrong_first}
    config.routing = {"first-*": "first.*", **config.routing}
    server = serve_config(config, debug=False)
    client = client_for(server.url)

    # After a piece went out: an error chunk (the SDK raises it) after that piece.
    received = []
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as failed:
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(received) == "first "
    assert "Error processing upstream provider response" in str(failed.value)

    # Before any piece: a 502 with the usual body, no detail in non-debug mode.
    with pytest.raises(openai.APIStatusError) as bad:
        client.chat.completions.create(model="first-m", messages=MESSAGES, stream=True)
    assert bad.value.status_code == 502
    assert bad.value.body["code"] == "upstream_error"
    assert "object" not in bad.value.body["message"]

    # The server serves on.
    assert client.models.list().data


# ---- a group the config does not define ----------------------------------------------


def test_a_key_check_naming_an_unconfigured_group_gets_nothing(serve_config: Any) -> None:
    def check(api_key: str) -> Any:
        return {"good": "default", "ghost": "ghosts"}.get(api_key)

    server = serve_config(
        config_with(
            lambda messages, **params: "ok", api_key_check=check, groups={"default": Group()}
        ),
        debug=False,
    )
    assert (
        client_for(server.url, "good")
        .chat.completions.create(model="m", messages=MESSAGES)
        .choices[0]
        .message.content
        == "ok"
    )
    ghost = client_for(server.url, "ghost")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        ghost.chat.completions.create(model="m", messages=MESSAGES)
    assert denied.value.body["code"] == "connection_not_allowed"
    assert ghost.models.list().data == []
