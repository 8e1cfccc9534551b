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
``LOCAL_MODEL=<hub id or local folder>`` (and ``pip install torch transformers``) the
same connection streams from a real PyTorch model instead (see "Local models" in the
README):

- ``LOCAL_MODEL_DEVICE``: ``cuda``, ``cuda:1``, ``cpu``, ...; default ``cuda`` when
  torch sees a GPU, else ``cpu``.
- ``LOCAL_MODEL_MAX_CONCURRENCY``: generations running at once (default 4); more
  requests wait their turn.
- Request fields honoured: ``max_tokens`` / ``max_completion_tokens`` (default 256),
  ``temperature`` (0 = greedy; default 1), ``top_p``, ``seed``, ``stop``, and the
  vLLM-style ``min_tokens`` / ``ignore_eos``. Answers carry real token counts in
  ``usage`` and ``finish_reason`` ``"length"`` when cut by ``max_tokens``.

Each generation runs ``model.generate`` on a thread of its own (torch releases the
GIL inside its kernels, so several run side by side and the server's event loop
stays free). Tokens come back through a streamer into an asyncio queue; an
exception in the thread is raised to the gateway at once (a 502, or an error chunk
once streaming), and a client that goes away closes this generator, whose
``finally`` sets a stop flag that a stopping criterion reads before the next token.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import os
import random
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger("local_model")

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


async def generate(messages: list[dict[str, Any]], **params: Any) -> AsyncIterator[Any]:
    """Stream an answer to the last user message."""
    model_id = os.environ.get("LOCAL_MODEL")
    if model_id:
        async for piece in torch_generate(model_id, messages, params):
            yield piece
        return
    prompt = next(
        (m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), ""
    )
    max_words = int(params.get("max_tokens") or params.get("max_completion_tokens") or 40)
    seed = int(params.get("seed") or 0)
    for i, word in enumerate(_markov.generate(prompt, max_words, seed)):
        await asyncio.sleep(0)  # a real model would be computing here
        yield word if i == 0 else " " + word


# --- PyTorch / transformers -------------------------------------------------------

DEFAULT_MAX_TOKENS = 256

_models: dict[str, tuple[Any, Any]] = {}
_load_lock = threading.Lock()
# One semaphore per event loop (asyncio primitives belong to the loop they run on).
_slots: dict[tuple[asyncio.AbstractEventLoop, int], asyncio.Semaphore] = {}
_running = 0
_running_lock = threading.Lock()
# Generations in progress: at exit they are told to stop and given a moment to, as a
# thread still inside torch when the interpreter goes away aborts the process.
_active: dict[threading.Thread, threading.Event] = {}


@atexit.register
def _stop_all() -> None:
    for thread, flag in list(_active.items()):
        flag.set()
        thread.join(timeout=5)


def max_concurrency() -> int:
    value = os.environ.get("LOCAL_MODEL_MAX_CONCURRENCY", "4")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"LOCAL_MODEL_MAX_CONCURRENCY must be a whole number >= 1, not {value!r}")
    return n


