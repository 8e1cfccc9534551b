"""/v1/embeddings and /v1/completions with the official openai SDK (issue 16).

Against the native binary: the built-in mock (vectors derived from the text, the
requested dimensions, float and base64), an OpenAI-compatible upstream (the body
passed through with only `model` replaced; base64 passed on, or encoded by the
gateway when the upstream gives floats), legacy completions streamed and not, and
the 400 of a connection that cannot serve a door. Against the package: a Python
connection's `embed_func`, sync and async (issue 21 point 6).
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import (
    CLIENT_KEY,
    SHUTDOWN_TIMEOUT_S,
    GatewayProcess,
    client_for,
    gateway_binary,
    import_lm_proxy,
    make_client,
)

UPSTREAM_VECTOR = [0.5, -1.25, 2.0]
COMPLETION_TEXT = " from the upstream"


class Upstream:
    """An OpenAI-compatible `/v1/embeddings` and `/v1/completions` that records the
    raw bodies it gets."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream.bodies.append(raw)
                body = json.loads(raw)
                if self.path == "/v1/embeddings":
                    floats_only = body["model"] == "floats-only"
                    if body.get("encoding_format") == "base64" and not floats_only:
                        packed = struct.pack("<3f", *UPSTREAM_VECTOR)
                        vector: Any = base64.b64encode(packed).decode()
                    else:
                        vector = UPSTREAM_VECTOR
                    answer = {
                        "object": "list",
                        "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                        "model": body["model"],
                        "usage": {"prompt_tokens": 3, "total_tokens": 3},
                    }
                    return self._json(answer)
                chunk = {
                    "id": "cmpl-up",
                    "object": "text_completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "text": COMPLETION_TEXT,
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                }
                if not body.get("stream"):
                    chunk["usage"] = {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
                    return self._json(chunk)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for word in COMPLETION_TEXT.split(" ")[1:]:
                    part = dict(chunk, choices=[dict(chunk["choices"][0], text=" " + word)])
                    self.wfile.write(f"data: {json.dumps(part)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

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

    def last(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.bodies[-1])
        return parsed

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
def client(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    config = tmp_path_factory.mktemp("doors") / "config.toml"
    config.write_text(
        f"""
host = "127.0.0.1"
port = 0
shutdown_grace_seconds = 2
[connections.mock]
api_type = "mock"
[connections.upstream]
api_type = "openai"
api_base = {json.dumps(upstream.base)}
api_key = "sk-upstream"
[connections.anth]
api_type = "anthropic"
api_base = "http://127.0.0.1:9"
api_key = "sk-ant"
[routing]
"small" = "upstream.text-embedding-3-small"
"up-*" = "upstream.*"
"floats-only" = "upstream.*"
"claude*" = "anth.*"
"*" = "mock.*"
[groups.default]
api_keys = [{json.dumps(CLIENT_KEY)}]
"""
    )
    gateway = GatewayProcess(gateway_binary(), config)
    try:
        gateway.wait_ready()
        with make_client(gateway) as sync_client:
            yield sync_client
    finally:
        gateway.stop()


def test_mock_embeddings_float_base64_and_dimensions(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(
        model="mock-embed", input=["hello world", "other"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 16
    assert floats.data[0].embedding != floats.data[1].embedding
    assert sum(x * x for x in floats.data[0].embedding) == pytest.approx(1.0, abs=1e-5)
    assert floats.usage.prompt_tokens == 3
    assert floats.model == "mock-embed"
    # The SDK's default asks for base64 and decodes it: the same vectors.
    decoded = client.embeddings.create(model="mock-embed", input=["hello world", "other"])
    for a, b in zip(decoded.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    explicit = client.embeddings.create(
        model="mock-embed", input="hello world", encoding_format="base64"
    )
    raw = base64.b64decode(str(explicit.data[0].embedding))
    assert list(struct.unpack("<16f", raw)) == pytest.approx(floats.data[0].embedding, abs=1e-6)
    short = client.embeddings.create(model="mock-embed", input="hello world", dimensions=8)
    assert len(short.data[0].embedding) == 8
    tokens = client.embeddings.create(
        model="mock-embed", input=[[1, 2, 3]], encoding_format="float"
    )
    assert len(tokens.data[0].embedding) == 16


def test_embeddings_pass_through_to_an_openai_compatible_upstream(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    answer = client.embeddings.create(model="small", input="hi", dimensions=3, user="u-7")
    assert answer.data[0].embedding == pytest.approx(UPSTREAM_VECTOR)
    assert answer.usage.prompt_tokens == 3
    sent = upstream.last()
    assert sent["model"] == "text-embedding-3-small"
    assert sent["input"] == "hi"
    assert sent["dimensions"] == 3
    assert sent["user"] == "u-7"
    assert sent["encoding_format"] == "base64"
    # An upstream that ignores base64: the gateway encodes its floats.
    floats = client.embeddings.create(model="floats-only", input="hi")
    assert floats.data[0].embedding == pytest.approx(UPSTREAM_VECTOR)


def test_completions_streamed_and_not(client: openai.OpenAI, upstream: Upstream) -> None:
    whole = client.completions.create(model="mock-instruct", prompt="hello there", max_tokens=50)
    assert whole.choices[0].text == "You said: hello there"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == 4
    streamed = client.completions.create(
        model="mock-instruct",
        prompt="hello there",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "You said: hello there"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 6

    passed = client.completions.create(model="up-instruct", prompt="say", max_tokens=5)
    assert passed.choices[0].text == COMPLETION_TEXT
    assert upstream.last() == {"model": "up-instruct", "prompt": "say", "max_tokens": 5}
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model="up-instruct", prompt="say", stream=True)
    )
    assert text == COMPLETION_TEXT
    assert upstream.last()["stream"] is True


def test_a_connection_that_cannot_serve_the_door_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as embed_error:
        client.embeddings.create(model="claude-x", input="hi")
    assert "'anth'" in str(embed_error.value)
    with pytest.raises(openai.BadRequestError) as completion_error:
        client.completions.create(model="claude-x", prompt="hi")
    assert "'anth'" in str(completion_error.value)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="mock", input=[])


# --------------------------------------------------------------------------------------
# A Python connection's embed_func (the package)
# --------------------------------------------------------------------------------------

EMBEDDERS = """
import asyncio

def sync_embed(texts):
    return [[float(len(t)), 1.0, 0.0] for t in texts]

async def async_embed(texts):
    await asyncio.sleep(0)
    return [[0.0, 2.0, float(len(t))] for t in texts], 11

def chat(messages, **params):
    return "chat still works"

def broken(texts):
    raise RuntimeError("no model here")

def wrong(texts):
    return ["not", "vectors"]

def shout(ctx):
    # A before handler on the embeddings door: it sees the door and may change input.
    if ctx.endpoint == "embeddings" and ctx.request.get("model") == "sync-h":
        ctx.llm_params["input"] = [t + "!" for t in ctx.llm_params["input"]]
"""


def serve_embedders(serve_config: Any, folder: Path) -> openai.OpenAI:
    (folder / "doors_embedders.py").write_text(EMBEDDERS)
    config = folder / "config.toml"
    config.write_text(
        f"""
host = "127.0.0.1"
port = 0
before = ["doors_embedders.shout"]
[connections.sync]
api_type = "function"
embed_func = "doors_embedders.sync_embed"
inference_func = "doors_embedders.chat"
[connections.async]
api_type = "function"
embed_func = "doors_embedders.async_embed"
[connections.broken]
api_type = "function"
embed_func = "doors_embedders.broken"
[connections.wrong]
api_type = "function"
embed_func = "doors_embedders.wrong"
[routing]
"sync*" = "sync.*"
"async*" = "async.*"
"broken*" = "broken.*"
"wrong*" = "wrong.*"
[groups.default]
api_keys = [{json.dumps(CLIENT_KEY)}]
"""
    )
    server = serve_config(str(config))
    return client_for(server.url)


def test_python_embed_func_sync_and_async(serve_config: Any, tmp_path: Path) -> None:
    import_lm_proxy()
    client = serve_embedders(serve_config, tmp_path)
    sync = client.embeddings.create(model="sync-e", input=["abc", "de"], encoding_format="float")
    assert [d.embedding for d in sync.data] == [[3.0, 1.0, 0.0], [2.0, 1.0, 0.0]]
    assert sync.usage.prompt_tokens == 0
    shouted = client.embeddings.create(model="sync-h", input=["abc"], encoding_format="float")
    assert shouted.data[0].embedding == [4.0, 1.0, 0.0], "the handler's input was embedded"
    decoded = client.embeddings.create(model="async-e", input="abcd")
    assert decoded.data[0].embedding == [0.0, 2.0, 4.0]
    assert decoded.usage.prompt_tokens == 11
    cut = client.embeddings.create(
        model="async-e", input="abcd", dimensions=2, encoding_format="float"
    )
    assert cut.data[0].embedding == pytest.approx([0.0, 1.0]), "cut to 2 and scaled to unit length"
    # The same connection still answers chat; an embeddings-only one says so.
    chat = client.chat.completions.create(
        model="sync-c", messages=[{"role": "user", "content": "x"}]
    )
    assert chat.choices[0].message.content == "chat still works"
    with pytest.raises(openai.BadRequestError, match="embeddings only"):
        client.chat.completions.create(model="async-c", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="'sync'"):
        client.completions.create(model="sync-c", prompt="x")
    with pytest.raises(openai.APIStatusError) as broken:
        client.embeddings.create(model="broken", input="x")
    assert broken.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as wrong:
        client.embeddings.create(model="wrong", input="x")
    assert wrong.value.status_code == 502


def test_a_local_model_serves_embeddings_through_the_gateway(
    serve_config: Any, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real path of issue 21 point 6: examples/local_model.embed (mean pooling of
    # the last hidden states) on real torch and transformers, with the tiny model that
    # test_local_model writes itself (no download), through the gateway and the SDK.
    import asyncio

    import test_local_model
    from lm_proxy import Config

    model_dir = test_local_model.build_model(tmp_path_factory.mktemp("tiny-encoder"))
    monkeypatch.setenv("LOCAL_EMBEDDING_MODEL", str(model_dir))
    monkeypatch.setenv("LOCAL_MODEL_DEVICE", "cpu")
    folder = tmp_path_factory.mktemp("local-embed")
    (folder / "config.toml").write_text(
        f"""
host = "127.0.0.1"
port = 0
[connections.local]
api_type = "function"
embed_func = "local_model.embed"
[routing]
"*" = "local.*"
[groups.default]
api_keys = [{json.dumps(CLIENT_KEY)}]
"""
    )
    config = Config.load(folder / "config.toml")
    client = client_for(serve_config(config).url)
    texts = ["tell me about the model", "one two", "red green blue fast slow big small"]
    direct, tokens = asyncio.run(test_local_model.local_model.embed(texts, str(model_dir)))
    floats = client.embeddings.create(model="local-encoder", input=texts, encoding_format="float")
    assert len(floats.data) == 3
    assert len(floats.data[0].embedding) == 32, "the tiny model's hidden size"
    for got, expected in zip(floats.data, direct, strict=True):
        assert got.embedding == pytest.approx(expected, abs=1e-5)
    assert floats.usage.prompt_tokens == tokens == sum(len(t.split()) for t in texts)
    decoded = client.embeddings.create(model="local-encoder", input=texts[0])
    assert decoded.data[0].embedding == pytest.approx(direct[0], abs=1e-5)
    short = client.embeddings.create(model="local-encoder", input=texts[1], dimensions=8)
    assert len(short.data[0].embedding) == 8
    assert sum(x * x for x in short.data[0].embedding) == pytest.approx(1.0, abs=1e-4)
