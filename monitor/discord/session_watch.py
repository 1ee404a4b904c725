"""The guild watch as the daemon holds it: the live guild state (always: listings feed
its daily creations even without a session) and the gateway session (unless
`discord.gateway_session.enabled` is false), started as one supervised loop."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from monitor.clock import Clock
from monitor.config import Config
from monitor.discord.session import GatewayBotAPI, GatewaySession
from monitor.discord.session_creations import CreationWindow
from monitor.discord.session_live import LiveGuild
from monitor.health.owner import Health
from monitor.metrics import Metrics
from monitor.state import StateDir
from monitor.supervise import Supervisor

LOOP_NAME = "gateway_session"


class GuildWatch:
    """Owns `live` and, once started, `session`."""

    def __init__(
        self,
        config: Config,
        *,
        health: Health,
        metrics: Metrics,
        state_dir: StateDir,
        clock: Clock,
        logger: logging.Logger,
    ) -> None:
        self.config = config
        self._health, self._metrics, self._state_dir = health, metrics, state_dir
        self._clock, self._log = clock, logger
        d = config.discord
        creations = CreationWindow(state_dir.load_creations(), save=state_dir.save_creations)
        self.live = LiveGuild(
            d.guild_id,
            creations=creations,
            metrics=metrics,
            daily_create_limit=d.daily_create_limit,
            resync_interval=d.gateway_session.resync_interval,
            logger=logger,
        )
        self.session: GatewaySession | None = None
        metrics.gateway_session_enabled.set(1 if d.gateway_session.enabled else 0)
        self.live.publish(clock.time())

    def start(
        self, supervisor: Supervisor, *, rest: GatewayBotAPI, http: aiohttp.ClientSession
    ) -> None:
        d = self.config.discord
        if not d.gateway_session.enabled:
            self._log.info("gateway session off (discord.gateway_session.enabled: false)")
            return
        self.session = GatewaySession(
            d.gateway_session,
            token=d.token.get_secret_value(),
            gateway_url=d.gateway_url,
            rest=rest,
            http=http,
            live=self.live,
            metrics=self._metrics,
            clock=self._clock,
            sink=self._health.add_sample,
            state_dir=self._state_dir,
            logger=self._log,
        )
        supervisor.start(LOOP_NAME, self.session.run)

    def reconfigure(self, config: Config, *, rest: GatewayBotAPI) -> None:
        """A reload: limits and budgets apply at once; `enabled`, the token and the
        gateway URL after a restart."""
        d = config.discord
        self.live.daily_create_limit = d.daily_create_limit
        self.live.resync_interval = d.gateway_session.resync_interval
        if self.session is not None:
            self.session.reconfigure(d.gateway_session, rest=rest)
        self.config = config

    def status(self, now: float) -> dict[str, Any]:
        """`gateway_session` of /status."""
        if self.session is None:
            return {"enabled": False, "state": "disabled"}
        return self.session.status(now)
