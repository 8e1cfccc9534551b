"""A reload (SIGHUP) reuses each Python object whose configuration is unchanged and
rebuilds only what changed (issue 19, point 3): the reference's add-on
`lm-proxy-db-connector` refuses a second instance of its database component
("Database component is already initialized"), which made every reload fail."""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path
from typing import Any

from conftest import STARTUP_TIMEOUT_S, client_for, import_lm_proxy

import_lm_proxy()

MESSAGES = [{"role": "user", "content": "which objects?"}]

# `Database` behaves as the add-on's component: one instance per process. The
# connection answers with the identities of the objects the server uses now.
MODULE = """
from lm_proxy.bootstrap import env

created = []


class Database:
    def __init__(self, url):
        if created:
            raise RuntimeError("Database component is already initialized")
        created.append(self)
        self.url = url


class Tag:
    def __init__(self, name):
        self.name = name


class Answer:
    def __init__(self, prefix):
        self.prefix = prefix

    async def __call__(self, messages, **params):
        db = env.components["db"]
        tag = env.components["tag"]
        return f"{self.prefix} {id(db)} {id(tag)} {tag.name} {id(self)}"
"""

CONFIG = """
[connections.py]
class = "reuse_mod.Answer"
prefix = "answer"
[routing]
"*" = "py.*"
[api_key_check]
class = "lm_proxy.api_key_check.AllowAll"
[components.db]
class = "reuse_mod.Database"
url = "sqlite:///:memory:"
[components.tag]
class = "reuse_mod.Tag"
name = "{tag}"
"""


def ask(url: str) -> list[str]:
    answer = client_for(url, "any").chat.completions.create(model="m", messages=MESSAGES)
    content = answer.choices[0].message.content
    assert content is not None
    return content.split()


def reload(gateway: Any, count: int) -> None:
    """Send SIGHUP and wait for the `count`-th outcome line of a reload."""
    gateway.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S

    def outcomes() -> list[str]:
        return [
            line
            for line in gateway.lines
            if "config reloaded" in line or "config reload rejected" in line
        ]

    while len(outcomes()) < count:
        assert time.monotonic() < deadline, gateway.stderr_text()
        assert gateway.process.poll() is None, gateway.stderr_text()
        time.sleep(0.05)
    last = outcomes()[count - 1]
    assert "config reloaded" in last, gateway.stderr_text()


def test_reload_keeps_unchanged_objects_and_rebuilds_changed_ones(
    tmp_path: Path, start_python_gateway: Any
) -> None:
    (tmp_path / "reuse_mod.py").write_text(textwrap.dedent(MODULE))
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(tag="first"))
    gateway = start_python_gateway(config, cwd=tmp_path)
    _, db, tag, name, connection = ask(gateway.url)
    assert name == "first"

    # Unchanged: the same objects (the database component is not built again).
    reload(gateway, 1)
    assert ask(gateway.url) == ["answer", db, tag, "first", connection]

    # One component changed: only that one is rebuilt.
    config.write_text(CONFIG.format(tag="second"))
    reload(gateway, 2)
    _, db2, tag2, name2, connection2 = ask(gateway.url)
    assert (db2, connection2) == (db, connection)
    assert tag2 != tag
    assert name2 == "second"
