"""The distributions' versions (issue 19, point 4).

The Python reference was published as `lm-proxy-server` up to 3.3.2 and as
`lm-proxy` up to 3.x. This project's `lm-proxy-server` is their successor by
version, so `pip install -U lm-proxy-server` keeps it, and the `lm-proxy` alias
(packaging/lm-proxy-alias: metadata only) has the same version and requires
exactly that `lm-proxy-server`. One version, written in Cargo.toml, is what the
crate, the wheel, `lm_proxy.__version__` and `--version` report; the alias's
version is written by hand, and these tests keep the two equal.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import lm_proxy
from conftest import REPO_ROOT, console_script, gateway_binary

ALIAS_DIR = REPO_ROOT / "packaging" / "lm-proxy-alias"
# The last version the reference published as `lm-proxy-server`; as `lm-proxy` it
# published 3.x.
REFERENCE_LAST_SERVER = (3, 3, 2)


def crate_version() -> str:
    with (REPO_ROOT / "Cargo.toml").open("rb") as file:
        return str(tomllib.load(file)["package"]["version"])


def release_tuple(version: str) -> tuple[int, ...]:
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version)
    assert match, f"{version!r} is not a plain release version"
    return tuple(int(part) for part in match.groups())


def alias_project() -> dict[str, object]:
    with (ALIAS_DIR / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    assert isinstance(project, dict)
    return project


def test_version_succeeds_the_reference() -> None:
    version = release_tuple(crate_version())
    assert version > REFERENCE_LAST_SERVER
    assert version[0] >= 4, "newer than every lm-proxy 3.x"


def test_alias_has_the_same_version_and_requires_exactly_this_package() -> None:
    project = alias_project()
    version = crate_version()
    assert project["name"] == "lm-proxy"
    assert project["version"] == version, "bump packaging/lm-proxy-alias with Cargo.toml"
    dependencies = project["dependencies"]
    assert isinstance(dependencies, list)
    pins = [dep for dep in dependencies if re.match(r"lm-proxy-server\b", dep)]
    assert pins == [f"lm-proxy-server=={version}"]
    # No code: the alias must never ship files under lm_proxy/ (those are the
    # main wheel's) or console scripts.
    assert "scripts" not in project
    wheel = tomllib.loads((ALIAS_DIR / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    assert wheel["targets"]["wheel"] == {"bypass-selection": True}


def test_main_package_reports_the_crate_version() -> None:
    version = crate_version()
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    assert project["name"] == "lm-proxy-server"
    assert project["dynamic"] == ["version"]  # maturin takes it from Cargo.toml
    assert lm_proxy.__version__ == version
    for argv in (
        [str(gateway_binary()), "--version"],
        [*console_script("lm-proxy-server"), "--version"],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["lm-proxy-server", version]


def test_readme_names_the_version() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"lm-proxy-server=={crate_version()}" in readme
    assert Path(ALIAS_DIR / "README.md").read_text().count("lm-proxy-db-connector") >= 1
