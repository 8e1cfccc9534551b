"""Configs from Python: `Config` / `Group` defaults, `Config.load` for every format
(equivalent files give equal objects), `.py` config files and dotted paths run by the
package's command line, and config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import (
    CLIENT_KEY,
    STARTUP_TIMEOUT_S,
    UPSTREAM_CONTENT,
    MockUpstream,
    client_for,
    console_script,
    gateway_binary,
    import_lm_proxy,
)

lm_proxy = import_lm_proxy()
from lm_proxy import Config, ConfigError, Group  # noqa: E402
from lm_proxy.config import ModelListingMode  # noqa: E402
from lm_proxy.handlers import RateLimiter  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello there"}]


def test_defaults_match_the_reference() -> None:
    config = Config(connections={"m": {"api_type": "mock"}})
    assert config.enabled is True
    assert config.host == "0.0.0.0"
    assert config.port == 8000
    assert config.ssl_keyfile is None and config.ssl_certfile is None
    assert config.api_prefix == "/v1"
    assert config.dev_autoreload is False
    assert config.routing == {}
    assert config.groups == {"default": Group()}
    assert config.api_key_check == "lm_proxy.api_key_check.check_api_key_in_config"
    assert config.loggers == [] and config.before == []
    assert config.encryption_key == "Eclipse"
    assert config.model_listing_mode == ModelListingMode.AS_IS == "as_is"
    assert config.model_info == {} and config.components == {}
    group = Group()
    assert group.api_keys == [] and group.allowed_connections == "*"
    assert Group(connections="a,b").allowed_connections == "a,b"
    assert Group(allowed_connections="a, b").allows_connecting_to("b")
    assert not Group(allowed_connections="a").allows_connecting_to("b")
    with pytest.raises(TypeError, match="unknown config key"):
        Config(connections={}, bogus=1)
    with pytest.raises(TypeError, match="connections"):
        Config()
    # The reference's earlier name of api_key_check.
    assert Config(connections={}, check_api_key=len).api_key_check is len


TOML = """
host = "127.0.0.1"
port = 8123
encryption_key = "env:LMP_TEST_SECRET"
model_listing_mode = "ignore_wildcards"

[connections.openai]
api_type = "open_ai"
api_base = "https://api.openai.com/v1"
api_key = "env:LMP_TEST_KEY"
timeout = 30
[connections.openai.http_headers]
OpenAI-Organization = "org-1"

[connections.local]
api_type = "mock"
response = "hi"

[connections.safe]
class = "lm_proxy.strategies.Fallback"
connections = ["local", "openai.gpt-4o-mini"]

[routing]
"gpt*" = "openai.*"
"local" = "local.tiny"
"*" = "safe.*"

[groups.admin]
api_keys = ["A1", "A2"]
allowed_connections = "*"
[groups.users]
api_keys = ["U1"]
allowed_connections = ["local", "safe"]

[api_key_check]
class = "lm_proxy.api_key_check.AllowAll"
group = "users"

[[before]]
class = "lm_proxy.handlers.RateLimiter"
max_requests = 2
window_seconds = 5

[[loggers]]
class = "lm_proxy.loggers.BaseLogger"
[loggers.log_writer]
class = "lm_proxy.loggers.log_writers.JsonLogWriter"
file_name = "storage/json.log"
[loggers.entry_transformer]
class = "lm_proxy.loggers.LogEntryTransformer"
prompt = "request.messages"
group = "group"

[model_info.local]
owned_by = "me"
"""

YAML = """
host: 127.0.0.1
port: 8123
encryption_key: env:LMP_TEST_SECRET
model_listing_mode: ignore_wildcards
connections:
  openai:
    api_type: open_ai
    api_base: https://api.openai.com/v1
    api_key: env:LMP_TEST_KEY
    timeout: 30
    http_headers: {OpenAI-Organization: org-1}
  local: {api_type: mock, response: hi}
  safe:
    class: lm_proxy.strategies.Fallback
    connections: [local, openai.gpt-4o-mini]
routing:
  "gpt*": openai.*
  local: local.tiny
  "*": safe.*
groups:
  admin: {api_keys: [A1, A2], allowed_connections: "*"}
  users: {api_keys: [U1], allowed_connections: [local, safe]}
api_key_check: {class: lm_proxy.api_key_check.AllowAll, group: users}
before:
  - {class: lm_proxy.handlers.RateLimiter, max_requests: 2, window_seconds: 5}
loggers:
  - class: lm_proxy.loggers.BaseLogger
    log_writer: {class: lm_proxy.loggers.log_writers.JsonLogWriter, file_name: storage/json.log}
    entry_transformer:
      class: lm_proxy.loggers.LogEntryTransformer
      prompt: request.messages
      group: group
