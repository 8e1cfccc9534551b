"""The Python examples of examples/ (referenced from the README) work as documented."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import REPO_ROOT, UPSTREAM_KEY, MockUpstream, client_for, import_lm_proxy

import_lm_proxy()
from lm_proxy import Config  # noqa: E402

EXAMPLES = REPO_ROOT / "examples"
MESSAGES = [{"role": "user", "content": "Tell me about the local model"}]


def load(name: str) -> Config:
    config = Config.load(EXAMPLES / name)
    config.port = 0
    return config


def test_custom_validator(serve_config: Any) -> None:
    server = serve_config(load("custom_validator.toml"), debug=False)
    for key in ("secret-key", "user-alice"):
        answer = client_for(server.url, key).chat.completions.create(
            model="demo", messages=MESSAGES
        )
        assert answer.choices[0].message.content.startswith("You said:")
    with pytest.raises(openai.AuthenticationError) as revoked:
        client_for(server.url, "user-mallory").chat.completions.create(
            model="demo", messages=MESSAGES
        )
    assert revoked.value.body["code"] == "key_revoked"
    with pytest.raises(openai.AuthenticationError):
        client_for(server.url, "stranger").chat.completions.create(model="demo", messages=MESSAGES)


def test_audit_handler(serve_config: Any, upstream: MockUpstream, tmp_path: Path) -> None:
    config = load("audit.toml")
    trail = tmp_path / "audit" / "trail.jsonl"
    config.before[0]["file_name"] = str(trail)
    # Send the requests to the recording upstream to see the added header.
    config.connections["mock"] = {
        "api_type": "openai",
        "api_base": upstream.api_base,
        "api_key": UPSTREAM_KEY,
    }
    server = serve_config(config, debug=False)
    user = client_for(server.url, "user-key")
    user.chat.completions.create(model="small", messages=MESSAGES)
    request_id = upstream.only_request().headers["x-request-id"]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        user.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert refused.value.body["code"] == "model_not_allowed"
    client_for(server.url, "admin-key").chat.completions.create(model="gpt-4o", messages=MESSAGES)

    entries = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [(e["group"], e["model"], e["decision"]) for e in entries] == [
        ("users", "small", "allowed"),
        ("users", "gpt-4o", "refused"),
        ("admin", "gpt-4o", "allowed"),
    ]
    assert entries[0]["request_id"] == request_id
    assert entries[0]["prompt_chars"] == len(MESSAGES[0]["content"])
    assert all(len(e["api_key_id"]) == 64 for e in entries)


def test_load_balancer(serve_config: Any) -> None:
    server = serve_config(load("load_balancer_config.py"), debug=False)
    client = client_for(server.url, "KEY1")
    random.seed(7)  # the balancer draws from the module-level random generator
    answers = [
        client.chat.completions.create(model="any", messages=MESSAGES).choices[0].message.content
        for _ in range(24)
    ]
    assert set(answers) == {"Answered by server1.", "Answered by server2."}
    assert answers.count("Answered by server1.") > answers.count("Answered by server2.")
    stream = client.chat.completions.create(model="any", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text in {"Answered by server1.", "Answered by server2."}


def test_local_model(serve_config: Any) -> None:
    server = serve_config(load("local_model.toml"), debug=False)
    client = client_for(server.url, "local-key")
    whole = client.chat.completions.create(model="local", messages=MESSAGES, seed=3)
    assert whole.model == "markov-tiny"
    text = whole.choices[0].message.content
    assert text and len(text.split()) >= 2
    chunks = list(
        client.chat.completions.create(model="local", messages=MESSAGES, seed=3, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text, "same seed, same answer"
    assert len(chunks) >= len(text.split()) + 2, "one chunk per word"
    short = client.chat.completions.create(model="local", messages=MESSAGES, max_tokens=2)
    assert len(short.choices[0].message.content.split()) <= 2
