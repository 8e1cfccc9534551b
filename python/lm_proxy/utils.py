"""Helpers of the reference: resolving dotted paths and config values to objects,
dotted-path lookups into objects, a JSON encoder for log entries."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any

__all__ = [
    "CustomJsonEncoder",
    "add_import_dirs",
    "resolve_callable",
    "resolve_instance_or_callable",
    "resolve_obj_path",
]


def add_import_dirs(*folders: str | os.PathLike[str] | None) -> None:
    """Put folders (and the working directory) first on ``sys.path`` so that modules
    next to a config file, or in the directory the server runs in, can be imported."""
    wanted = [os.path.abspath(os.fspath(f)) for f in folders if f] + [os.getcwd()]
    present = {os.path.abspath(p or os.curdir) for p in sys.path}
    for folder in reversed(wanted):
        if folder not in present:
            sys.path.insert(0, folder)
            present.add(folder)


def resolve_callable(path: str) -> Any:
    """Import ``package.module.name`` (also ``module.Class.attr``) and return the object."""
    path = path.strip()
    parts = path.split(".")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"'{path}' is not a dotted path (module.name)")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # Only a missing module of the path itself means "try a shorter prefix";
            # an import failing inside an existing module is the user's error.
            if e.name is not None and (
                module_name == e.name or module_name.startswith(e.name + ".")
            ):
                continue
            raise
        for attr in parts[split:]:
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                raise ImportError(
                    f"module '{module_name}' has no attribute '{attr}' ({path})"
                ) from None
        return obj
    raise ModuleNotFoundError(f"cannot import '{path}': no module named '{parts[0]}'")


def resolve_instance_or_callable(
    item: Any,
    class_key: str = "class",
    debug_name: str | None = None,
    allow_types: list[type] | None = None,
) -> Any:
    """A config value as an object: None/"" -> None; ``{"class": path, **kwargs}`` ->
    instance; a dotted path -> the object (classes instantiated with no arguments);
    a class -> an instance; a callable -> itself."""
    if item is None or item == "":
        return None
    if isinstance(item, Mapping):
        if class_key not in item:
            raise ValueError(
                f"'{class_key}' key is missing in {debug_name or 'item'} config: {item}"
            )
        args = dict(item)
        target = args.pop(class_key)
        constructor = resolve_callable(target) if isinstance(target, str) else target
        return constructor(**args)
    if isinstance(item, str):
        obj = resolve_callable(item)
        return obj() if inspect.isclass(obj) else obj
    if callable(item):
        return item() if inspect.isclass(item) else item
    if allow_types and any(isinstance(item, t) for t in allow_types):
        return item
    raise ValueError(f"Invalid {debug_name or 'item'} config: {item!r}")


def resolve_obj_path(obj: Any, path: str, default: Any = None) -> Any:
    """Follow a dotted path through dict keys, attributes and list indexes."""
    for part in path.split("."):
        try:
            if isinstance(obj, Mapping):
                obj = obj[part]
            elif isinstance(obj, (list, tuple)) and part.lstrip("-").isdigit():
                obj = obj[int(part)]
            else:
                obj = getattr(obj, part)
        except (AttributeError, KeyError, TypeError, IndexError):
            return default
    return obj


class CustomJsonEncoder(json.JSONEncoder):
    """JSON for log entries: dates as ISO 8601, objects by their fields."""

    def default(self, o: Any) -> Any:
        if isinstance(o, (datetime, date, time)):
            return o.isoformat()
        if hasattr(o, "to_dict"):
            return o.to_dict()
        if hasattr(o, "model_dump"):
            return o.model_dump()
        if hasattr(o, "__dict__"):
            return {k: v for k, v in o.__dict__.items() if not k.startswith("_")}
        return str(o)
