"""The deployment files: systemd unit, Prometheus rules and config, Grafana dashboard, Docker.

Tools (promtool, systemd-analyze, prometheus) are required, not optional: a missing one
fails its test with what to install, because CI (.ci/run) installs them.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from monitor.config import parse_config, split_host_port
from monitor.errors import ConfigError
from monitor.health.probes import PROBES
from monitor.metrics import Metrics
from monitor.reconcile import REASONS as DELETE_REASONS
from monitor.sim.discord import DiscordSimulator
from monitor.vocab import (
    BREAKER_STATES,
    CDP_FAILURE_REASONS,
    RECONCILE_RESULTS,
    TEMP_CHANNEL_STATES,
)
from tests.daemon_util import fast_config_dict, live_metrics_text
from tests.prom_util import (
    PrometheusQueryError,
    free_port,
    running_prometheus,
    static_job,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "cdp-monitor.service"
SYSTEMD_CONFIG = DEPLOY / "systemd" / "monitor.yaml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "cdp-monitor.json"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "docker" / "docker-compose.yml"
DOCKER_CONFIG = DEPLOY / "docker" / "monitor.yaml"
DOCKER_ENV_EXAMPLE = DEPLOY / "docker" / ".env.example"
PYPROJECT = REPO_ROOT / "pyproject.toml"

MONITOR_JOB = "cdp-monitor"
MAX_EXPOSURE = 2.0


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is missing: install Debian's `{package}` package (.ci/run does)",
            pytrace=False,
        )
    return path


def run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- systemd -------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """section → key → values, in order (keys like LoadCredential= may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return unit_directives(UNIT.read_text())["Service"]


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart is this venv's `cdp-monitor`.

    `systemd-analyze verify` rejects a unit whose ExecStart binary does not exist, and the
    documented /usr/local/bin/cdp-monitor exists only on a host where it was installed.
    The venv's console script is the same entry point; nothing else in the unit changes.
    """
    cli = Path(sys.executable).parent / "cdp-monitor"
    assert cli.exists(), f"{cli} missing: install the project into the venv (make does)"
    text = UNIT.read_text()
    rewritten, count = re.subn(
        r"^ExecStart=/usr/local/bin/cdp-monitor ", f"ExecStart={cli} ", text, flags=re.M
    )
    assert count == 1, "ExecStart must run /usr/local/bin/cdp-monitor (documented path)"
    path = tmp_path / UNIT.name  # same name: verify checks it against the unit's type
    path.write_text(rewritten)
    return path


def test_systemd_analyze_verify_accepts_the_unit(verifiable_unit: Path) -> None:
    tool = require_tool("systemd-analyze", "systemd")
    result = run(tool, "verify", str(verifiable_unit))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Warnings about other units on this host are not ours; any about this one are.
    ours = [line for line in output.splitlines() if UNIT.name in line]
    assert ours == [], output


def test_systemd_security_exposure_is_low(verifiable_unit: Path) -> None:
    tool = require_tool("systemd-analyze", "systemd")
    result = run(tool, "security", "--offline=true", "--no-pager", str(verifiable_unit))
    output = result.stdout + result.stderr
    match = re.search(rf"Overall exposure level for {re.escape(UNIT.name)}: (\d+\.\d+)", output)
    assert match, f"no exposure level in the output (systemd >= 250 needed):\n{output}"
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure of {UNIT.name}: {exposure}")
    assert exposure <= MAX_EXPOSURE, output


def test_unit_lifecycle_matches_the_daemon(service: dict[str, list[str]]) -> None:
    # The daemon sends READY=1/WATCHDOG=1 from its main process (monitor/daemon.py),
    # reloads on SIGHUP, and exits 2 on a bad config (monitor/cli.py).
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30s"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["ExecStart"] == [
        "/usr/local/bin/cdp-monitor run -c /etc/cdp-monitor/monitor.yaml"
    ]
    assert service["DynamicUser"] == ["yes"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "IPAddressDeny" not in service  # Discord must stay reachable


def test_systemd_config_loads_as_the_unit_runs_it(
    service: dict[str, list[str]], tmp_path: Path
) -> None:
    """The credential and the state directory the unit provides are what the config uses."""
    (credential,) = service["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source == f"/etc/cdp-monitor/{name}"
    (state_directory,) = service["StateDirectory"]
    text = SYSTEMD_CONFIG.read_text()
    assert f"token_file: {name}\n" in text

    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / name).write_text("bot-token-from-credential\n")
    # What systemd sets for this unit.
    environ = {
        "CREDENTIALS_DIRECTORY": str(creds),
        "STATE_DIRECTORY": f"/var/lib/{state_directory}",
    }
    source_path = tmp_path / "etc" / "monitor.yaml"

    # Shipped with a placeholder the operator must replace: it fails loudly.
    with pytest.raises(ConfigError) as exc:
        parse_config(text, source=source_path, environ=environ)
    assert [path for path, _ in exc.value.problems] == ["discord.guild_id"]

    config = parse_config(
        text.replace("REPLACE_WITH_CDP_GUILD_ID", "123456789012345678"),
        source=source_path,
        environ=environ,
    )
    assert config.discord.token.get_secret_value() == "bot-token-from-credential"
    assert config.discord.token_file == creds / name
    assert config.state_dir == Path("/var/lib/cdp-monitor")
    assert config.gate.listen_address.port == 7077
    assert config.gate.upstream == "http://127.0.0.1:7078"
    assert config.control.listen == "127.0.0.1:9105"


_MDWE_WRAPPER = """
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])  # the restriction survives execve
"""
_WX_MAP = """
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("refused")
"""


def _mdwe(*argv: str) -> list[str]:
    return [sys.executable, "-c", _MDWE_WRAPPER, *argv]


async def test_daemon_runs_under_memory_deny_write_execute(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """MemoryDenyWriteExecute=yes: the real daemon under the kernel's form of the rule
    (PR_SET_MDWE), through probes against the simulator and a clean SIGTERM."""
    check = await asyncio.create_subprocess_exec(
        *_mdwe(sys.executable, "-c", _WX_MAP), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await check.communicate()
    if check.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert check.returncode == 0
    assert out.decode().strip() == "refused"  # the rule is in force after execve

    port = free_port()
    data = fast_config_dict(
        discord_sim, tmp_path / "state", control={"listen": f"127.0.0.1:{port}"}
    )
    config_path = tmp_path / "monitor.yaml"
    config_path.write_text(yaml.safe_dump(data))
    proc = await asyncio.create_subprocess_exec(
        *_mdwe(sys.executable, "-m", "monitor", "run", "-c", str(config_path)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        metrics = await _wait_for_probes(http, url, proc)
        assert 'cdpmon_probe_success{probe="gateway"} 1.0' in metrics
        assert 'cdpmon_probe_success{probe="rest"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        output = (await proc.stdout.read()).decode() if proc.stdout else ""
        assert "Traceback" not in output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _wait_for_probes(
    http: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process
) -> str:
    """/metrics once /readyz says the first probe round is done."""
    for _ in range(300):  # a bound only; each step waits 50 ms
        if proc.returncode is not None:
            out = await proc.stdout.read() if proc.stdout else b""
            raise AssertionError(f"daemon exited {proc.returncode}: {out.decode()}")
        try:
            async with http.get(url + "/readyz") as resp:
                if resp.status == 200:
                    async with http.get(url + "/metrics") as metrics:
                        return await metrics.text()
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("daemon never became ready")


# --- metric names --------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every metric name a live daemon's /metrics declares, as PromQL sees it.

    From the `# TYPE` lines, not the samples: a labelled metric with no child yet (no
    deletion so far, say) is declared but has no sample line.
    """
    text = live_metrics_text(tmp_path_factory.mktemp("live") / "state")
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
    assert "cdpmon_breaker_state" in names  # the daemon really answered
    return names


