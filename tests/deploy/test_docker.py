"""The Docker image and compose file."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from monitor.config import parse_config, split_host_port
from tests.deploy.files import (
    COMPOSE,
    DOCKER_CONFIG,
    DOCKER_ENV_EXAMPLE,
    DOCKERFILE,
    REPO_ROOT,
    load_yaml,
    run,
)

IMAGE_CONFIG = "/etc/cdp-monitor/monitor.yaml"
IMAGE_FILES = {"pyproject.toml", "README.md", "monitor", "deploy/docker/monitor.yaml"}
_INSTALLER = re.compile(
    r"\b(pip3?|apt-get|apt|apk|uv|poetry|conda|easy_install)\s+(?:pip\s+)?install\b"
)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continuation"
    return out


def test_dockerfile_installs_only_the_project() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [args for kw, args in instructions if kw == "RUN"]
    installers = [m for args in runs for m in _INSTALLER.findall(args)]
    assert installers == ["pip"], "one package installation: pip's, of the project"
    (pip_run,) = [args for args in runs if _INSTALLER.search(args)]
    words = shlex.split(pip_run)
    start = words.index("install") + 1
    end = words.index("&&", start) if "&&" in words[start:] else len(words)
    packages = [w for w in words[start:end] if not w.startswith("-")]
    assert packages == ["."], "pip installs the project (and so its declared deps) only"
    copied = set()
    for kw, args in instructions:
        if kw in ("COPY", "ADD"):
            assert kw == "COPY", "ADD may fetch URLs; the image copies local files only"
            paths = [w for w in shlex.split(args) if not w.startswith("--")]
            copied |= set(paths[:-1])
    assert {p.rstrip("/") for p in copied} == IMAGE_FILES


def test_dockerfile_runs_unprivileged_with_healthcheck_and_entrypoint() -> None:
    instructions = dockerfile_instructions()
    keywords = [kw for kw, _ in instructions]
    users = [args for kw, args in instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    args = dict(instructions)
    assert json.loads(args["ENTRYPOINT"]) == ["cdp-monitor"]
    assert json.loads(args["CMD"]) == ["run", "-c", IMAGE_CONFIG]
    copy_config = [
        a for kw, a in instructions if kw == "COPY" and "deploy/docker/monitor.yaml" in a
    ]
    assert copy_config == [f"deploy/docker/monitor.yaml {IMAGE_CONFIG}"]
    health = args["HEALTHCHECK"]
    assert "curl" not in health and "wget" not in health  # not in python:3.11-slim
    control = split_host_port(load_yaml(DOCKER_CONFIG)["control"]["listen"])
    assert "urllib.request" in health
    assert f"http://127.0.0.1:{control.port}/healthz" in health


def test_image_install_step_builds_from_the_copied_files(tmp_path: Path) -> None:
    """The files the Dockerfile copies are enough for `pip install .`: setuptools builds
    the project from them (offline: an sdist through the PEP 517 hook, which needs no
    wheel package) and the build holds every module of the package."""
    context = tmp_path / "context"
    context.mkdir()
    for name in sorted(IMAGE_FILES - {"deploy/docker/monitor.yaml"}):
        src = REPO_ROOT / name
        assert src.exists(), f"the Dockerfile copies {name}, which does not exist"
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, context / name)
    out = tmp_path / "dist"
    out.mkdir()
    hook = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    result = run(sys.executable, "-c", hook, cwd=context)
    assert result.returncode == 0, result.stdout + result.stderr
    (sdist,) = out.glob("cdp-monitor-*.tar.gz")
    with tarfile.open(sdist) as tar:
        built = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sources = {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "monitor").rglob("*.py")}
    assert sources - built == set(), "package files missing from the build"


_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def compose_interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default}, ${NAME:?error} against a .env."""

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if name in env and (env[name] or op not in (":-", ":?")):
            return env[name]
        assert op not in (":?", "?"), f"compose would stop: {name}: {arg}"
        return arg if op in (":-", "-") else ""

    return _COMPOSE_VAR.sub(sub, value)


