"""``lm_proxy.api_key_check.AllowAll``."""

from __future__ import annotations

from typing import Any

from .._builtins import Builtin


class AllowAll(Builtin):
    """Accept every key into ``group``; with ``capture_api_key`` the key is put in
    ``user_info`` (``{"api_key": key}``) for handlers (it is redacted in logs)."""

    target = "lm_proxy.api_key_check.AllowAll"

    def __init__(self, group: str = "default", capture_api_key: bool = True) -> None:
        super().__init__(group=group, capture_api_key=capture_api_key)

    def __call__(self, api_key: str | None) -> tuple[str, dict[str, Any]]:
        info = {"api_key": api_key} if self.kwargs.get("capture_api_key", True) else {}
        return self.kwargs.get("group", "default"), info
