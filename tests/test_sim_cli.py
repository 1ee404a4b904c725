"""`cdp-monitor sim` prints what a client needs in its JSON line (user token and Coze
persona included) and honours `--heartbeat-interval-ms`."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp

from tests.conftest import REPO_ROOT


async def test_sim_prints_user_token_and_coze_bot_id(http: aiohttp.ClientSession) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monitor",
        "sim",
        "--heartbeat-interval-ms",
        "500",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert info["user_token"] == "sim-user-token"
        assert info["coze_bot_id"].isdigit() and info["token"] == "sim-token"
        async with http.ws_connect(info["gateway_url"] + "/?v=10&encoding=json") as ws:
            assert (await ws.receive_json())["d"]["heartbeat_interval"] == 500
    finally:
        proc.terminate()
        await proc.wait()
