"""The installed package is typed: it ships ``py.typed`` and the stubs of its native
module, and mypy (strict) checks code that uses it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import import_lm_proxy

lm_proxy = import_lm_proxy()

USER_CODE = """
from __future__ import annotations

import asyncio
from typing import Any

from lm_proxy import Config, Group, LLMResponse, OpenAIHTTPException, Server
from lm_proxy import _lm_proxy
from lm_proxy.base_types import RequestContext
from lm_proxy.bootstrap import bootstrap, env
from lm_proxy.handlers import RateLimiter


def check(api_key: str) -> tuple[str, dict[str, Any]] | None:
    return ("default", {}) if api_key else None


async def handler(ctx: RequestContext) -> None:
    ctx.llm_params["temperature"] = 0.1
    if ctx.request is not None and ctx.request.model == "blocked":
        raise OpenAIHTTPException("no", status_code=403, code="blocked")


config = Config(
    connections={"mock": {"api_type": "mock"}},
    groups={"default": Group(api_keys=["k"])},
    api_key_check=check,
    before=[handler, RateLimiter(max_requests=2, window_seconds=2)],
)
url: str = Server(config, port=0).url
version: str = _lm_proxy.__version__


async def call() -> str:
    bootstrap(config, env_file=None)
    answer = await env.connections["mock"]([{"role": "user", "content": "hi"}])
    return str(answer)


text: str = asyncio.run(call())
reply: LLMResponse = LLMResponse("x")
"""


def run_mypy(folder: Path, source: str) -> subprocess.CompletedProcess[str]:
    path = folder / "user_code.py"
    path.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
    )


def test_package_ships_type_information() -> None:
    import lm_proxy.bootstrap

    # `lm_proxy.bootstrap` is the module (the reference's spelling), not shadowed.
    assert callable(lm_proxy.bootstrap.bootstrap)
    assert hasattr(lm_proxy.bootstrap, "env")
    package = Path(lm_proxy.__file__).parent
    assert (package / "py.typed").is_file()
    assert (package / "_lm_proxy.pyi").is_file()


def test_mypy_checks_user_code(tmp_path: Path) -> None:
    good = run_mypy(tmp_path, USER_CODE)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = run_mypy(
        tmp_path,
        "from lm_proxy import Server, Config\nport: int = Server(Config(connections={})).url\n",
    )
    assert bad.returncode == 1
    assert 'expression has type "str", variable has type "int"' in bad.stdout
