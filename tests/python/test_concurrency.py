"""Concurrency: many requests through Python extensions at once, and proof that
Python code never holds up the Rust runtime that serves everything else."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import async_client_for, client_for, import_lm_proxy

import_lm_proxy()
from lm_proxy import Config, Group  # noqa: E402
from lm_proxy.base_types import RequestContext  # noqa: E402

REQUESTS = 200
DEADLINE_S = 120.0


def sync_check(api_key: str) -> Any:
    return ("default", {"key": api_key[-3:]}) if api_key.startswith("user-") else None


async def async_check(api_key: str) -> Any:
    await asyncio.sleep(0.001)
    return sync_check(api_key)


def sync_handler(ctx: RequestContext) -> None:
    ctx.llm_params["temperature"] = 0.5
    ctx.extra["n"] = ctx.request.messages[-1]["content"]


async def async_handler(ctx: RequestContext) -> None:
    await asyncio.sleep(0.001)
    sync_handler(ctx)


async def async_gen_connection(messages: list[dict[str, Any]], **params: Any) -> Any:
    for word in messages[-1]["content"].split():
        await asyncio.sleep(0.001)
        yield word + " "


def sync_callback_connection(
    messages: list[dict[str, Any]], callback: Any = None, **params: Any
) -> str:
    words = [w + " " for w in messages[-1]["content"].split()]
    if callback is not None:
        for word in words:
            callback(word)
    return "".join(words)


FLAVOURS = {
    "sync-check-async-handler-asyncgen": (sync_check, async_handler, async_gen_connection, False),
    "async-check-sync-handler-callback": (
        async_check,
        sync_handler,
        sync_callback_connection,
        True,
    ),
}


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_concurrent_requests_through_python(serve_config: Any, flavour: str) -> None:
    check, handler, connection, async_logger = FLAVOURS[flavour]
    logged: list[Any] = []
    lock = threading.Lock()

    def sync_log(ctx: RequestContext) -> None:
        with lock:
            logged.append((ctx.extra.get("n"), ctx.response is not None, ctx.error))

    async def async_log(ctx: RequestContext) -> None:
        await asyncio.sleep(0)
        sync_log(ctx)

    server = serve_config(
        Config(
            host="127.0.0.1",
            port=0,
            encryption_key="concurrency",
            connections={"py": connection},
            routing={"*": "py.*"},
            groups={"default": Group()},
            api_key_check=check,
            before=[handler],
            loggers=[async_log if async_logger else sync_log],
        ),
        debug=False,
    )

    async def one(client: Any, i: int) -> str:
        prompt = f"request number {i}"
        if i % 2:
            stream = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": prompt}], stream=True
            )
            text = ""
            async for chunk in stream:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
            return text
        answer = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": prompt}]
        )
        return answer.choices[0].message.content or ""

    async def all_of_them() -> list[str]:
        async with async_client_for(server.url, "user-123") as client:
            return await asyncio.wait_for(
                asyncio.gather(*(one(client, i) for i in range(REQUESTS))), DEADLINE_S
            )

    started = time.monotonic()
    answers = asyncio.run(all_of_them())
    elapsed = time.monotonic() - started
    assert answers == [f"request number {i} " for i in range(REQUESTS)]
    server.stop()
    assert len(logged) == REQUESTS
    assert sorted(n for n, _, _ in logged) == sorted(f"request number {i}" for i in range(REQUESTS))
    assert all(has_response and error is None for _, has_response, error in logged)
    print(f"{REQUESTS} requests through Python extensions in {elapsed:.2f}s")


def test_python_never_holds_up_the_runtime(serve_config: Any) -> None:
    """Slow sync handlers (sleeping, or spinning with the GIL) on one server must not
    slow down another server of the same process that needs no Python: the Rust
    runtime (two workers on CI) is never blocked waiting for Python or the GIL."""

    release = threading.Event()
    entered = []  # one item per handler call that has started (list.append is atomic)

    # Until released (or 60 s), which a blocked runtime never does: the free
    # server's latencies then tell "held up" (tens of seconds) from "not held up"
    # with a bound that no loaded machine reaches.
    def slow(ctx: RequestContext) -> None:
        entered.append(ctx.request.model)
        if ctx.request.model == "sleep":
            release.wait(60)
        elif ctx.request.model == "spin":
            end = time.monotonic() + 60
            while time.monotonic() < end and not release.is_set():
                pass  # holds the GIL most of the time

    python_server = serve_config(
        Config(
            host="127.0.0.1",
            port=0,
            connections={"mock": {"api_type": "mock"}},
            routing={"*": "mock.*"},
            groups={"default": Group(api_keys=["k"])},
            before=[slow],
        ),
        debug=False,
    )
    rust_server = serve_config(
        Config(
            host="127.0.0.1",
            port=0,
            connections={"mock": {"api_type": "mock"}},
            routing={"*": "mock.*"},
            groups={"default": Group(api_keys=["k"])},
        ),
        debug=False,
    )

    async def scenario() -> list[float]:
        async with (
            async_client_for(python_server.url, "k") as blocked,
            async_client_for(rust_server.url, "k") as free,
        ):
            msg = [{"role": "user", "content": "hi"}]
            stuck = [
                asyncio.create_task(blocked.chat.completions.create(model=model, messages=msg))
                for model in ["sleep"] * 8 + ["spin"] * 2
            ]
            try:
                # Wait until all of them are in the handler.
                deadline = time.monotonic() + 30
                while len(entered) < len(stuck):
                    assert time.monotonic() < deadline, f"{len(entered)} reached the handler"
                    await asyncio.sleep(0.01)
                latencies = []
                for _ in range(20):
                    t0 = time.monotonic()
                    await free.chat.completions.create(model="m", messages=msg)
                    latencies.append(time.monotonic() - t0)
            finally:
                release.set()
            await asyncio.wait_for(asyncio.gather(*stuck), 30)
            return latencies

    latencies = asyncio.run(scenario())
    assert max(latencies) < 10, f"requests needing no Python were held up: {latencies}"
    # And the Python server itself is fine afterwards.
    assert (
        client_for(python_server.url, "k")
        .chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        .choices
    )


def test_sync_calls_run_side_by_side_on_threads_that_keep_their_state(
    serve_config: Any,
) -> None:
    """Sync validators run on caller threads: several at once (six calls meet at a
    barrier, which a pool running them one by one would never reach), and each
    thread keeps its Python thread state between calls (`threading.local` data set
    by one call is still there for a later call on the same thread)."""
    parties = 6
    barrier = threading.Barrier(parties, timeout=20)
    local = threading.local()
    calls_seen: list[int] = []
    lock = threading.Lock()

    def check(api_key: str) -> Any:
        if api_key == "meet":
            barrier.wait()
        local.calls = getattr(local, "calls", 0) + 1
        with lock:
            calls_seen.append(local.calls)
        return "default"

    server = serve_config(
        Config(
            host="127.0.0.1",
            port=0,
            connections={"mock": {"api_type": "mock"}},
            routing={"*": "mock.*"},
            groups={"default": Group()},
            api_key_check=check,
        ),
        debug=False,
    )
    msg = [{"role": "user", "content": "hi"}]

    async def meet() -> None:
        async with async_client_for(server.url, "meet") as client:
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        client.chat.completions.create(model="m", messages=msg)
                        for _ in range(parties)
                    )
                ),
                30,
            )

    asyncio.run(meet())
    # One at a time now: an idle thread is reused, with its thread state.
    for _ in range(10):
        client_for(server.url, "again").chat.completions.create(model="m", messages=msg)
    assert len(calls_seen) == parties + 10
    assert max(calls_seen) > 1, calls_seen
