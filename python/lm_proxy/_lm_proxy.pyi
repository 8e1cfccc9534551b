"""Type stubs for the native module built from src/python/mod.rs."""

__version__: str

def run_cli(argv: list[str]) -> int:
    """Run the server's command line with ``argv`` (program name first).

    Blocks until the server stops (the GIL is released meanwhile) and returns the
    process exit code.
    """
