"""lm-proxy: an OpenAI-compatible LLM gateway with a Rust core.

This package owns the Python-facing surface only: the version and the command line
(see :mod:`lm_proxy.cli`). The server itself lives in the native module
``lm_proxy._lm_proxy``.
"""

from ._lm_proxy import __version__

__all__ = ["__version__"]
