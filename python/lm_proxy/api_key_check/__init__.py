"""Key checks of the reference, served by the Rust core.

- :func:`check_api_key_in_config` (the default): the first group whose ``api_keys``
  holds the key;
- :class:`AllowAll`: every key, one group;
- :class:`CheckAPIKeyWithRequest`: ask an HTTP service (OIDC userinfo, ...).

Used in a ``Config`` (or named in a config file), they run in Rust. Any other
callable ``fn(api_key) -> group | (group, user_info) | None``, sync or async, is a
Python key check.
"""

from .allow_all import AllowAll
from .in_config import check_api_key_in_config
from .with_request import CheckAPIKeyWithRequest

__all__ = ["AllowAll", "CheckAPIKeyWithRequest", "check_api_key_in_config"]
