"""``lm_proxy.strategies.Fallback``."""

from __future__ import annotations

from typing import Any

from .._builtins import RustOnly


class Fallback(RustOnly):
    """A connection made of others, tried in order until one answers.

    ``connections``: a list of ``"name"`` / ``"name.model"``, or a dict of name ->
    parameter overrides; at least two. Use it as a value in ``Config.connections``.
    """

    target = "lm_proxy.strategies.Fallback"

    def __init__(self, connections: list[str] | dict[str, dict[str, Any]]) -> None:
        super().__init__(connections=connections)
