"""lm-proxy: an OpenAI-compatible LLM gateway with a Rust core.

The server, routing, providers and built-in extensions run in Rust (the native
module ``lm_proxy._lm_proxy``); this package is its Python face:

- :class:`Config`, :class:`Group` (:mod:`lm_proxy.config`): configs in Python, with
  callables as values; ``Config.load(path)`` for every file format;
- :class:`Server`, :func:`serve` (:mod:`lm_proxy.server`): serving in the background
  or until Ctrl+C / SIGTERM;
- ``lm_proxy.bootstrap.bootstrap()`` and ``lm_proxy.bootstrap.env``: the connections
  of a config for library use (not re-exported here: ``lm_proxy.bootstrap`` stays the
  module, as in the reference);
- :class:`RequestContext` (:mod:`lm_proxy.base_types`) and
  :class:`OpenAIHTTPException` (:mod:`lm_proxy.errors`) for handlers;
- the reference's built-ins, which run in Rust: :mod:`lm_proxy.api_key_check`,
  :mod:`lm_proxy.handlers`, :mod:`lm_proxy.loggers`, :mod:`lm_proxy.strategies`.
"""

from ._lm_proxy import __version__
from .base_types import LLMResponse, RequestContext
from .bootstrap import Env
from .config import Config, Group, ModelListingMode
from .errors import ConfigError, OpenAIHTTPException
from .server import Server, serve

__all__ = [
    "Config",
    "ConfigError",
    "Env",
    "Group",
    "LLMResponse",
    "ModelListingMode",
    "OpenAIHTTPException",
    "RequestContext",
    "Server",
    "__version__",
    "serve",
]