def referenced_vars(value: str) -> set[str]:
    return {m.group(1) for m in _COMPOSE_VAR.finditer(value)}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


@pytest.fixture(scope="module")
def dotenv() -> dict[str, str]:
    """The .env an operator writes from .env.example, with sample values."""
    samples = {
        "BOT_TOKEN": "sample-bot-token",
        "GUILD_ID": "123456789012345678",
        "CDP_MONITOR_CONTROL_TOKEN": "sample-control-token",
    }
    keys = [
        line.split("=", 1)[0]
        for line in DOCKER_ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return {key: samples.get(key, f"sample-{key.lower()}") for key in keys}


def test_compose_runs_cdp_behind_the_gate(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"cdp", "cdp-monitor"}
    cdp, monitor = services["cdp"], services["cdp-monitor"]
    assert cdp["image"].startswith("deanxv/coze-discord-proxy")
    assert "ports" not in cdp, "CDP's port must not be published: clients go through the gate"
    cdp_port = int(cdp["environment"].get("PORT", "7077"))

    config = load_yaml(DOCKER_CONFIG)
    assert config["gate"]["upstream"] == f"http://cdp:{cdp_port}"
    gate = split_host_port(config["gate"]["listen"])
    control = split_host_port(config["control"]["listen"])
    assert f"{gate.port}:{gate.port}" in monitor["ports"]  # clients keep using :7077
    assert f"127.0.0.1:{control.port}:{control.port}" in monitor["ports"]
    assert gate.port == 7077
    # Sandboxed like the systemd unit.
    assert monitor["read_only"] is True
    assert monitor["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in monitor["security_opt"]


def test_compose_shares_the_token_and_guild_with_cdp(
    compose: dict[str, Any], dotenv: dict[str, str]
) -> None:
    cdp_env = compose["services"]["cdp"]["environment"]
    monitor_env = compose["services"]["cdp-monitor"]["environment"]
    # Both read the same .env variables.
    assert referenced_vars(cdp_env["BOT_TOKEN"]) == referenced_vars(
        monitor_env["CDP_MONITOR_DISCORD_TOKEN"]
    )
    assert referenced_vars(cdp_env["GUILD_ID"]) == referenced_vars(monitor_env["CDP_GUILD_ID"])
    # And the container's config turns them into the monitor's token and guild.
    container_env = {k: compose_interpolate(v, dotenv) for k, v in monitor_env.items()}
    config = parse_config(DOCKER_CONFIG.read_text(), source=DOCKER_CONFIG, environ=container_env)
    assert config.discord.token.get_secret_value() == compose_interpolate(
        cdp_env["BOT_TOKEN"], dotenv
    )
    assert config.discord.guild_id == int(compose_interpolate(cdp_env["GUILD_ID"], dotenv))
    assert config.control.token is not None
    assert config.control.token.get_secret_value() == dotenv["CDP_MONITOR_CONTROL_TOKEN"]
    # CDP deletes finished channels after CHANNEL_AUTO_DEL_TIME; the reconciler allows that.
    auto_delete = float(cdp_env["CHANNEL_AUTO_DEL_TIME"])
    assert config.cdp.auto_delete == auto_delete


def test_compose_keeps_state_in_a_named_volume_and_mounts_the_config(
    compose: dict[str, Any],
) -> None:
    monitor = compose["services"]["cdp-monitor"]
    state_dir = load_yaml(DOCKER_CONFIG)["state_dir"]
    mounts = {}  # target → source
    for volume in monitor["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    assert mounts[state_dir] in compose["volumes"], "state must live in a named volume"
    config_source = mounts[IMAGE_CONFIG]
    assert (COMPOSE.parent / config_source).resolve() == DOCKER_CONFIG
    build = monitor["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == REPO_ROOT
    assert (REPO_ROOT / build["dockerfile"]).resolve() == DOCKERFILE


def test_env_example_lists_every_required_variable(compose: dict[str, Any]) -> None:
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", COMPOSE.read_text()))
    keys = {
        line.split("=", 1)[0]
        for line in DOCKER_ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert required and required <= keys
