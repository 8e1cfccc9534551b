"""Request handlers (``before``) of the reference, served by the Rust core.

Any other callable taking the :class:`~lm_proxy.base_types.RequestContext`, sync or
async, is a Python handler: it may change ``ctx.llm_params`` (``extra_headers``
included) or raise :class:`~lm_proxy.errors.OpenAIHTTPException`.
"""

from .forward_http_headers import SENSITIVE_HEADERS, HTTPHeadersForwarder
from .rate_limiter import RateLimiter, RateLimitScope

__all__ = ["SENSITIVE_HEADERS", "HTTPHeadersForwarder", "RateLimitScope", "RateLimiter"]
