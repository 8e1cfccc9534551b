"""``lm_proxy.api_key_check.check_api_key_in_config``."""

from __future__ import annotations


def check_api_key_in_config(api_key: str | None) -> str | None:
    """The first group (in config order) whose ``api_keys`` contains ``api_key``.

    As a config value it is the Rust built-in (keys kept as digests, one hash
    lookup). Called from Python, it looks at ``lm_proxy.bootstrap.env.config``.
    """
    from ..bootstrap import env

    config = env.config
    if config is None or not api_key:
        return None
    for name, group in config.groups.items():
        if api_key in group.api_keys:
            return name
    return None


check_api_key_in_config._lm_proxy_builtin_ = (  # type: ignore[attr-defined]
    "lm_proxy.api_key_check.check_api_key_in_config"
)
