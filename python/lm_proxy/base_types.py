"""The request context that handlers and loggers receive, and the types around it.

Field for field the reference's ``RequestContext``: ``id``, ``request``,
``http_request``, ``response``, ``error``, ``group``, ``connection``, ``model``,
``llm_params``, ``api_key_id``, ``remote_addr``, ``created_at``, ``duration``,
``user_info``, ``extra``, and ``to_dict()``. The server builds one from its Rust
context before a Python handler runs and reads ``llm_params`` (``model`` and
``extra_headers`` included), ``request.messages``, ``extra`` and ``user_info`` back
afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

__all__ = [
    "Address",
    "AttrDict",
    "ChatCompletionRequest",
    "HTTPRequest",
    "Headers",
    "LLMResponse",
    "Message",
    "RequestContext",
]


class AttrDict(dict):  # type: ignore[type-arg]
    """A dict whose keys can also be read and written as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


class Message(AttrDict):
    """A chat message: ``msg["content"]`` or ``msg.content``."""


# The OpenAI request fields: read as attributes, the ones a client did not send are None.
_REQUEST_FIELDS = frozenset(
    [
        "model",
        "messages",
        "stream",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "seed",
        "metadata",
        "modalities",
        "audio",
        "prediction",
        "reasoning_effort",
        "service_tier",
        "store",
        "stream_options",
        "verbosity",
        "web_search_options",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
    ]
)


class ChatCompletionRequest(AttrDict):
    """The client's request body: ``ctx.request.model``, ``ctx.request.messages``, ...

    A dict (every field the client sent is kept, known or not) with attribute access;
    known OpenAI fields the client left out read as None, as on the reference's
    pydantic model.
    """

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        if name in _REQUEST_FIELDS:
            return None
        raise AttributeError(name)

    @classmethod
    def wrap(cls, body: Mapping[str, Any]) -> ChatCompletionRequest:
        request = cls(body)
        messages = request.get("messages")
        if isinstance(messages, list):
            dict.__setitem__(
                request,
                "messages",
                [Message(m) if isinstance(m, dict) else m for m in messages],
            )
        return request

    def model_dump(self, mode: str = "python", exclude_none: bool = False) -> dict[str, Any]:
        """The body as a plain dict (the reference's pydantic spelling)."""
        del mode
        out = {k: v for k, v in self.items() if not (exclude_none and v is None)}
        if isinstance(out.get("messages"), list):
            out["messages"] = [dict(m) if isinstance(m, dict) else m for m in out["messages"]]
        return out


