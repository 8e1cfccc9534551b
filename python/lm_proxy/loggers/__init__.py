"""Request loggers of the reference.

``BaseLogger(log_writer, entry_transformer=None)`` with ``JsonLogWriter`` and
``LogEntryTransformer`` run in Rust on a background task. The writer may also be any
Python callable taking the entry dict (a lambda, a database writer): then only the
writing is done in Python. A ``BaseLogger`` whose ``entry_transformer`` is a Python
callable, a subclass of ``BaseLogger``, or any callable taking the
:class:`~lm_proxy.base_types.RequestContext` runs in Python (off the request path).
"""

from .base_logger import (
    AbstractLogEntryTransformer,
    AbstractLogWriter,
    BaseLogger,
    LogEntryTransformer,
)
from .log_writers import JsonLogWriter

__all__ = [
    "AbstractLogEntryTransformer",
    "AbstractLogWriter",
    "BaseLogger",
    "JsonLogWriter",
    "LogEntryTransformer",
]
