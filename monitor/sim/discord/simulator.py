"""`DiscordSimulator`: lifecycle, URLs, the model helpers (ids, channels, messages and
their JSON) that the REST and admin handlers share, and the app that wires them."""

from __future__ import annotations

import random
from typing import Any

from aiohttp import web

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.discord.snowflake import make_snowflake
from monitor.httpserve import start_site
from monitor.sim.discord import shapes
from monitor.sim.discord.admin import AdminApi
from monitor.sim.discord.coze import CozePersona
from monitor.sim.discord.gateway import Gateway
from monitor.sim.discord.limits import DiscordBehaviour
from monitor.sim.discord.models import (
    API_PREFIX,
    THREAD_TYPES,
    Channel,
    Message,
    SimError,
    SimSettings,
    SimState,
)
from monitor.sim.discord.rest import RestApi

SOMEONE_ID = 1_100_000_000_000_000_200  # the author of admin-posted messages


class DiscordSimulator:
    def __init__(self, settings: SimSettings | None = None, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings or SimSettings()
        self.clock = clock
        self.state = SimState(self.settings)
        self.random = random.Random(self.settings.seed)
        self.started_at = self.clock.time()
        self.coze = CozePersona(self)
        self._gateway = Gateway(self)
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner, self.port = await start_site(self.app, host, port)
        self.host = host

    async def stop(self) -> None:
        await self.coze.stop()
        await self._gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    @property
    def admin_url(self) -> str:
        return self.base_url + "/_sim"

    def urls(self) -> dict[str, str]:
        return {
            "api_base": self.api_base,
            "gateway_url": self.gateway_url,
            "admin_url": self.admin_url,
            "guild_id": str(self.settings.guild_id),
            "token": self.settings.token,
        }

    # -- model helpers (also used by the admin API) ----------------------------------

    def new_id(self, at: float | None = None) -> int:
        self.state.increment = (self.state.increment + 1) & 0xFFF
        return make_snowflake(
            self.clock.time() if at is None else at, worker=1, increment=self.state.increment
        )

    def guild_channels(self, guild_id: int) -> list[Channel]:
        return [c for c in self.state.channels.values() if c.guild_id == guild_id]

    def add_channel(
        self,
        name: str,
        type_: int = 0,
        *,
        age_seconds: float = 0.0,
        parent_id: int | None = None,
    ) -> Channel:
        guild_id = self.settings.guild_id
        listed = [c for c in self.guild_channels(guild_id) if c.type not in THREAD_TYPES]
        if type_ not in THREAD_TYPES and len(listed) >= self.settings.channel_limit:
            raise SimError(
                400,
                30013,
                f"Maximum number of server channels reached ({self.settings.channel_limit})",
            )
        created = self.clock.time() - max(0.0, age_seconds)
        if type_ in (0, 5):  # Discord normalises text channel names
            name = name.lower().replace(" ", "-")
        channel = Channel(
            id=self.new_id(created),
            guild_id=guild_id,
            name=name,
            type=type_,
            position=len(listed),
            parent_id=parent_id,
        )
        self.state.channels[channel.id] = channel
        self.dispatch("CHANNEL_CREATE", self.channel_json(channel))
        return channel

    def remove_channel(self, channel: Channel) -> None:
        del self.state.channels[channel.id]
        self.dispatch("CHANNEL_DELETE", self.channel_json(channel))

    def channel_changed(self, channel: Channel) -> None:
        self.dispatch("CHANNEL_UPDATE", self.channel_json(channel))

    def add_message(
        self,
        channel: Channel,
        content: str,
        *,
        author: str = "someone",
        author_id: int | None = None,
        reference: int | None = None,
        components: list[dict[str, Any]] | None = None,
    ) -> Message:
        """A message in `channel`; "bot" is the bot itself. Dispatched, and answered by
        the Coze persona when it mentions it."""
        bot = author == "bot" or author_id == self.settings.coze_bot_id
        if author_id is None:
            author_id = self.settings.bot_user_id if author == "bot" else SOMEONE_ID
        msg = Message(self.new_id(), content, author_id, author, bot, reference, components or [])
        channel.messages.append(msg)
        self.dispatch("MESSAGE_CREATE", self.message_json(msg, channel.id))
        self.coze.heard(channel, msg)
        return msg

    def edit_message(self, channel: Channel, msg: Message) -> None:
        msg.edited_at = self.clock.time()
        self.dispatch("MESSAGE_UPDATE", self.message_json(msg, channel.id))

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self._gateway.sessions.dispatch(event, data)

    def channel_json(self, c: Channel) -> dict[str, Any]:
        omit = self.state.rest_faults.omit_last_message_id
        return shapes.channel_json(c, with_last_message_id=not omit)

    def message_json(self, m: Message, channel_id: int) -> dict[str, Any]:
        channel = self.state.channels.get(channel_id) or Channel(
            channel_id, self.settings.guild_id, "", 0, 0
        )
        return shapes.message_json(m, channel)

    def user_json(self, user_id: int, name: str) -> dict[str, Any]:
        return shapes.user_json(user_id, name)

    def guild_json(self) -> dict[str, Any]:
        channels = [shapes.channel_json(c) for c in self.guild_channels(self.settings.guild_id)]
        return shapes.guild_json(self.settings, channels, self.started_at)

    # -- app -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[DiscordBehaviour(self).middleware])
        RestApi(self).add_routes(app.router)
        self._gateway.add_routes(app.router)
        AdminApi(self).add_routes(app.router)
        return app


__all__ = ["DiscordSimulator"]
