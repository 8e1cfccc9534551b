"""The ``lm-proxy-server`` / ``lm-proxy`` console scripts and ``python -m lm_proxy``.

Argument parsing, configuration and serving all happen in Rust (``run_cli``); this
module only hands over ``sys.argv`` and turns the result into the exit status.
"""

import signal
import sys

from . import _lm_proxy


def main() -> None:
    """Run the gateway's command line with this process's arguments and exit."""
    # The Rust server handles SIGINT and SIGTERM itself and shuts down gracefully. With
    # Python's own SIGINT handler left in place, Ctrl+C does not reach the server (it
    # keeps running) and a KeyboardInterrupt traceback follows once it stops, so give
    # SIGINT back its default disposition before handing over to Rust.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_lm_proxy.run_cli(["lm-proxy-server", *sys.argv[1:]]))
