"""Prometheus rules and config: promtool checks, rule unit tests, alert annotations."""

from __future__ import annotations

import re
import tomllib

from tests.deploy.files import (
    ALERTMANAGER_CONFIG,
    ALERTS,
    ALERTS_TEST,
    MONITOR_JOB,
    PROMETHEUS_CONFIG,
    PYPROJECT,
    REPO_ROOT,
    alert_rules,
    load_yaml,
    require_tool,
    run,
)


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
        # runbook_url: the annotation Grafana and Alertmanager templates read.
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        base, _, anchor = annotations["runbook_url"].partition("#")
        assert base == f"{homepage}/blob/main/README.md", name
        assert anchor in anchors, f"{name}: no '### {anchor}' section"
        linked.add(anchor)
    assert anchors - linked == set(), "runbook sections no alert links to"


def test_amtool_check_config() -> None:
    amtool = require_tool("amtool", "prometheus-alertmanager")
    result = run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_inhibits_by_instance_and_names_real_alerts() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    names = {rule["alert"] for rule in alert_rules()}
    rules = {tuple(r["source_matchers"]): r for r in config["inhibit_rules"]}
    down = rules[('alertname="CdpMonitorDown"',)]
    assert down["target_matchers"] == ['alertname!="CdpMonitorDown"']
    assert down["equal"] == ["instance"]
    token = rules[('alertname="DiscordTokenInvalid"',)]
    (target,) = token["target_matchers"]
    muted = set(re.fullmatch(r'alertname=~"(.*)"', target).group(1).split("|"))  # type: ignore[union-attr]
    assert "DiscordProbeFailing" in muted and muted <= names
    assert token["equal"] == ["instance"]
    receivers = {r["name"]: r for r in config["receivers"]}
    assert all("telegram_configs" in r for r in receivers.values())
    assert config["route"]["receiver"] in receivers
    severities = {rule["labels"]["severity"] for rule in alert_rules()}
    routed = {m for route in config["route"]["routes"] for m in route["matchers"]}
    assert routed == {'severity="critical"'} and severities == {"critical", "warning"}


def test_only_the_down_alerts_name_the_job_and_it_is_prometheus_yml_s() -> None:
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert job["job_name"] == MONITOR_JOB
    by_name = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert by_name["CdpMonitorAbsent"] == f'absent(up{{job="{MONITOR_JOB}"}})'
    naming = {name for name, expr in by_name.items() if "job=" in expr}
    assert naming == {"CdpMonitorDown", "CdpMonitorAbsent"}
