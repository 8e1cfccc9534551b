"""A custom key check (the reference README's `my_validators.py`).

Referenced from `custom_validator.toml` as ``api_key_check =
"my_validators.validate_api_key"``; the module is found because it sits next to the
config file (the working directory works too). Run:

    lm-proxy-server --config examples/custom_validator.toml

A key check returns a group name, ``(group, user_info)``, or None to reject the key
(401 ``invalid_api_key``). It may be ``async def`` too; raise
``lm_proxy.errors.OpenAIHTTPException`` to answer with another status.
"""

from __future__ import annotations

import hmac
import os

from lm_proxy.errors import OpenAIHTTPException

# In real life: a database, a secrets manager, an identity provider.
ADMIN_KEY = os.environ.get("DEMO_ADMIN_KEY", "secret-key")
REVOKED = {"user-mallory"}


def validate_api_key(api_key: str) -> str | tuple[str, dict[str, str]] | None:
    if hmac.compare_digest(api_key, ADMIN_KEY):
        return "admin"
    if api_key in REVOKED:
        raise OpenAIHTTPException(
            "This key was revoked; ask for a new one.",
            status_code=401,
            error_type="authentication_error",
            code="key_revoked",
        )
    if api_key.startswith("user-"):
        # user_info is visible to handlers and loggers (ctx.user_info).
        return "users", {"user": api_key.removeprefix("user-")}
    return None
