"""``python -m lm_proxy``: the same command line as ``lm-proxy-server``."""

from .cli import main

if __name__ == "__main__":
    main()