class Headers(Mapping[str, str]):
    """The client's HTTP headers, case-insensitive, several values per name possible."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = [(str(k), str(v)) for k, v in items]
        self._first: dict[str, str] = {}
        for key, value in self._items:
            self._first.setdefault(key.lower(), value)

    def __getitem__(self, key: str) -> str:
        return self._first[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._first

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def getlist(self, key: str) -> list[str]:
        """Every value of a header that was sent several times."""
        key = key.lower()
        return [v for k, v in self._items if k.lower() == key]

    def raw(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Address(NamedTuple):
    host: str | None
    port: int | None


@dataclass
class HTTPRequest:
    """What is known of the HTTP request: headers and the client's address.

    ``client.host`` is ``remote_addr`` (forwarding headers are believed only from
    ``trusted_proxies``).
    """

    headers: Headers = field(default_factory=Headers)
    client: Address | None = None
    method: str = "POST"


def _attr_tree(value: Any) -> Any:
    """A JSON tree with every dict made an ``AttrDict`` (``choices[0].message.content``
    as on the OpenAI client's objects, ``["message"]["content"]`` as on dicts)."""
    if isinstance(value, Mapping):
        return AttrDict({k: _attr_tree(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_attr_tree(v) for v in value]
    return value


def completion_text(completion: Mapping[str, Any] | None) -> str:
    """The answer's text: the content of choice 0 (text parts joined), or ``""``.

    The same rule as the Rust side's (``logging::answer_text``), so a JSON log line and
    a Python logger see the same text.
    """
    if not isinstance(completion, Mapping):
        return ""
    choices = completion.get("choices")
    if not isinstance(choices, list):
        # An answer of the Anthropic door: a Messages API ``message`` with blocks.
        blocks = completion.get("content")
        if not isinstance(blocks, list):
            return ""
        return "".join(
            block["text"]
            for block in blocks
            if isinstance(block, Mapping)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
    if not choices:
        return ""
    choice = next(
        (c for c in choices if isinstance(c, Mapping) and c.get("index", 0) == 0), choices[0]
    )
    message = choice.get("message") if isinstance(choice, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


class LLMResponse(str):
    """An answer as the reference's microcore ``LLMResponse`` was: its text (a real
    ``str``, so it can be printed, compared, or written into a text column) that also
    carries the whole ``chat.completion``.

    The completion's fields are attributes (``.choices``, ``.usage``, ``.id``,
    ``.model``, ...; nested dicts read as attributes too), and string keys index it
    (``resp["usage"]``) while ints and slices index the text. ``.content`` is the text
    and ``.role`` ``"assistant"``, as in microcore. What loggers get as
    ``ctx.response`` and what awaiting ``env.connections[...]`` returns; a connection
    function that returns one hands the whole completion (usage, tool calls) to the
    client.
    """

    _lm_proxy_completion: AttrDict | None

    def __new__(cls, text: str, completion: Mapping[str, Any] | None = None) -> LLMResponse:
        obj = super().__new__(cls, text)
        obj._lm_proxy_completion = _attr_tree(completion) if completion is not None else None
        return obj

    @property
    def completion(self) -> dict[str, Any] | None:
        """The whole ``chat.completion`` (a dict), or None for text alone."""
        return self.__dict__.get("_lm_proxy_completion")

    @property
    def content(self) -> str:
        return str(self)

    @property
    def role(self) -> str:
        return "assistant"

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not real attributes: the completion's fields.
        completion = self.__dict__.get("_lm_proxy_completion")
        if completion is not None and not name.startswith("_") and name in completion:
            return completion[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            completion = self.__dict__.get("_lm_proxy_completion")
            if completion is None:
                raise KeyError(key)
            return completion[key]
        return str.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """``completion.get(key, default)``: the dict spelling loggers used before."""
        completion = self.__dict__.get("_lm_proxy_completion")
        return default if completion is None else completion.get(key, default)

    def __reduce__(self) -> tuple[Any, ...]:
        completion = self.__dict__.get("_lm_proxy_completion")
        return (type(self), (str(self), completion))

    @classmethod
    def from_completion(cls, completion: Mapping[str, Any]) -> LLMResponse:
        return cls(completion_text(completion), completion)


def _new_id() -> str:
    return str(uuid.uuid4())


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RequestContext:
    """One chat-completion request as it moves through the gateway."""

    id: str | None = field(default_factory=_new_id)
    request: ChatCompletionRequest | None = None
    http_request: HTTPRequest | None = None
    response: Any = None
    error: BaseException | None = None
    group: str | None = None
    connection: str | None = None
    model: str | None = None
    llm_params: dict[str, Any] = field(default_factory=dict)
    api_key_id: str | None = None
    remote_addr: str | None = None
    created_at: datetime | None = field(default_factory=_now)
    duration: float | None = None
    user_info: dict[str, Any] | None = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # The door the request came in through ("chat/completions", "messages",
    # "messages/count_tokens", "embeddings", "completions", "responses"); an
    # lm-proxy addition, last so positional use holds.
    endpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field of the reference's context but ``http_request`` (its headers
        carry the client key): exactly the reference's keys, so writers that map them
        to table columns keep working; ``endpoint`` (an addition) is left out."""
        data = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        data.pop("http_request", None)
        data.pop("endpoint", None)
        if isinstance(self.request, ChatCompletionRequest):
            data["request"] = self.request.model_dump()
        return data
