"""Python extensions for the `python-ext-c64` benchmark scenario.

Written against the reference lm-proxy's interfaces (a validator takes the key and
returns a group; a `before` handler takes the request context), which this
project's Python package keeps, so one config serves both.
"""


def validate(api_key: str) -> str | None:
    """Key check: one valid key, in the `default` group."""
    return "default" if api_key == "bench-key" else None


def tag_request(ctx) -> None:
    """Request handler: a small edit of the upstream parameters."""
    ctx.llm_params["user"] = "bench"
