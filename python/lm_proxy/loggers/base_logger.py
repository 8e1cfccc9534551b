"""``BaseLogger`` and ``LogEntryTransformer``: Rust built-ins that also work in Python."""

from __future__ import annotations

import abc
from typing import Any

from .._builtins import Builtin
from ..utils import resolve_instance_or_callable, resolve_obj_path


class AbstractLogEntryTransformer(abc.ABC):
    @abc.abstractmethod
    def __call__(self, log_entry: Any) -> dict[str, Any]:
        raise NotImplementedError


class AbstractLogWriter(abc.ABC):
    @abc.abstractmethod
    def __call__(self, logged_data: dict[str, Any]) -> Any:
        raise NotImplementedError


class LogEntryTransformer(Builtin, AbstractLogEntryTransformer):
    """Output key -> dotted path into the context (dict keys, attributes, list
    indexes); a missing path gives None."""

    target = "lm_proxy.loggers.LogEntryTransformer"

    def __init__(self, **mapping: str) -> None:
        Builtin.__init__(self, **mapping)

    @property
    def mapping(self) -> dict[str, str]:
        return dict(self.kwargs)

    def __call__(self, log_entry: Any) -> dict[str, Any]:
        return {key: resolve_obj_path(log_entry, path) for key, path in self.kwargs.items()}


class BaseLogger(Builtin):
    """Turn the context into an entry (the whole context minus the HTTP request, or
    what ``entry_transformer`` picks) and hand it to ``log_writer``."""

    target = "lm_proxy.loggers.BaseLogger"

    def __init__(self, log_writer: Any, entry_transformer: Any = None) -> None:
        super().__init__(log_writer=log_writer, entry_transformer=entry_transformer)
        self.log_writer = log_writer
        self.entry_transformer = entry_transformer

    def _lm_proxy_table_(self) -> dict[str, Any] | None:
        # Subclasses may change what logging does: they run in Python.
        if type(self) is not BaseLogger:
            return None
        transformer = self.entry_transformer
        if not (
            transformer is None
            or type(transformer) is LogEntryTransformer
            or (isinstance(transformer, dict) and _names_transformer(transformer.get("class")))
        ):
            return None  # a Python transformer: the whole logger runs in Python
        table: dict[str, Any] = {"class": self.target, "log_writer": self.log_writer}
        if transformer is not None:
            table["entry_transformer"] = transformer
        return table

    def _transform(self, log_entry: Any) -> dict[str, Any]:
        transformer = resolve_instance_or_callable(
            self.entry_transformer, debug_name="entry_transformer"
        )
        if transformer:
            return transformer(log_entry)  # type: ignore[no-any-return]
        return log_entry.to_dict() if hasattr(log_entry, "to_dict") else dict(log_entry)

    def __call__(self, log_entry: Any) -> Any:
        writer = resolve_instance_or_callable(self.log_writer, debug_name="log_writer")
        return writer(self._transform(log_entry))


def _names_transformer(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name.startswith("lm_proxy.loggers.")
        and name.endswith(".LogEntryTransformer")
    )
