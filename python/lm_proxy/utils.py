"""Helpers of the reference: resolving dotted paths and config values to objects,
dotted-path lookups into objects, a JSON encoder for log entries, ``env:`` strings,
the client's address."""

from __future__ import annotations

import importlib
import inspect
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from typing import Any

__all__ = [
    "CustomJsonEncoder",
    "add_import_dirs",
    "get_client_ip",
    "replace_env_strings_recursive",
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


def replace_env_strings_recursive(data: Any) -> Any:
    """``data`` with every string ``"env:NAME"`` in it (through dicts and lists)
    replaced by the environment variable ``NAME``; a missing variable gives ``""``
    and a warning, as in the reference. (Config files are substituted by the core,
    which refuses a missing variable instead; see the README.)"""
    if isinstance(data, dict):
        return {k: replace_env_strings_recursive(v) for k, v in data.items()}
    if isinstance(data, list):
        return [replace_env_strings_recursive(v) for v in data]
    if isinstance(data, str) and data.startswith("env:"):
        name = data[4:]
        if name not in os.environ:
            logging.getLogger(__name__).warning("Environment variable '%s' not found", name)
        return os.environ.get(name, "")
    return data


def header_value(request: Any, name: str) -> str | None:
    """A header of ``request.headers`` (any mapping), its name case-insensitive."""
    headers = getattr(request, "headers", None)
    if headers is None:
        return None
    value = headers.get(name)
    if value is None:
        for key, v in headers.items():
            if str(key).lower() == name.lower():
                return str(v)
        return None
    return str(value)


_DEFAULT_TRUSTED_PROXIES = ("127.0.0.0/8", "::1/128")

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def get_client_ip(request: Any, trusted_proxies: Iterable[str] | None = None) -> str:
    """The client's address for a request object with ``.headers`` and
    ``.client.host`` (a Starlette request, :class:`lm_proxy.base_types.HTTPRequest`).

    As the server works out ``remote_addr``: ``X-Forwarded-For``, ``X-Real-IP`` and
    ``Forwarded`` count only when the peer (``client.host``) is a trusted proxy
    (``trusted_proxies``; by default the current config's, else loopback), and the
    forwarding chain is read from the right. The reference believed these headers
    from anyone. The address is returned as written, without port or brackets;
    ``"unknown"`` when nothing is known.
    """
    client = getattr(request, "client", None)
    peer_text = getattr(client, "host", None) if client is not None else None
    peer = _parse_ip(str(peer_text)) if peer_text else None
    nets = _networks(trusted_proxies)

    def trusted(ip: _Address) -> bool:
        return any(ip in net for net in nets)

    # Without a peer (a request that came through a local socket) the headers count;
    # a peer that is not an address ("testclient") is no trusted proxy.
    if peer_text and (peer is None or not trusted(peer[0])):
        return peer[1] if peer is not None else str(peer_text)

    def chain(name: str, extract: Any) -> list[tuple[_Address, str]]:
        found = []
        for value in _header_values(request, name):
            for element in value.split(","):
                parsed = extract(element)
                if parsed is not None:
                    found.append(parsed)
        return found

    def rightmost_untrusted(addresses: list[tuple[_Address, str]]) -> str | None:
        for ip, text in reversed(addresses):
            if not trusted(ip):
                return text
        return addresses[0][1] if addresses else None

    def forwarded_for(element: str) -> tuple[_Address, str] | None:
        for pair in element.split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip().lower() == "for":
                return _parse_ip(value)
        return None

    found = rightmost_untrusted(chain("x-forwarded-for", _parse_ip))
    if found is None:
        real_ip = header_value(request, "x-real-ip")
        parsed = _parse_ip(real_ip) if real_ip else None
        found = parsed[1] if parsed else None
    if found is None:
        found = rightmost_untrusted(chain("forwarded", forwarded_for))
    if found is not None:
        return found
    return peer[1] if peer is not None else "unknown"


def _header_values(request: Any, name: str) -> list[str]:
    headers = getattr(request, "headers", None)
    getlist = getattr(headers, "getlist", None)
    if callable(getlist):
        return [str(v) for v in getlist(name)]
    value = header_value(request, name)
    return [] if value is None else [value]


def _networks(
    trusted_proxies: Iterable[str] | None,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if trusted_proxies is None:
        from .bootstrap import env

        config = env.config
        trusted_proxies = config.trusted_proxies if config is not None else None
    entries = _DEFAULT_TRUSTED_PROXIES if trusted_proxies is None else trusted_proxies
    return [ipaddress.ip_network(e.strip(), strict=False) for e in entries]


def _parse_ip(text: str) -> tuple[_Address, str] | None:
    """An address as proxies write it (``1.2.3.4``, ``1.2.3.4:567``, ``"[::1]:80"``,
    ``::1``): the address (IPv4-mapped IPv6 as IPv4) and its text as written."""
    text = text.strip().strip('"')
    candidates = [text]
    if text.startswith("["):
        candidates = [text[1:].split("]", 1)[0]]
    elif text.count(":") == 1:
        candidates.append(text.split(":", 1)[0])
    for candidate in candidates:
        try:
            ip = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped, candidate
        return ip, candidate
    return None
