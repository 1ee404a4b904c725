"""What a wheel or sdist install gets: one version, bounded dependencies, the example
config and deploy/ as package data, a complete sdist, the license."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

import monitor

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT: dict[str, Any] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def requirements(extra: str | None = None) -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    specs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return {Requirement(s).name.lower(): Requirement(s) for s in specs}


def test_one_version_source() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "monitor.__version__"
    assert f"## [{monitor.__version__}]" in (REPO_ROOT / "CHANGELOG.md").read_text()


def test_dependencies_are_bounded_and_demo_needs_no_extra() -> None:
    deps = requirements()
    # The breaker reads pybreaker's internals: a new major must not install silently.
    assert not deps["pybreaker"].specifier.contains("2.0")
    assert deps["pybreaker"].specifier.contains("1.4.1")
    # `cdp-monitor demo` from a plain `pipx install` needs the openai client.
    assert "openai" in deps and "openai" not in requirements("test")


def test_python_floor_matches_the_code() -> None:
    """3.11: the code uses asyncio.timeout and typing.Self (3.10 lacks both); the README
    gives Ubuntu 22.04 (Python 3.10) an install path."""
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    readme = (REPO_ROOT / "README.md").read_text()
    assert "Ubuntu 22.04" in readme and "uv python install 3.11" in readme


def test_license_is_mit() -> None:
    text = (REPO_ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and PYPROJECT["project"]["license"]["text"] == "MIT"


def _build(kind: str, out: Path) -> Path:
    """Build a wheel or sdist offline with the installed setuptools (no isolation)."""
    hook = f"from setuptools import build_meta as b; import sys; print(b.build_{kind}(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-c", hook, str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("wheel", tmp_path_factory.mktemp("wheel"))


def test_wheel_ships_the_example_config_and_deploy_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert zf.read("monitor/_files/monitor.yaml") == (REPO_ROOT / "monitor.yaml").read_bytes()
    deploy = {
        f"monitor/_files/deploy/{p.relative_to(REPO_ROOT / 'deploy')}"
        for p in (REPO_ROOT / "deploy").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert deploy and deploy <= names, deploy - names


def test_config_example_works_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    """The wheel alone on sys.path (zip import), run from a directory without the repo."""
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "config", "example"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO_ROOT / "monitor.yaml").read_text()


def test_sdist_is_complete(tmp_path: Path) -> None:
    sdist = _build("sdist", tmp_path)
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in (
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "README.zh-CN.md",
        "Makefile",
        "monitor.yaml",
        "deploy/docker/Dockerfile",
        "deploy/docker/.env.example",
        "deploy/docker/constraints.txt",
        "deploy/systemd/cdp-monitor.service",
        "deploy/prometheus/alerts.yml",
        "tests/helpers/daemon.py",
        "tests/conftest.py",
        "monitor/cli.py",
    ):
        assert needed in names, needed
