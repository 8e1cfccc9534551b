"""The reference's add-on `lm-proxy-db-connector`, installed as a user would (issue 19,
points 4 and 12).

`scripts/test` builds this repository's two wheels (`lm-proxy-server` and the
`lm-proxy` alias), creates a clean virtualenv, installs both wheels there and then
`pip install lm-proxy-db-connector psycopg2-binary` from PyPI: the add-on requires
`lm-proxy>=2`, which the alias satisfies, so the reference must not be pulled. It
passes the virtualenv as LM_PROXY_ADDON_VENV; these tests are offline and only use it:

- the `lm_proxy` there is this package (version, files, console scripts), and no
  other distribution owns files under `lm_proxy/`;
- a gateway started from that virtualenv with the add-on's own configuration (its
  `init_db` component, its `DBLogWriter` under the built-in `BaseLogger`, its
  `DBLogger` with a column mapping) logs every request of a mixed run (plain and
  streamed, openai client, mock upstream) to SQLite and to a real PostgreSQL
  (a throwaway cluster on a free port, started with initdb/pg_ctl).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from conftest import CLIENT_KEY, REPO_ROOT, UPSTREAM_CONTENT, GatewayProcess, MockUpstream

ADDON_VENV_VARIABLE = "LM_PROXY_ADDON_VENV"
REQUESTS_OF_EACH_KIND = 5
# Loggers run off the request path: how long the rows may take to arrive.
ROWS_DEADLINE_S = 30.0
PG_TIMEOUT_S = 60


def crate_version() -> str:
    with (REPO_ROOT / "Cargo.toml").open("rb") as file:
        return str(tomllib.load(file)["package"]["version"])


@pytest.fixture(scope="module")
def addon_venv() -> Path:
    configured = os.environ.get(ADDON_VENV_VARIABLE)
    if not configured:
        pytest.skip(
            f"{ADDON_VENV_VARIABLE} is not set: scripts/test builds the wheels and the "
            "add-on's virtualenv"
        )
    venv = Path(configured).expanduser().resolve()
    if not (venv / "bin" / "python").exists():
        pytest.fail(f"{ADDON_VENV_VARIABLE}={venv} has no bin/python", pytrace=False)
    return venv


def venv_env() -> dict[str, str]:
    """The environment for the add-on's virtualenv: nothing of this interpreter's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    return env


def run_in_venv(venv: Path, code: str, *args: str, timeout: float = 120) -> object:
    """Run `code` with the virtualenv's python; it prints one JSON value."""
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=venv_env(),
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# What got installed
# --------------------------------------------------------------------------------------

PROBE_INSTALL = """
import importlib.metadata as md, json, sys
import lm_proxy, lm_proxy._lm_proxy

owners = {}
for dist in md.distributions():
    name = dist.metadata["Name"].lower().replace("_", "-")
    for path in dist.files or []:
        if path.parts and path.parts[0] == "lm_proxy":
            owners.setdefault(name, []).append(str(path))
dists = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions()}
alias_files = [str(p) for p in md.files("lm-proxy") or []]
print(json.dumps({
    "version": lm_proxy.__version__,
    "file": lm_proxy.__file__,
    "native": lm_proxy._lm_proxy.__file__,
    "prefix": sys.prefix,
    "dists": dists,
    "owners": {name: len(files) for name, files in owners.items()},
    "alias_requires": md.requires("lm-proxy"),
    "alias_files": alias_files,
    "addon_requires": md.requires("lm-proxy-db-connector"),
}))
"""


