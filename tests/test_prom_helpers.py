"""tests/helpers/prom.py itself: a real Prometheus scrapes a target and evaluates rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.helpers.prom import (
    PrometheusQueryError,
    running_prometheus,
    static_job,
)


async def test_prom_helper_scrapes_a_target_and_evaluates_rules(tmp_path: Path) -> None:
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
