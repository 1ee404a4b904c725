"""The CDP emulator's admin API under /_cdp: what it counts, its log lines, and the
troubles that are CDP's own, not Discord's, injected on demand.

    GET    /_cdp/state        counters, pending delete timers, user tokens left
    GET    /_cdp/logs         {"lines": [...], "records": [[stream, line], ...]}
    PUT    /_cdp/faults       {"user_tokens": [..] | [], "coze": {"silence", "error",
                              "daily_limit", "delay"}, "bot": {"missing": true} |
                              {"models": [..]} (a bot_config.json with those models)}
    DELETE /_cdp/faults       Coze and bot back to normal (user tokens stay as they are)
    POST   /_cdp/restart      the process dies and restarts (timers lost, requests dropped)
    POST   /_cdp/stay-active  the daily 09:10 task, now
    POST   /_cdp/reset-stats"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.sim.cdp.stayactive import run_task

if TYPE_CHECKING:
    from monitor.sim.cdp.emulator import CdpEmulator


@dataclass
class CozeFaults:
    silence: bool = False  # no reply: every request runs into REQUEST_OUT_TIME
    error: bool = False  # a Coze error text as the reply (500 with that text)
    daily_limit: bool = False  # the user daily-limit text: the token is dropped
    delay: float = 0.0  # seconds added to Coze's thinking


class AdminApi:
    def __init__(self, emu: CdpEmulator) -> None:
        self.emu = emu

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/_cdp/state", self._state)
        r.add_get("/_cdp/logs", self._logs)
        r.add_put("/_cdp/faults", self._put_faults)
        r.add_delete("/_cdp/faults", self._clear_faults)
        r.add_post("/_cdp/restart", self._restart)
        r.add_post("/_cdp/stay-active", self._stay_active)
        r.add_post("/_cdp/reset-stats", self._reset)

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.emu.snapshot())

    async def _logs(self, request: web.Request) -> web.Response:
        records = [list(r) for r in self.emu.log_records]
        return web.json_response({"lines": list(self.emu.log_lines), "records": records})

    async def _put_faults(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            self.apply(body if isinstance(body, dict) else {})
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": f"bad faults: {exc}"}, status=400)
        return web.json_response(self.emu.snapshot())

    def apply(self, body: dict[str, Any]) -> None:
        emu = self.emu
        if "user_tokens" in body:
            emu.process.conversation.user_auths = [str(t) for t in body["user_tokens"]]
        coze = body.get("coze") or {}
        for key in ("silence", "error", "daily_limit"):
            if key in coze:
                setattr(emu.coze, key, bool(coze[key]))
        if "delay" in coze:
            emu.coze.delay = float(coze["delay"])
        bot = body.get("bot") or {}
        if bot.get("missing"):
            emu.coze_bot_id = ""
        if "models" in bot:
            emu.bot_models = {str(m) for m in bot["models"]}

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.emu.coze = CozeFaults()
        self.emu.bot_models = None
        self.emu.coze_bot_id = self.emu.settings.coze_bot_id
        return web.json_response(self.emu.snapshot())

    async def _restart(self, request: web.Request) -> web.Response:
        lost = len(self.emu.process.channels.delete_timers)
        self.emu.crash()
        return web.json_response({"forgotten_delete_timers": lost})

    async def _stay_active(self, request: web.Request) -> web.Response:
        self.emu.process.channels.go(run_task(self.emu))
        return web.json_response({"started": True})

    async def _reset(self, request: web.Request) -> web.Response:
        self.emu.reset_stats()
        return web.json_response(self.emu.snapshot())