model_info:
  local: {owned_by: me}
"""

PY = """
import os
from lm_proxy.config import Config, Group
from lm_proxy.api_key_check import AllowAll
from lm_proxy.handlers import RateLimiter
from lm_proxy.loggers import BaseLogger, JsonLogWriter, LogEntryTransformer
from lm_proxy.strategies import Fallback

config = Config(
    host="127.0.0.1",
    port=8123,
    encryption_key=os.environ["LMP_TEST_SECRET"],
    model_listing_mode="ignore_wildcards",
    connections={
        "openai": {
            "api_type": "open_ai",
            "api_base": "https://api.openai.com/v1",
            "api_key": os.environ["LMP_TEST_KEY"],
            "timeout": 30,
            "http_headers": {"OpenAI-Organization": "org-1"},
        },
        "local": {"api_type": "mock", "response": "hi"},
        "safe": Fallback(connections=["local", "openai.gpt-4o-mini"]),
    },
    routing={"gpt*": "openai.*", "local": "local.tiny", "*": "safe.*"},
    groups={
        "admin": Group(api_keys=["A1", "A2"], allowed_connections="*"),
        "users": Group(api_keys=["U1"], allowed_connections=["local", "safe"]),
    },
    api_key_check=AllowAll(group="users"),
    before=[RateLimiter(max_requests=2, window_seconds=5)],
    loggers=[
        BaseLogger(
            log_writer=JsonLogWriter(file_name="storage/json.log"),
            entry_transformer=LogEntryTransformer(prompt="request.messages", group="group"),
        )
    ],
    model_info={"local": {"owned_by": "me"}},
)
"""


def test_load_gives_equal_configs_for_every_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMP_TEST_SECRET", "s3cret")
    monkeypatch.setenv("LMP_TEST_KEY", "sk-test")
    (tmp_path / "c.toml").write_text(TOML)
    (tmp_path / "c.yml").write_text(YAML)
    (tmp_path / "c.yaml").write_text(YAML)
    (tmp_path / "c.py").write_text(PY)
    as_dict = Config.load(tmp_path / "c.toml").to_dict()
    (tmp_path / "c.json").write_text(
        json.dumps({**as_dict, "encryption_key": "env:LMP_TEST_SECRET"})
    )

    toml = Config.load(tmp_path / "c.toml")
    assert toml.encryption_key == "s3cret"
    assert toml.connections["openai"]["api_key"] == "sk-test"
    assert list(toml.routing) == ["gpt*", "local", "*"], "routing order is kept"
    assert toml.groups["users"] == Group(api_keys=["U1"], allowed_connections=["local", "safe"])
    assert toml.source == str(tmp_path / "c.toml")
    for other in ("c.json", "c.yml", "c.yaml"):
        assert Config.load(tmp_path / other) == toml, other
        assert Config.load(str(tmp_path / other)) == toml, other

    # The .py config holds objects where files hold tables; handed to the core they
    # are the same tree.
    python = Config.load(tmp_path / "c.py")
    assert isinstance(python, Config)
    python_tree, python_objects = python._to_tree()
    toml_tree, toml_objects = toml._to_tree()
    assert python_objects == toml_objects == {}
    assert python_tree == toml_tree


def test_load_errors_name_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[connections.m]\napi_type = "mock"\n[routing]\n"*" = "nope.*"\n')
    with pytest.raises(ConfigError) as error:
        Config.load(bad)
    assert str(error.value).startswith(f"{bad}: routing.\"*\": unknown connection 'nope'")

    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"connections": {"m": {"api_type": "mock"}}, "bogus": 1}')
    with pytest.raises(ConfigError, match="bogus"):
        Config.load(unknown)

    with pytest.raises(ConfigError, match=r"unsupported config extension '\.ini'"):
        Config.load(tmp_path / "x.ini")

    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigError, match=r"must define `config"):
        Config.load(empty)

    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n")
    with pytest.raises(ConfigError, match="ModuleNotFoundError"):
        Config.load(broken)

    config = Config(connections={"m": {"api_type": "mock"}}, routing={"*": "x.*"})
    with pytest.raises(ConfigError, match="unknown connection 'x'"):
        config.check()


VALIDATORS = """
def validate_api_key(api_key: str) -> str | None:
    if api_key == "secret-key":
        return "admin"
    elif api_key.startswith("user-"):
        return "users"
    return None
