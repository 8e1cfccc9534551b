"""The ``lm-proxy-server`` / ``lm-proxy`` console scripts and ``python -m lm_proxy``.

The same command line as the native binary (argument parsing, ``.env``, config
loading and serving happen in Rust), with two differences: configs may name Python
callables (or be ``.py`` files), and Python owns the signals: Ctrl+C and SIGTERM go
to a Python handler that records them, and the Rust side, which waits with the GIL
released in short slices, sees them and shuts down gracefully (a second signal
exits at once).
"""

from __future__ import annotations

import sys

from . import _lm_proxy
from .server import route_signals


def main() -> None:
    """Run the gateway's command line with this process's arguments and exit."""
    flag = _lm_proxy.SignalFlag()
    with route_signals(flag, take_ignored=True):
        code = _lm_proxy.run_cli(["lm-proxy-server", *sys.argv[1:]], flag)
    sys.exit(code)
