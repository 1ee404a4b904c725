"""The Discord endpoints the monitor uses, as methods over one generic ``request``
(implemented by `monitor.discord.rest.DiscordRestClient`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Endpoints:
    """Named calls; a subclass supplies ``request`` (method, route template, params)."""

    async def request(
        self,
        method: str,
        route: str,
        *,
        params: Mapping[str, object] | None = None,
        json: Any = None,
        query: Mapping[str, str | int] | None = None,
        idempotent: bool | None = None,
        max_retries: int | None = None,
    ) -> Any:
        raise NotImplementedError

    async def get_gateway(self) -> Any:
        return await self.request("GET", "/gateway")

    async def get_gateway_bot(self) -> Any:
        return await self.request("GET", "/gateway/bot")

    async def get_current_user(self) -> Any:
        return await self.request("GET", "/users/@me")

    async def list_guild_channels(self, guild_id: int | str) -> Any:
        return await self.request(
            "GET", "/guilds/{guild_id}/channels", params={"guild_id": guild_id}
        )

    async def create_guild_channel(self, guild_id: int | str, name: str, type: int = 0) -> Any:
        return await self.request(
            "POST",
            "/guilds/{guild_id}/channels",
            params={"guild_id": guild_id},
            json={"name": name, "type": type},
        )

    async def get_channel(self, channel_id: int | str) -> Any:
        return await self.request(
            "GET", "/channels/{channel_id}", params={"channel_id": channel_id}
        )

    async def delete_channel(self, channel_id: int | str) -> Any:
        return await self.request(
            "DELETE", "/channels/{channel_id}", params={"channel_id": channel_id}
        )

    async def list_messages(self, channel_id: int | str, limit: int = 50) -> Any:
        return await self.request(
            "GET",
            "/channels/{channel_id}/messages",
            params={"channel_id": channel_id},
            query={"limit": limit},
        )

    async def create_message(self, channel_id: int | str, content: str) -> Any:
        return await self.request(
            "POST",
            "/channels/{channel_id}/messages",
            params={"channel_id": channel_id},
            json={"content": content},
        )
