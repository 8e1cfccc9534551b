"""Connection strategies of the reference, served by the Rust core."""

from .fallback import Fallback

__all__ = ["Fallback"]