"""


def write_validator_config(folder: Path, upstream: MockUpstream, key_check: str) -> Path:
    """A TOML config (the reference README's `my_validators` example)."""
    config = folder / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            host = "127.0.0.1"
            port = 0
            encryption_key = "cli-tests"
            shutdown_grace_seconds = 1
            api_key_check = "{key_check}"
            [connections.upstream]
            api_type = "openai"
            api_base = "{upstream.api_base}"
            api_key = "sk-upstream-secret"
            [routing]
            "*" = "upstream.*"
            [groups.admin]
            [groups.users]
            allowed_connections = "upstream"
            """
        )
    )
    return config


@pytest.mark.parametrize("launcher", ["lm-proxy-server", "lm-proxy", "python -m lm_proxy"])
def test_dotted_path_next_to_the_config(
    tmp_path: Path, upstream: MockUpstream, start_python_gateway: Any, launcher: str
) -> None:
    (tmp_path / "my_validators.py").write_text(VALIDATORS)
    config = write_validator_config(tmp_path, upstream, "my_validators.validate_api_key")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    gateway = start_python_gateway(config, launcher=launcher, cwd=elsewhere)
    for key in ("secret-key", "user-42"):
        answer = client_for(gateway.url, key).chat.completions.create(
            model="up-a", messages=MESSAGES
        )
        assert answer.choices[0].message.content == UPSTREAM_CONTENT
    with pytest.raises(openai.AuthenticationError):
        client_for(gateway.url, "nobody").chat.completions.create(model="up-a", messages=MESSAGES)


def test_serving_threads_run_python_validators(
    tmp_path: Path, upstream: MockUpstream, start_python_gateway: Any
) -> None:
    """`--threads N` (here through LM_PROXY_THREADS) serves on N threads of their own,
    and Python validators still run for requests on any of them."""
    (tmp_path / "my_validators.py").write_text(VALIDATORS)
    config = write_validator_config(tmp_path, upstream, "my_validators.validate_api_key")
    gateway = start_python_gateway(config, extra_env={"LM_PROXY_THREADS": "2"})
    assert "2 serving threads" in gateway.stderr_text()
    # A new client (a new connection) per request: they land on different threads.
    for n in range(6):
        key = "secret-key" if n % 2 else f"user-{n}"
        answer = client_for(gateway.url, key).chat.completions.create(
            model="up-a", messages=MESSAGES
        )
        assert answer.choices[0].message.content == UPSTREAM_CONTENT
        with pytest.raises(openai.AuthenticationError):
            client_for(gateway.url, "nobody").chat.completions.create(
                model="up-a", messages=MESSAGES
            )


def test_module_in_the_working_directory(
    tmp_path: Path, upstream: MockUpstream, start_python_gateway: Any
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "cwd_validators.py").write_text(VALIDATORS)
    configs = tmp_path / "configs"
    configs.mkdir()
    config = write_validator_config(configs, upstream, "cwd_validators.validate_api_key")
    gateway = start_python_gateway(config, cwd=workdir)
    client_for(gateway.url, "secret-key").chat.completions.create(model="up-a", messages=MESSAGES)


PY_CONFIG = """
from lm_proxy.config import Config, Group
from lm_proxy.base_types import RequestContext
import helpers  # a module next to this file


def check(api_key):
    return "default" if api_key == "{key}" else None


async def tag(ctx: RequestContext):
    ctx.llm_params.setdefault("extra_headers", {{}})["X-Tag"] = helpers.TAG


async def echo(messages, **params):
    for word in ("py", "config", "stream"):
        yield word + " "


config = Config(
    host="127.0.0.1",
    port=0,
    encryption_key="py-config",
    api_key_check=check,
    before=[tag],
    connections={{
        "echo": echo,
        "upstream": {{"api_type": "openai", "api_base": "{api_base}", "api_key": "sk-x"}},
    }},
    routing={{"echo": "echo.*", "*": "upstream.*"}},
    groups={{"default": Group()}},
)
"""


@pytest.mark.parametrize("launcher", ["lm-proxy-server", "python -m lm_proxy"])
def test_py_config_file(
    tmp_path: Path, upstream: MockUpstream, start_python_gateway: Any, launcher: str
) -> None:
    (tmp_path / "helpers.py").write_text('TAG = "from-helpers"\n')
    config = tmp_path / "config.py"
    config.write_text(PY_CONFIG.format(key=CLIENT_KEY, api_base=upstream.api_base))
    gateway = start_python_gateway(config, launcher=launcher, cwd=tmp_path.parent)
    client = client_for(gateway.url)
    client.chat.completions.create(model="up-a", messages=MESSAGES)
    assert upstream.only_request().headers["x-tag"] == "from-helpers"
    stream = client.chat.completions.create(model="echo", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "py config stream "


def test_cli_config_errors_are_one_line(tmp_path: Path, upstream: MockUpstream) -> None:
    config = write_validator_config(tmp_path, upstream, "no_such_module.check")
    result = subprocess.run(
        [*console_script("lm-proxy-server"), "--config", str(config), "--env", ""],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "lm-proxy-server:" in line]
    assert lines == [
        f"lm-proxy-server: {config}: api_key_check: ModuleNotFoundError: "
        "cannot import 'no_such_module.check': no module named 'no_such_module'"
    ]

    missing = subprocess.run(
        [sys.executable, "-m", "lm_proxy", "--config", str(tmp_path / "nope.py"), "--env", ""],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "config error" in missing.stderr and "nope.py" in missing.stderr


def test_native_binary_refuses_python_callables(tmp_path: Path, upstream: MockUpstream) -> None:
    (tmp_path / "my_validators.py").write_text(VALIDATORS)
    config = write_validator_config(tmp_path, upstream, "my_validators.validate_api_key")
    result = subprocess.run(
        [str(gateway_binary()), "--config", str(config), "--env", ""],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RUST_LOG": "info"},
    )
    assert result.returncode == 1
    assert "names a Python callable" in result.stderr
    assert "pip install lm-proxy-server" in result.stderr


def test_version_and_help(tmp_path: Path) -> None:
    for argv in (
        [*console_script("lm-proxy-server"), "--version"],
        [*console_script("lm-proxy"), "--version"],
        [sys.executable, "-m", "lm_proxy", "--version"],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert lm_proxy.__version__ in result.stdout
    bad = subprocess.run(
        [*console_script("lm-proxy-server"), "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2


def test_rate_limiter_object_is_the_rust_builtin() -> None:
    config = Config(
        connections={"m": {"api_type": "mock"}},
        before=[RateLimiter(max_requests=2, window_seconds=2)],
    )
    tree, objects = config._to_tree()
    assert objects == {}
    assert tree["before"] == [
        {"class": "lm_proxy.handlers.RateLimiter", "max_requests": 2, "window_seconds": 2}
    ]


def test_sighup_reloads_a_py_config(tmp_path: Path, start_python_gateway: Any) -> None:
    """A reload (SIGHUP) executes the .py config again and swaps the new gateway in;
    the Python objects are resolved off the runtime's workers."""
    config = tmp_path / "config.py"
    source = textwrap.dedent(
        """
        from lm_proxy.config import Config

        def check(api_key):
            return "default" if api_key == "{key}" else None

        async def answer(messages, **params):
            return "{text}"

        config = Config(host="127.0.0.1", port=0, api_key_check=check,
                        connections={{"py": answer}}, routing={{"*": "py.*"}})
        """
    )
    config.write_text(source.format(key="old-key", text="first"))
    gateway = start_python_gateway(config, cwd=tmp_path)
    old = client_for(gateway.url, "old-key").chat.completions.create(model="m", messages=MESSAGES)
    assert old.choices[0].message.content == "first"

    config.write_text(source.format(key="new-key", text="second"))
    gateway.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not any("config reloaded" in line for line in gateway.lines):
        assert time.monotonic() < deadline, gateway.stderr_text()
        assert gateway.process.poll() is None, gateway.stderr_text()
        time.sleep(0.05)
    new = client_for(gateway.url, "new-key").chat.completions.create(model="m", messages=MESSAGES)
    assert new.choices[0].message.content == "second"
    with pytest.raises(openai.AuthenticationError):
        client_for(gateway.url, "old-key").chat.completions.create(model="m", messages=MESSAGES)


def test_ledger_pricing_budget_and_admin_in_a_python_config(
    tmp_path: Path, serve_config: Any
) -> None:
    """`database`, `pricing`, a group's `budget` and `admin` reach the core from a
    ``Config`` object as from a file: the budget stops the group's key."""
    config = Config(
        host="127.0.0.1",
        port=0,
        connections={"mock": {"api_type": "mock"}},
        routing={"*": "mock.*"},
        groups={"default": Group(api_keys=[CLIENT_KEY], budget={"tokens": 1, "period": "total"})},
        database={"url": f"sqlite://{tmp_path / 'ledger.db'}"},
        pricing={"mock-*": {"input": 1, "output": 2}},
        admin={"token": "an-admin-token-for-tests"},
    )
    assert config.groups["default"].to_dict()["budget"] == {"tokens": 1, "period": "total"}
    assert "budget" not in Group().to_dict()
    tree, _ = config._to_tree()
    assert tree["database"] == {"url": f"sqlite://{tmp_path / 'ledger.db'}"}
    assert tree["groups"]["default"]["budget"] == {"tokens": 1, "period": "total"}
    assert Config.model_validate(config.model_dump()) == config
    server = serve_config(config)
    with client_for(server.url) as client:
        client.chat.completions.create(
            model="mock-model", messages=[{"role": "user", "content": "hi"}]
        )
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(
                model="mock-model", messages=[{"role": "user", "content": "hi"}]
            )
    assert refused.value.code == "budget_exceeded"
