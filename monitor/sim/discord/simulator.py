"""`DiscordSimulator`: lifecycle, URLs, the model helpers (ids, channels, messages and
their JSON) that the REST and admin handlers share, and the app that wires them."""

from __future__ import annotations

import random
from typing import Any

from aiohttp import web

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.discord.snowflake import make_snowflake, snowflake_time
from monitor.httpserve import start_site
from monitor.sim.discord.admin import AdminApi
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
    iso,
)
from monitor.sim.discord.rest import RestApi


class DiscordSimulator:
    def __init__(self, settings: SimSettings | None = None, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings or SimSettings()
        self.clock = clock
        self.state = SimState(self.settings)
        self.random = random.Random(self.settings.seed)
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
                f"Maximum number of guild channels reached ({self.settings.channel_limit})",
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
        return channel

    def add_message(self, channel: Channel, content: str, *, author: str = "someone") -> Message:
        author_id = self.settings.bot_user_id if author == "bot" else 1_100_000_000_000_000_200
        msg = Message(self.new_id(), content, author_id, author)
        channel.messages.append(msg)
        return msg

    def channel_json(self, c: Channel) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(c.id),
            "type": c.type,
            "flags": 0,
            "guild_id": str(c.guild_id),
            "name": c.name,
            "parent_id": None if c.parent_id is None else str(c.parent_id),
            "position": c.position,
            "permission_overwrites": [],
        }
        if c.type in (0, 5, 15):
            out.update(
                last_message_id=None if c.last_message_id is None else str(c.last_message_id),
                topic=None,
                nsfw=False,
                rate_limit_per_user=0,
            )
        if c.type in (2, 13):
            out.update(bitrate=64000, user_limit=0, rtc_region=None)
        return out

    def message_json(self, m: Message, channel_id: int) -> dict[str, Any]:
        return {
            "type": 0,
            "content": m.content,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "timestamp": iso(snowflake_time(m.id)),
            "edited_timestamp": None,
            "flags": 0,
            "components": [],
            "id": str(m.id),
            "channel_id": str(channel_id),
            "author": self.user_json(m.author_id, m.author_name),
            "pinned": False,
            "mention_everyone": False,
            "tts": False,
        }

    def user_json(self, user_id: int, name: str) -> dict[str, Any]:
        return {
            "id": str(user_id),
            "username": name,
            "avatar": None,
            "discriminator": "0",
            "public_flags": 0,
            "flags": 0,
            "global_name": None,
            "primary_guild": None,
        }

    # -- app -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[DiscordBehaviour(self).middleware])
        RestApi(self).add_routes(app.router)
        self._gateway.add_routes(app.router)
        AdminApi(self).add_routes(app.router)
        return app


__all__ = ["DiscordSimulator"]
