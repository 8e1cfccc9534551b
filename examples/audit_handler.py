"""An audit-logging `before` handler.

Every request that passed the key check and routing is written to an audit trail
(one JSON line: who, from where, which model and connection, how big the prompt)
before it goes upstream, and the upstream gets an ``X-Request-ID`` header with the
request id so both sides can be matched. Requests asking for a model the caller's
group is not cleared for are refused with 403. Use it from `audit.toml`:

    [[before]]
    class = "audit_handler.AuditTrail"
    file_name = "storage/audit.jsonl"
    restricted_models = ["gpt-4*"]

Handlers may be ``async def`` as well; sync ones (like this) run on a thread pool,
so blocking file writes are fine.
"""

from __future__ import annotations

import fnmatch
import json
import os
import threading
from datetime import UTC, datetime

from lm_proxy.base_types import RequestContext
from lm_proxy.errors import OpenAIHTTPException


class AuditTrail:
    def __init__(
        self,
        file_name: str = "storage/audit.jsonl",
        restricted_models: list[str] | None = None,
        cleared_groups: list[str] | None = None,
    ) -> None:
        self.file_name = file_name
        self.restricted = list(restricted_models or [])
        self.cleared = set(cleared_groups or ["admin"])
        self.lock = threading.Lock()
        folder = os.path.dirname(file_name)
        if folder:
            os.makedirs(folder, exist_ok=True)

    def __call__(self, ctx: RequestContext) -> None:
        model = ctx.request.model if ctx.request else None
        refused = (
            model is not None
            and ctx.group not in self.cleared
            and any(fnmatch.fnmatchcase(model, p) for p in self.restricted)
        )
        prompt_chars = sum(
            len(m.get("content") or "") if isinstance(m.get("content"), str) else 0
            for m in (ctx.request.messages if ctx.request else [])
        )
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "request_id": ctx.id,
            "api_key_id": ctx.api_key_id,
            "group": ctx.group,
            "user": (ctx.user_info or {}).get("user"),
            "remote_addr": ctx.remote_addr,
            "model": model,
            "connection": ctx.connection,
            "prompt_chars": prompt_chars,
            "decision": "refused" if refused else "allowed",
        }
        with self.lock, open(self.file_name, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if refused:
            raise OpenAIHTTPException(
                f"Your group may not use '{model}'.",
                status_code=403,
                error_type="permission_error",
                code="model_not_allowed",
            )
        ctx.llm_params.setdefault("extra_headers", {})["X-Request-ID"] = ctx.id
