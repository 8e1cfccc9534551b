"""``lm_proxy.loggers.log_writers.JsonLogWriter``."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from .._builtins import Builtin
from ..utils import CustomJsonEncoder


class JsonLogWriter(Builtin):
    """Append one JSON object per line to ``file_name`` (parent folders created)."""

    target = "lm_proxy.loggers.log_writers.JsonLogWriter"

    def __init__(self, file_name: str | os.PathLike[str]) -> None:
        super().__init__(file_name=os.fspath(file_name))

    _runtime_attrs = ("_lock",)

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()

    @property
    def file_name(self) -> str:
        return str(self.kwargs["file_name"])

    def __call__(self, logged_data: dict[str, Any]) -> None:
        line = json.dumps(logged_data, cls=CustomJsonEncoder, ensure_ascii=False)
        folder = os.path.dirname(self.file_name)
        with self._lock:
            if folder:
                os.makedirs(folder, exist_ok=True)
            with open(self.file_name, "a", encoding="utf-8") as f:
                f.write(line + "\n")