@pytest.fixture(scope="module")
def metric_labels() -> dict[str, frozenset[str]]:
    """PromQL name → label names, for every metric of monitor/metrics.py."""
    out: dict[str, frozenset[str]] = {}
    for value in vars(Metrics(CollectorRegistry())).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            out[name] = frozenset(value._labelnames)
    return out


# Label values the code defines; a typo in a matcher would silently match nothing.
KNOWN_LABEL_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("cdpmon_breaker_state", "state"): BREAKER_STATES,
    ("cdpmon_temp_channels", "state"): TEMP_CHANNEL_STATES,
    ("cdpmon_probe_success", "probe"): tuple(PROBES),
    ("cdpmon_cdp_channel_create_failures_total", "reason"): CDP_FAILURE_REASONS,
    ("cdpmon_reconcile_runs_total", "result"): RECONCILE_RESULTS,
    ("cdpmon_channels_deleted_total", "reason"): DELETE_REASONS,
}
_METRIC = re.compile(r"\bcdpmon_[a-z0-9_]+")
_SELECTOR = re.compile(r"\b(cdpmon_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def used_metric_names(exprs: list[str], exported: set[str]) -> set[str]:
    used = set()
    for expr in exprs:
        for name in _METRIC.findall(expr):
            for suffix in _HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and name.removesuffix(suffix) in exported:
                    name = name.removesuffix(suffix)
            used.add(name)
    return used


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_used_is_exported(source: str, exported_names: set[str]) -> None:
    exprs = [r["expr"] for r in alert_rules()] if source == "alerts" else dashboard_exprs()
    used = used_metric_names(exprs, exported_names)
    assert used, "no cdpmon_ metric found: the extraction is broken"
    assert used - exported_names == set()


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_label_matchers_name_real_labels_and_values(
    source: str, metric_labels: dict[str, frozenset[str]]
) -> None:
    exprs = [r["expr"] for r in alert_rules()] if source == "alerts" else dashboard_exprs()
    checked = 0
    for expr in exprs:
        for metric, body in _SELECTOR.findall(expr):
            metric = next(
                (metric.removesuffix(s) for s in _HISTOGRAM_SUFFIXES if metric.endswith(s)),
                metric,
            )
            for label, op, value in _MATCHER.findall(body):
                checked += 1
                assert label in metric_labels[metric] | {"job", "instance"}, (metric, label)
                known = KNOWN_LABEL_VALUES.get((metric, label))
                if known is None or op.startswith("!") or value.startswith("$"):
                    continue
                for alternative in value.split("|"):
                    assert alternative in known, (metric, label, alternative)
    assert checked > 0


def test_up_alert_uses_the_scrape_job_name() -> None:
    jobs = [job["job_name"] for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]]
    assert jobs == [MONITOR_JOB]
    up_exprs = [r["expr"] for r in alert_rules() if re.search(r"\bup\{", r["expr"])]
    assert up_exprs == [f'up{{job="{MONITOR_JOB}"}} == 0']


