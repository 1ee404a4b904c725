"""Paths and helpers shared by the deployment tests (systemd, Prometheus, Grafana, Docker)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.health.probes import PROBES
from monitor.metrics import ACTION_KINDS
from monitor.reconcile import REASONS as DELETE_REASONS
from monitor.vocab import (
    BREAKER_STATES,
    CDP_FAILURE_REASONS,
    RECONCILE_RESULTS,
    TEMP_CHANNEL_STATES,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "cdp-monitor.service"
SYSTEMD_CONFIG = DEPLOY / "systemd" / "monitor.yaml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = DEPLOY / "prometheus" / "alertmanager.yml"
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
            f"{name} is missing: install Debian's `{package}` package"
            " (`make test` does when run as root)",
            pytrace=False,
        )
    return path


def run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# Label values the code defines; a typo in a matcher would silently match nothing.
KNOWN_LABEL_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("cdpmon_breaker_state", "state"): BREAKER_STATES,
    ("cdpmon_temp_channels", "state"): TEMP_CHANNEL_STATES,
    ("cdpmon_probe_success", "probe"): tuple(PROBES),
    ("cdpmon_cdp_channel_create_failures_total", "reason"): CDP_FAILURE_REASONS,
    ("cdpmon_reconcile_runs_total", "result"): RECONCILE_RESULTS,
    ("cdpmon_channels_deleted_total", "reason"): DELETE_REASONS,
    ("cdpmon_action_failures_total", "kind"): ACTION_KINDS,
    ("cdpmon_action_attempts_total", "kind"): ACTION_KINDS,
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
