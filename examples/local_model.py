"""A function connection that serves a local model.

Referenced from `local_model.toml`:

    [connections.local]
    api_type = "function"
    inference_func = "local_model.generate"

``generate(messages, **params)`` is an async generator: every piece it yields goes
to the client as a streamed chunk (non-streamed requests get the pieces joined).
A plain function returning a string, an OpenAI-shaped dict, or calling the
reference's ``callback(piece)`` works too.

Out of the box the "model" is a tiny word-level Markov chain trained on the text
below: no download, no GPU, deterministic, so the example runs anywhere. With
``LOCAL_MODEL=<hugging face model id>`` (and ``pip install torch transformers``) the
same connection streams from a real PyTorch model instead; the blocking generation
runs on a thread so the server's event loop stays free.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

CORPUS = """
the gateway speaks the openai api to every client and routes each model name to a
connection . a connection may be a cloud provider or a local model . the local model
runs next to the gateway and answers in words that stream one by one . every answer
ends when the model has nothing more to say .
"""


class MarkovModel:
    """Next word = a random follower of the current word in the corpus."""

    def __init__(self, text: str) -> None:
        words = text.split()
        self.followers: dict[str, list[str]] = defaultdict(list)
        for current, following in itertools.pairwise(words):
            self.followers[current].append(following)

    def generate(self, prompt: str, max_words: int, seed: int, min_words: int = 6) -> list[str]:
        rng = random.Random(seed)
        known = [w for w in prompt.lower().split() if w in self.followers]
        word = known[-1] if known else "the"
        out: list[str] = []
        for _ in range(max_words):
            choices = self.followers.get(word) or ["."]
            if len(out) < min_words:
                # Not done talking yet: no full stop.
                choices = [c for c in choices if c != "."] or self.followers["the"]
            word = rng.choice(choices)
            out.append(word)
            if word == ".":
                break
        return out


_markov = MarkovModel(CORPUS)


async def generate(messages: list[dict[str, Any]], **params: Any) -> AsyncIterator[str]:
    """Stream an answer to the last user message."""
    prompt = next(
        (m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), ""
    )
    max_words = int(params.get("max_tokens") or params.get("max_completion_tokens") or 40)
    if os.environ.get("LOCAL_MODEL"):
        async for piece in _torch_generate(os.environ["LOCAL_MODEL"], messages, max_words):
            yield piece
        return
    seed = int(params.get("seed") or 0)
    for i, word in enumerate(_markov.generate(prompt, max_words, seed)):
        await asyncio.sleep(0)  # a real model would be computing here
        yield word if i == 0 else " " + word


_pipelines: dict[str, Any] = {}


async def _torch_generate(
    model_id: str, messages: list[dict[str, Any]], max_tokens: int
) -> AsyncIterator[str]:  # pragma: no cover - needs torch, transformers and a model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    if model_id not in _pipelines:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id)
        _pipelines[model_id] = (tokenizer, model)
    tokenizer, model = _pipelines[model_id]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt"
    )
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    worker = threading.Thread(
        target=model.generate,
        kwargs={"input_ids": inputs, "max_new_tokens": max_tokens, "streamer": streamer},
        daemon=True,
    )
    worker.start()
    loop = asyncio.get_running_loop()
    pieces = iter(streamer)
    while True:
        piece = await loop.run_in_executor(None, next, pieces, None)
        if piece is None:
            break
        if piece:
            yield piece