def device_name() -> str:
    import torch

    return os.environ.get("LOCAL_MODEL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def load(model_id: str) -> tuple[Any, Any]:
    """The tokenizer and model for a hub id or a local folder, loaded once (blocking)."""
    with _load_lock:
        if model_id not in _models:
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = device_name()
            tokenizer = AutoTokenizer.from_pretrained(model_id)
            # The dtype the weights were saved in (bf16 stays bf16 on a GPU); the 4.x
            # line calls the argument `torch_dtype`, 5.x `dtype`.
            major = int(transformers.__version__.split(".")[0])
            dtype_arg = {"dtype": "auto"} if major >= 5 else {"torch_dtype": "auto"}
            model = AutoModelForCausalLM.from_pretrained(model_id, **dtype_arg)
            model.to(device)
            model.eval()
            log.info("loaded %s on %s (%s)", model_id, device, model.dtype)
            _models[model_id] = (tokenizer, model)
        return _models[model_id]


def _text_of(content: Any) -> str:
    """OpenAI message content: a string or a list of parts (the text parts count)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return "" if content is None else str(content)


def _stop_strings(stop: Any) -> list[str]:
    from lm_proxy.errors import OpenAIHTTPException

    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise OpenAIHTTPException("stop must be a string or a list of strings", param="stop")
    return [s for s in stop if s]


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could start a stop string: they are
    not sent until the next token shows whether the stop string follows."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


def _encode(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[Any, Any]:
    """input_ids and attention_mask of the chat, its template applied.

    transformers 5.x returns a BatchEncoding from apply_chat_template(...,
    return_tensors="pt") (4.x returned the ids tensor); asking for the dict works on
    both lines."""
    import torch

    chat = [
        {"role": m.get("role", "user"), "content": _text_of(m.get("content"))} for m in messages
    ]
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
    else:  # a base model without a template: a plain transcript
        text = "".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant:"
        encoded = tokenizer(text, return_tensors="pt")
    if isinstance(encoded, torch.Tensor):
        ids = encoded
        mask = None
    else:
        ids = encoded["input_ids"]
        mask = encoded.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    return ids, mask


def _sampler(temperature: float, top_p: float, seed: int) -> Any:
    """A logits processor that samples with its own seeded generator and leaves only
    the chosen token: generation stays greedy for transformers, and a seed gives
    the same text whatever else runs at the same time (torch's global generator is
    shared by every thread)."""
    import torch
    from transformers import LogitsProcessor

    class Sampler(LogitsProcessor):  # type: ignore[misc]
        def __init__(self) -> None:
            self.generator: Any = None

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if self.generator is None:
                self.generator = torch.Generator(device=scores.device)
                self.generator.manual_seed(seed)
            logits = scores.float() / temperature
            probs = torch.softmax(logits, dim=-1)
            if top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
                # Keep the smallest set whose mass reaches top_p (at least one token).
                outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
                sorted_probs = sorted_probs.masked_fill(outside, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
            choice = torch.multinomial(probs, 1, generator=self.generator)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter(-1, choice, 0.0)

    return Sampler()


def _float_param(
    params: dict[str, Any], name: str, default: float, low: float, high: float
) -> float:
    from lm_proxy.errors import OpenAIHTTPException

    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise OpenAIHTTPException(f"{name} must be a number from {low} to {high}", param=name)
    return float(value)


def _int_param(params: dict[str, Any], name: str, low: int) -> int | None:
    from lm_proxy.errors import OpenAIHTTPException

    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OpenAIHTTPException(f"{name} must be a whole number >= {low}", param=name)
    return value


async def torch_generate(
    model_id: str, messages: list[dict[str, Any]], params: dict[str, Any]
) -> AsyncIterator[Any]:
    """Text pieces as the model produces them, then a chunk with the finish reason
    (and one with usage when the client asked for it, or the answer is not streamed)."""
    import torch
    from lm_proxy.errors import OpenAIHTTPException
    from transformers import StoppingCriteria, StoppingCriteriaList

    max_tokens = _int_param(params, "max_completion_tokens", 1) or _int_param(
        params, "max_tokens", 1
    )
    max_tokens = max_tokens or DEFAULT_MAX_TOKENS
    min_tokens = min(_int_param(params, "min_tokens", 0) or 0, max_tokens)
    temperature = _float_param(params, "temperature", 1.0, 0.0, 2.0)
    top_p = _float_param(params, "top_p", 1.0, 0.0, 1.0)
    seed = _int_param(params, "seed", -(2**63))
    stops = _stop_strings(params.get("stop"))
    if params.get("ignore_eos"):
        min_tokens = max_tokens

    loop = asyncio.get_running_loop()
    limit = max_concurrency()
    slots = _slots.get((loop, limit))
    if slots is None:
        slots = _slots[(loop, limit)] = asyncio.Semaphore(limit)
    tokenizer, model = await asyncio.to_thread(load, model_id)
    input_ids, attention_mask = _encode(tokenizer, messages)
    prompt_tokens = int(input_ids.shape[-1])
    context = getattr(model.config, "max_position_embeddings", None)
    if context and prompt_tokens >= context:
        raise OpenAIHTTPException(
            f"the prompt has {prompt_tokens} tokens; this model takes at most {context}",
            code="context_length_exceeded",
            param="messages",
        )
    if context:
        max_tokens = min(max_tokens, context - prompt_tokens)
        min_tokens = min(min_tokens, max_tokens)

    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop_flag = threading.Event()
    done = object()

    def send(item: Any) -> None:
        """From the generation thread to this generator, on its event loop."""
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop_flag.set()

    class Streamer:
        """transformers calls put() with the prompt, then with each new token."""

        def __init__(self) -> None:
            self.prompt_seen = False
            self.tokens = 0

        def put(self, value: Any) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            new = value.reshape(-1).tolist()
            self.tokens += len(new)
            send(new)

        def end(self) -> None:
            pass

    class StopFlag(StoppingCriteria):  # type: ignore[misc]
        def __call__(self, ids: Any, scores: Any, **kwargs: Any) -> Any:
            flag = stop_flag.is_set()
            return torch.full((ids.shape[0],), flag, dtype=torch.bool, device=ids.device)

    streamer = Streamer()
    kwargs: dict[str, Any] = {
        "input_ids": input_ids.to(model.device),
        "attention_mask": attention_mask.to(model.device),
        "max_new_tokens": max_tokens,
        "min_new_tokens": min_tokens,
        "do_sample": False,
        "streamer": streamer,
        "stopping_criteria": StoppingCriteriaList([StopFlag()]),
    }
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        kwargs["pad_token_id"] = tokenizer.eos_token_id
    if temperature > 0:
        if seed is None:
            seed = random.getrandbits(63)
        kwargs["logits_processor"] = [_sampler(temperature, top_p, seed)]

    def work() -> None:
        global _running
        with _running_lock:
            _running += 1
            log.debug("generations running: %d", _running)
        outcome = "finished"
        last: Any = done
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as e:  # handed to the client's side, not lost in the thread
            outcome = f"failed ({type(e).__name__})"
            last = e
        finally:
            # Counted out before the slot can be handed on (when `last` arrives).
            with _running_lock:
                _running -= 1
            if stop_flag.is_set() and outcome == "finished":
                outcome = "stopped"
            log.info("generation %s after %d tokens", outcome, streamer.tokens)
            _active.pop(threading.current_thread(), None)
            send(last)

    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids: list[int] = []
    prefix = read = 0  # incremental decoding: the text of ids[:read] is in `text`
    text = ""  # all text produced, stop strings included
    sent = 0  # characters of `text` sent
    finish: str | None = None

    def decode_new(final: bool) -> None:
        # Decode the tail again with the previous piece as context, so that merged
        # word pieces come out right; hold back a character cut in half, unless done.
        nonlocal text, prefix, read
        before = tokenizer.decode(ids[prefix:read], skip_special_tokens=True)
        after = tokenizer.decode(ids[prefix:], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            text += after[len(before) :]
            prefix, read = read, len(ids)

    async with slots:
        worker = threading.Thread(target=work, name="local-model-generate", daemon=True)
        _active[worker] = stop_flag
        worker.start()
        try:
            while finish is None:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is done:
                    decode_new(final=True)
                    at_max = len(ids) >= max_tokens and not (ids and ids[-1] in eos_ids)
                    finish = "length" if at_max else "stop"
                else:
                    ids.extend(item)
                    decode_new(final=False)
                found = [i for i in (text.find(s, max(0, sent - len(s))) for s in stops) if i >= 0]
                if found:
                    text = text[: min(found)]
                    finish = "stop"
                    stop_flag.set()
                end = len(text) if finish else len(text) - _held_back(text, stops)
                if end > sent:
                    yield text[sent:end]
                    sent = end
            if sent == 0:
                yield ""  # the role chunk, so that every answer has one
            yield {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(ids),
                "total_tokens": prompt_tokens + len(ids),
            }
            options = params.get("stream_options")
            wants_usage = isinstance(options, dict) and options.get("include_usage")
            if not params.get("stream") or wants_usage:
                yield {"choices": [], "usage": usage}
        finally:
            # Also reached when the client went away (the gateway closes this
            # generator): the thread stops before its next token.
            stop_flag.set()


# --- Embeddings (for the embeddings door of issue 16, which will call `embed`) -----

_encoders: dict[str, tuple[Any, Any]] = {}


def load_encoder(model_id: str) -> tuple[Any, Any]:
    """The tokenizer and the base model (hidden states, no LM head), loaded once."""
    with _load_lock:
        if model_id not in _encoders:
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_id)
            if tokenizer.pad_token is None:  # decoder-only tokenizers often have none
                tokenizer.pad_token = tokenizer.eos_token
            # Padding after the text: a causal model's positions and attention for the
            # real tokens are then the same batched or alone.
            tokenizer.padding_side = "right"
            model = AutoModel.from_pretrained(model_id).to(device_name()).eval()
            _encoders[model_id] = (tokenizer, model)
        return _encoders[model_id]


def mean_pool(hidden: Any, attention_mask: Any, normalize: bool = True) -> Any:
    """Sentence-transformers' "mean" pooling: the average of each text's token
    vectors, padding left out, then scaled to length 1 (cosine = dot product)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)
    return pooled


async def embed(
    texts: list[str], model_id: str | None = None, normalize: bool = True
) -> tuple[list[list[float]], int]:
    """One vector per text from a local model's last hidden states, and the number
    of tokens read (for `usage.prompt_tokens`). The model is
    `LOCAL_EMBEDDING_MODEL`, else `LOCAL_MODEL`, unless one is given."""
    import torch

    model_id = model_id or os.environ.get("LOCAL_EMBEDDING_MODEL") or os.environ["LOCAL_MODEL"]
    tokenizer, model = await asyncio.to_thread(load_encoder, model_id)

    def run() -> tuple[list[list[float]], int]:
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        batch = {k: v.to(model.device) for k, v in batch.items() if k != "token_type_ids"}
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        pooled = mean_pool(hidden, batch["attention_mask"], normalize)
        return pooled.float().cpu().tolist(), int(batch["attention_mask"].sum())

    return await asyncio.to_thread(run)
