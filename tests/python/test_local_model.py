"""examples/local_model.py on the real torch and transformers (issue 21).

The model is written by the test itself into a temporary folder: a Llama with random
weights (hidden size 32, two layers) and a word-level tokenizer with a chat template,
so nothing is downloaded. Everything goes through the gateway (the package's Server,
in this process) with the official openai client. torch and transformers are test
requirements (requirements-torch.txt, installed by scripts/test): a missing torch
fails these tests rather than skipping them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import REPO_ROOT, client_for, import_lm_proxy

import_lm_proxy()
from lm_proxy import Config  # noqa: E402

EXAMPLES = REPO_ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
import local_model  # noqa: E402  (the module the gateway imports: same sys.modules entry)

MESSAGES = [{"role": "user", "content": "tell me about the local model"}]
WORDS = [
    *("the", "a", "model", "gateway", "local", "answer", "token", "word", "stream", "client"),
    *("server", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("red", "green", "blue", "fast", "slow", "big", "small", "tell", "me", "about"),
]
CONTEXT = 512


def build_model(folder: Path, vocab_cut: int = 0) -> Path:
    """A tiny Llama and its tokenizer, saved as a hub model would be.

    ``vocab_cut`` makes the model's vocabulary smaller than the tokenizer's, so the
    prompt's ids overflow the embedding table: generation raises in its thread."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokens = ["<unk>", "<pad>", "<eos>", "user", "assistant", "system", ":", *WORDS]
    vocab = {word: i for i, word in enumerate(dict.fromkeys(tokens))}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab) - vocab_cut,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def generations() -> Iterator[list[str]]:
    """The example's log lines (generation ends, generations running)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect(logging.DEBUG)
    logger = logging.getLogger("local_model")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture
def local(serve_config: Any, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> openai.OpenAI:
    """A client of examples/local_model.toml serving the tiny model."""
    monkeypatch.setenv("LOCAL_MODEL", str(model_dir))
    monkeypatch.setenv("LOCAL_MODEL_DEVICE", "cpu")
    config = Config.load(EXAMPLES / "local_model.toml")
    config.port = 0
    server = serve_config(config, debug=False)
    return client_for(server.url, "local-key")


def prompt_tokens(model_dir: Path) -> int:
    tokenizer, _ = local_model.load(str(model_dir))
    encoded = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)
    return len(encoded["input_ids"])


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    """Poll until `condition()` holds; a bound that proves "did not hang"."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_whole_and_streamed_answers_with_usage_and_length(
    local: openai.OpenAI, model_dir: Path
) -> None:
    asked: dict[str, Any] = {"temperature": 0, "max_tokens": 6, "extra_body": {"min_tokens": 6}}
    whole = local.chat.completions.create(model="local", messages=MESSAGES, **asked)
    text = whole.choices[0].message.content
    assert text and text.split()[0] in WORDS
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == prompt_tokens(model_dir)
    assert whole.usage.completion_tokens == 6
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 6

    chunks = list(
        local.chat.completions.create(
            model="local",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **asked,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text, "greedy: the same text streamed and whole"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens

    plain = list(
        local.chat.completions.create(model="local", messages=MESSAGES, stream=True, **asked)
    )
    assert all(c.usage is None for c in plain), "usage only when asked for"


def test_stop_strings_cut_the_text(local: openai.OpenAI) -> None:
    asked: dict[str, Any] = {"temperature": 0, "max_tokens": 12, "extra_body": {"min_tokens": 12}}
    full = local.chat.completions.create(model="local", messages=MESSAGES, **asked)
    text = full.choices[0].message.content or ""
    stop = text.split()[3]
    expected = text[: text.find(stop)]
    for stream in (False, True):
        answer = local.chat.completions.create(
            model="local", messages=MESSAGES, stop=[stop], stream=stream, **asked
        )
        if stream:
            chunks = list(answer)
            cut = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            cut = answer.choices[0].message.content or ""
            finish = answer.choices[0].finish_reason
        assert cut == expected, (stream, text, stop)
        assert finish == "stop"


def test_bad_sampling_fields_are_a_400(local: openai.OpenAI) -> None:
    for bad in ({"min_tokens": "many"}, {"stop": [1, 2]}, {"top_p": 3}):
        with pytest.raises(openai.BadRequestError) as refused:
            local.chat.completions.create(model="local", messages=MESSAGES, extra_body=bad)
        assert refused.value.body["param"] in bad, refused.value.body


def test_seed_gives_the_same_text_at_temperature_one(local: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        answer = local.chat.completions.create(
            model="local",
            messages=MESSAGES,
            temperature=1,
            top_p=0.9,
            seed=seed,
            max_tokens=16,
            extra_body={"min_tokens": 16},
        )
        return answer.choices[0].message.content or ""

    first = sample(7)
    assert sample(7) == first
    assert len({first, sample(8), sample(9)}) > 1, "other seeds, other samples"


def test_a_failing_generation_is_a_502_at_once(
    serve_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_MODEL", str(build_model(tmp_path / "broken", vocab_cut=20)))
    monkeypatch.setenv("LOCAL_MODEL_DEVICE", "cpu")
    config = Config.load(EXAMPLES / "local_model.toml")
    config.port = 0
    server = serve_config(config, debug=True)
    client = client_for(server.url, "local-key")
    for stream in (False, True):
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="local", messages=MESSAGES, stream=stream)
        assert failed.value.status_code == 502
        # Debug mode shows the exception's type (it is always in the log).
        assert "IndexError" in str(failed.value.body)
        assert time.monotonic() - started < 20, "never waits for a dead thread"


def test_an_error_after_the_first_token_ends_the_stream_with_an_error_chunk(
    local: openai.OpenAI, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model of its own, whose forward pass fails on its fourth call (a fault
    # injected into the real model: say the GPU ran out of memory mid-answer).
    folder = build_model(tmp_path / "flaky")
    _, model = local_model.load(str(folder))
    real_forward = model.forward
    calls = 0

    def flaky_forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("injected fault")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky_forward)
    monkeypatch.setenv("LOCAL_MODEL", str(folder))
    stream = local.chat.completions.create(
        model="local",
        messages=MESSAGES,
        stream=True,
        temperature=0,
        max_tokens=20,
        extra_body={"min_tokens": 20},
    )
    text = ""
    with pytest.raises(openai.APIError) as failed:
        for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text, "the first tokens arrived before the error"
    assert "upstream" in str(failed.value).lower() or failed.value.code == "upstream_error"


def test_a_client_that_leaves_stops_the_generation(
    local: openai.OpenAI, generations: list[str]
) -> None:
    long = CONTEXT - 50
    stream = local.chat.completions.create(
        model="local",
        messages=MESSAGES,
        stream=True,
        max_tokens=long,
        extra_body={"min_tokens": long},
    )
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
            if received == 3:
                break
    stream.close()

    def stopped() -> list[int]:
        return [
            int(line.split()[-2])
            for line in generations
            if line.startswith("generation stopped after")
        ]

    wait_for(lambda: stopped(), "the generation thread to stop")
    assert stopped()[0] < long, generations


def test_sixteen_concurrent_streams_all_finish_within_the_bound(
    local: openai.OpenAI, generations: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_MODEL_MAX_CONCURRENCY", "4")
    barrier = threading.Barrier(16)

    def one(i: int) -> tuple[str, str | None]:
        barrier.wait(timeout=30)
        chunks = list(
            local.chat.completions.create(
                model="local",
                messages=MESSAGES,
                stream=True,
                seed=i,
                max_tokens=48,
                extra_body={"min_tokens": 48},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, [c.choices[0].finish_reason for c in chunks if c.choices][-1]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert all(text and finish == "length" for text, finish in results), results
    running = [
        int(line.split()[-1]) for line in generations if line.startswith("generations running")
    ]
    assert len(running) == 16
    assert max(running) <= 4, "LOCAL_MODEL_MAX_CONCURRENCY bounds the generation threads"
    assert max(running) >= 2, "generations run side by side"


def test_embedding_pooling_of_the_local_model(model_dir: Path) -> None:
    # The function the embeddings door (issue 16) will call; until that door
    # exists it is checked directly on the same real model.
    import asyncio

    texts = ["tell me about the model", "one two", "red green blue fast slow big small"]
    together, tokens = asyncio.run(local_model.embed(texts, str(model_dir)))
    alone = [asyncio.run(local_model.embed([t], str(model_dir)))[0][0] for t in texts]
    assert tokens == sum(len(t.split()) for t in texts)
    assert len(together) == 3
    for batched, single in zip(together, alone, strict=True):
        assert sum(x * x for x in batched) == pytest.approx(1.0, abs=1e-4)
        assert batched == pytest.approx(single, abs=1e-4), "padding does not change a vector"
    assert together[0] != pytest.approx(together[1], abs=1e-3)
