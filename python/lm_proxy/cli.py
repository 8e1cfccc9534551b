"""The ``lm-proxy-server`` / ``lm-proxy`` console scripts and ``python -m lm_proxy``.

The same command line as the native binary (argument parsing, ``.env``, config
loading and serving happen in Rust), with two differences: configs may name Python
callables (or be ``.py`` files), and Python owns the signals: Ctrl+C and SIGTERM
reach Python's handlers, and the Rust side, which waits with the GIL released in
short slices, notices them and shuts down gracefully.
"""

from __future__ import annotations

import sys

from . import _lm_proxy
from .server import terminate_raises_system_exit


def main() -> None:
    """Run the gateway's command line with this process's arguments and exit."""
    with terminate_raises_system_exit():
        code = _lm_proxy.run_cli(["lm-proxy-server", *sys.argv[1:]])
    sys.exit(code)
