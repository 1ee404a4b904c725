"""The Grafana dashboard: datasource variable, layout, coverage, valid PromQL."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.deploy.files import (
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    require_tool,
    run,
    used_metric_names,
)


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
    # Nothing bound to one Grafana's datasource, so it imports anywhere ...
    assert "uid" not in str(variables["DS_PROMETHEUS"]["current"])


def test_import_prompts_for_the_datasource() -> None:
    # ... and importing it asks which Prometheus: Grafana fills ${DS_PROMETHEUS} from this.
    (wanted,) = dashboard()["__inputs"]
    assert wanted["name"] == "DS_PROMETHEUS"
    assert (wanted["type"], wanted["pluginId"]) == ("datasource", "prometheus")
    required = {(r["type"], r["id"]) for r in dashboard()["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
    panel_types = {p["type"] for p in dashboard_panels() if p["type"] != "row"}
    assert {("panel", t) for t in panel_types} <= required


def test_every_panel_shows_one_instance_of_the_chosen_job() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        # One value: no panel sums or overlays several daemons.
        assert not variables[name]["multi"] and not variables[name]["includeAll"], name
    assert '{job=~"$job"}' in variables["instance"]["definition"]
    for expr in [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]:
        for selector in re.finditer(r"cdpmon_[a-z0-9_]+(\{[^}]*\})?", expr):
            labels = selector.group(1) or ""
            assert 'job=~"$job"' in labels and 'instance=~"$instance"' in labels, expr


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
            for var, value in (
                ("$__rate_interval", "1m"),
                ("$job", ".*"),
                ("$instance", ".*"),
                ("$guild", ".*"),
            ):
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unknown variable in {panel['title']}: {expr}"
            rules.append(
                {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr}
            )
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