# --- Prometheus rules and config -----------------------------------------------------


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = run(promtool, "test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = run(promtool, "check", "config", PROMETHEUS_CONFIG.name, cwd=PROMETHEUS_CONFIG.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_yaml(PROMETHEUS_CONFIG)["rule_files"] == [ALERTS.name]
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9105"]}]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


def runbook_anchors() -> set[str]:
    """`### runbook-...` sections of README.md."""
    text = (REPO_ROOT / "README.md").read_text()
    return set(re.findall(r"^### (runbook-[a-z0-9-]+)\s*$", text, re.M))


def test_alerts_have_severity_summary_description_and_a_runbook_that_exists() -> None:
    homepage = tomllib.loads(PYPROJECT.read_text())["project"]["urls"]["Homepage"]
    anchors = runbook_anchors()
    linked = set()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, name
        base, _, anchor = annotations["runbook"].partition("#")
        assert base == homepage, name
        assert anchor in anchors, f"{name}: no '### {anchor}' section"
        linked.add(anchor)
    assert anchors - linked == set(), "runbook sections no alert links to"


# --- Grafana ---------------------------------------------------------------------------


def test_dashboard_uses_a_prometheus_datasource_variable() -> None:
    data = dashboard()
    variables = {v["name"]: v for v in data["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == expected, var["name"]
    panels = [p for p in dashboard_panels() if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
    # Nothing bound to one Grafana's datasource, so it imports anywhere.
    assert "__inputs" not in data


def test_dashboard_layout_is_valid() -> None:
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_covers_what_operators_need(exported_names: set[str]) -> None:
    used = used_metric_names(dashboard_exprs(), exported_names)
    needed = {
        "cdpmon_breaker_state",  # breaker over time, pauses as forced_open
        "cdpmon_guild_channels",
        "cdpmon_guild_channel_limit",
        "cdpmon_guild_channel_exhaustion_seconds",
        "cdpmon_temp_channels",
        "cdpmon_gateway_latency_seconds",
        "cdpmon_discord_requests_total",
        "cdpmon_discord_ratelimited_total",
        "cdpmon_cdp_channel_create_retries_total",
        "cdpmon_gate_requests_total",
        "cdpmon_gate_inflight",
        "cdpmon_channels_deleted_total",
    }
    assert needed - used == set()


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel query (Grafana's variables filled in) as a rule."""
    promtool = require_tool("promtool", "prometheus")
    rules = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in (("$__rate_interval", "1m"), ("$instance", ".*"), ("$guild", ".*")):
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unknown variable in {panel['title']}: {expr}"
            rules.append(
                {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr}
            )
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- Docker ----------------------------------------------------------------------------

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
    assert config.reconcile.cdp_auto_delete == auto_delete


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


# --- tests/prom_util.py ------------------------------------------------------------------


async def test_prom_util_scrapes_a_target_and_evaluates_rules(tmp_path: Path) -> None:
    async def metrics(_: web.Request) -> web.Response:
        body = '# TYPE demo_metric gauge\ndemo_metric{kind="static"} 42\n'
        return web.Response(text=body, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rules = tmp_path / "rules.yml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "demo",
                        "rules": [{"record": "demo:doubled", "expr": "demo_metric * 2"}],
                    }
                ]
            }
        )
    )
    try:
        async with running_prometheus(
            tmp_path / "prometheus",
            scrape_configs=[static_job("demo", f"127.0.0.1:{port}")],
            rule_files=[rules],
        ) as prom:
            (series,) = await prom.wait_for_series('demo_metric{job="demo"}')
            assert series["metric"]["kind"] == "static"
            assert series["value"][1] == "42"
            (doubled,) = await prom.wait_for_series("demo:doubled")
            assert doubled["value"][1] == "84"
            (up,) = await prom.query('up{job="demo"}')
            assert up["value"][1] == "1"
            (group,) = await prom.rule_groups()
            assert group["name"] == "demo"
            with pytest.raises(PrometheusQueryError, match="parse error"):
                await prom.query("sum(")
    finally:
        await runner.cleanup()