def test_addon_installed_against_this_package(addon_venv: Path) -> None:
    version = crate_version()
    info = run_in_venv(addon_venv, PROBE_INSTALL)
    assert isinstance(info, dict)
    prefix = Path(info["prefix"]).resolve()
    assert prefix == addon_venv
    # This package: its version, inside the virtualenv, with the Rust module.
    assert info["version"] == version
    package_file = Path(info["file"]).resolve()
    assert package_file.is_relative_to(addon_venv), package_file
    assert package_file.parent.name == "lm_proxy"
    assert Path(info["native"]).name.startswith("_lm_proxy.")
    # The alias satisfied the add-on: same version, no files of its own but its
    # metadata, and it requires exactly this package.
    dists = info["dists"]
    assert dists["lm-proxy-server"] == version
    assert dists["lm-proxy"] == version
    assert "lm-proxy-db-connector" in dists
    assert any(req.startswith("lm-proxy") for req in info["addon_requires"])
    assert f"lm-proxy-server=={version}" in info["alias_requires"]
    assert all(".dist-info/" in path for path in info["alias_files"]), info["alias_files"]
    # The reference was not pulled: only this package owns files under lm_proxy/,
    # and none of the reference's other names is installed.
    assert list(info["owners"]) == ["lm-proxy-server"], info["owners"]
    assert "ai-proxy-server" not in dists
    # The commands are this package's.
    for script in ("lm-proxy-server", "lm-proxy"):
        text = (addon_venv / "bin" / script).read_text()
        assert "from lm_proxy.cli import main" in text, text
    result = subprocess.run(
        [str(addon_venv / "bin" / "lm-proxy-server"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=venv_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["lm-proxy-server", version]


# --------------------------------------------------------------------------------------
# The add-on's configuration, logging a mixed run
# --------------------------------------------------------------------------------------


# The add-on's own configuration (its README and the config.yml of its tests): the
# `init_db` component with `db_url`; its `DBLogger` with the columns its tests use
# (table llm_logs); and, as its README's TOML example writes it, its `DBLogWriter`
# as the `log_writer` of the built-in `BaseLogger` (table llm_entries). The writer
# gets the whole entry, which has `model` and `llm_params` besides the writer's
# default columns (so in the reference too: SQLAlchemy refuses an insert with
# unknown columns), so its columns are the defaults plus those two.
def column(kind: str, **options: object) -> dict[str, object]:
    return {"type": kind, **options}


DB_LOGGER_COLUMNS = {
    "id": column("string", primary_key=True, length=36),
    "request": column("json", src="request.messages"),
    "response": column("text", nullable=True),
    "error": column("text", nullable=True),
    "group": column("string", length=255),
    "connection": column("string", length=255),
    "api_key_id": column("string", length=255),
    "remote_addr": column("string", length=255, nullable=True),
    "created_at": column("datetime", default="now"),
    "duration": column("float", nullable=True),
    "user_info": column("json", nullable=True),
    "completion_tokens": column("integer", src="response.usage.completion_tokens", nullable=True),
    "prompt_tokens": column("integer", src="response.usage.prompt_tokens", nullable=True),
    "extra": column("json", nullable=True),
}
DB_WRITER_COLUMNS = {
    "id": column("string", primary_key=True, length=36),
    "request": column("json", nullable=False),
    "response": column("text", nullable=True),
    "error": column("text", nullable=True),
    "group": column("string", length=255, nullable=True),
    "connection": column("string", length=255, nullable=True),
    "model": column("string", length=255, nullable=True),
    "llm_params": column("json", nullable=True),
    "api_key_id": column("string", length=255, nullable=True),
    "remote_addr": column("string", length=255, nullable=True),
    "created_at": column("datetime", default="now"),
    "duration": column("float", nullable=True),
    "user_info": column("json", nullable=True),
    "extra": column("json", nullable=True),
}
TABLES = ("llm_logs", "llm_entries")


def addon_config(upstream: MockUpstream, db_url: str) -> dict[str, object]:
    return {
        "host": "127.0.0.1",
        "shutdown_grace_seconds": 2,
        "connections": {
            "upstream": {
                "api_type": "openai",
                "api_base": upstream.api_base,
                "api_key": "sk-upstream",
            }
        },
        "routing": {"*": "upstream.*"},
        "groups": {"default": {"api_keys": [CLIENT_KEY]}},
        "loggers": [
            {
                "class": "lm_proxy_db_connector.logging.DBLogger",
                "table_name": "llm_logs",
                "columns": DB_LOGGER_COLUMNS,
            },
            {
                "class": "lm_proxy.loggers.BaseLogger",
                "log_writer": {
                    "class": "lm_proxy_db_connector.logging.DBLogWriter",
                    "table_name": "llm_entries",
                    "columns": DB_WRITER_COLUMNS,
                },
            },
        ],
        "components": {"db": {"class": "lm_proxy_db_connector.init_db", "db_url": db_url}},
    }


def to_toml(table: dict[str, object], path: tuple[str, ...] = ()) -> str:
    """Just enough TOML for the config above: tables as [sections], lists of tables
    as [[arrays]], scalars and lists of strings as values."""

    def key(name: str) -> str:
        return name if name.replace("_", "").isalnum() else json.dumps(name)

    def value(item: object) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, list):
            return "[" + ", ".join(value(x) for x in item) + "]"
        return json.dumps(item)  # strings (TOML basic strings), ints and floats

    lines: list[str] = []
    nested: list[str] = []
    for name, item in table.items():
        child = (*path, key(name))
        if isinstance(item, dict):
            nested.append(f"\n[{'.'.join(child)}]\n" + to_toml(item, child))
        elif isinstance(item, list) and item and all(isinstance(x, dict) for x in item):
            for element in item:
                nested.append(f"\n[[{'.'.join(child)}]]\n" + to_toml(element, child))
        else:
            lines.append(f"{key(name)} = {value(item)}\n")
    return "".join(lines) + "".join(nested)


# Waits (polling the tables, up to a deadline) until both hold `expected` rows,
# then prints their counts and the plain answers' `response` texts.
PROBE_ROWS = """
import json, sys, time
import sqlalchemy
url, expected, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
engine = sqlalchemy.create_engine(url)
def counts():
    out = {}
    with engine.connect() as conn:
        for table in sys.argv[4].split(","):
            try:
                out[table] = conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}")).scalar()
            except sqlalchemy.exc.DBAPIError:
                conn.rollback()
                out[table] = None
    return out
while True:
    seen = counts()
    if all(n == expected for n in seen.values()) or time.monotonic() > deadline:
        break
    time.sleep(0.05)
texts = {}
with engine.connect() as conn:
    for table in sys.argv[4].split(","):
        if seen[table]:
            rows = conn.execute(sqlalchemy.text(f"SELECT response FROM {table}")).scalars()
            texts[table] = sorted(str(r) for r in rows)
engine.dispose()
print(json.dumps({"counts": seen, "responses": texts}))
"""


def run_mixed(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=30.0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    with client:
        # Interleaved: plain, streamed, plain, ...
        for i in range(2 * REQUESTS_OF_EACH_KIND):
            messages: list[openai.types.chat.ChatCompletionMessageParam] = [
                {"role": "user", "content": f"request {i}"}
            ]
            if i % 2 == 0:
                answer = client.chat.completions.create(model="gpt-x", messages=messages)
                assert answer.choices[0].message.content == UPSTREAM_CONTENT
            else:
                stream = client.chat.completions.create(
                    model="gpt-x", messages=messages, stream=True
                )
                chunks = list(stream)
                assert chunks and chunks[-1].choices[0].finish_reason == "tool_calls"


def logs_every_request(venv: Path, config_path: Path, db_url: str) -> None:
    gateway = GatewayProcess(
        [str(venv / "bin" / "lm-proxy-server")], config_path, cwd=config_path.parent
    )
    try:
        gateway.wait_ready()
        run_mixed(gateway)
        total = 2 * REQUESTS_OF_EACH_KIND
        rows = run_in_venv(
            venv, PROBE_ROWS, db_url, str(total), str(ROWS_DEADLINE_S), ",".join(TABLES)
        )
    finally:
        gateway.stop()
    assert isinstance(rows, dict)
    expected = dict.fromkeys(TABLES, total)
    assert rows["counts"] == expected, (
        f"rows: {rows}\ngateway stderr:\n{gateway.stderr_text()[-6000:]}"
    )
    for table, texts in rows["responses"].items():
        assert texts.count(UPSTREAM_CONTENT) == REQUESTS_OF_EACH_KIND, (table, texts)


def test_db_connector_logs_to_sqlite(
    addon_venv: Path, upstream: MockUpstream, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'llm.db'}"
    config_path = tmp_path / "config.yml"
    # JSON is YAML: the add-on's tests configure it in YAML.
    config_path.write_text(json.dumps(addon_config(upstream, db_url), indent=2))
    logs_every_request(addon_venv, config_path, db_url)


# --------------------------------------------------------------------------------------
# A throwaway PostgreSQL cluster
# --------------------------------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    user: str

    @property
    def url(self) -> str:
        # The add-on's documented form: postgresql+psycopg2://user:password@host:port/db
        return f"postgresql+psycopg2://{self.user}:unused@127.0.0.1:{self.port}/postgres"


def postgres_bindir() -> Path:
    """The directory of initdb/pg_ctl/pg_isready: on PATH, or Debian's versioned one."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if all((bindir / tool).exists() for tool in ("initdb", "pg_ctl", "pg_isready")):
            return bindir
    pytest.fail("PostgreSQL is not installed (scripts/test installs it with apt)", pytrace=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def postgres(addon_venv: Path) -> Iterator[Postgres]:
    bindir = postgres_bindir()
    # PostgreSQL refuses to run as root: as root, run its tools as `postgres`.
    as_user: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(
                "running as root needs the `postgres` user (the postgresql package creates it)",
                pytrace=False,
            )
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="lm-proxy-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data = root / "data"

    def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*as_user, *argv], capture_output=True, text=True, timeout=PG_TIMEOUT_S, cwd=root
        )
        if check and result.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            pytest.fail(
                f"{argv[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}",
                pytrace=False,
            )
        return result

    user = "lmproxy"
    started = False
    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        # The port is free when chosen; another process may take it before the
        # server binds it, so try a few.
        for _ in range(3):
            port = free_port()
            options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
            # -w: pg_ctl returns once the server accepts connections (or failed).
            result = run(
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "server.log"),
                "-w",
                "-t",
                str(PG_TIMEOUT_S),
                "-o",
                options,
                "start",
                check=False,
            )
            if result.returncode == 0:
                started = True
                break
        if not started:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            pytest.fail(f"PostgreSQL did not start:\n{log}", pytrace=False)
        ready = run(
            str(bindir / "pg_isready"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            str(PG_TIMEOUT_S),
            check=False,
        )
        assert ready.returncode == 0, ready.stdout + ready.stderr
        yield Postgres(port=port, user=user)
    finally:
        if started:
            run(
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "-w",
                "stop",
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


def test_db_connector_logs_to_postgresql(
    addon_venv: Path, upstream: MockUpstream, postgres: Postgres, tmp_path: Path
) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text(to_toml(addon_config(upstream, postgres.url)))
    logs_every_request(addon_venv, config_path, postgres.url)
