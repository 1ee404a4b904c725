"""The Discord simulator's REST API under /api/v10: gateway discovery, the bot user,
guild channels and channel messages, with Discord's validation errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.sim.discord.models import (
    API_PREFIX,
    CREATABLE_TYPES,
    GUILD_LISTED_TYPES,
    Channel,
    SimError,
    form_error,
    inner_errors,
)

if TYPE_CHECKING:
    from monitor.sim.discord.simulator import DiscordSimulator


class RestApi:
    """The REST handlers; the middleware in `limits` runs before each of them."""

    def __init__(self, sim: DiscordSimulator) -> None:
        self.sim = sim

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get(API_PREFIX + "/gateway", self._get_gateway)
        r.add_get(API_PREFIX + "/gateway/bot", self._get_gateway_bot)
        r.add_get(API_PREFIX + "/users/@me", self._get_me)
        r.add_get(API_PREFIX + "/guilds/{guild_id}/channels", self._list_channels)
        r.add_post(API_PREFIX + "/guilds/{guild_id}/channels", self._create_channel)
        r.add_get(API_PREFIX + "/channels/{channel_id}", self._get_channel)
        r.add_delete(API_PREFIX + "/channels/{channel_id}", self._delete_channel)
        r.add_get(API_PREFIX + "/channels/{channel_id}/messages", self._list_messages)
        r.add_post(API_PREFIX + "/channels/{channel_id}/messages", self._post_message)
        r.add_post(API_PREFIX + "/channels/{channel_id}/threads", self._start_thread)

    def _guild(self, request: web.Request) -> int:
        guild_id = _snowflake_param(request, "guild_id")
        if guild_id != self.sim.settings.guild_id:
            raise SimError(404, 10004, "Unknown Guild")
        return guild_id

    def _channel(self, request: web.Request) -> Channel:
        channel = self.sim.state.channels.get(_snowflake_param(request, "channel_id"))
        if channel is None:
            raise SimError(404, 10003, "Unknown Channel")
        return channel

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return web.json_response({"url": self.sim.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        total = self.sim.settings.session_start_total
        return web.json_response(
            {
                "url": self.sim.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": total,
                    "remaining": max(0, total - self.sim.state.session_starts_used),
                    "reset_after": 86_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_me(self, request: web.Request) -> web.Response:
        user = self.sim.user_json(self.sim.settings.bot_user_id, "cdp-bot")
        user.update(bot=True, mfa_enabled=False, locale="en-US")
        return web.json_response(user)

    async def _list_channels(self, request: web.Request) -> web.Response:
        guild_id = self._guild(request)
        channels = [
            self.sim.channel_json(c)
            for c in self.sim.guild_channels(guild_id)
            if c.type in GUILD_LISTED_TYPES
        ]
        return web.json_response(channels)

    async def _create_channel(self, request: web.Request) -> web.Response:
        self._guild(request)
        body = await _json_object(request)
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        type_ = body.get("type", 0)
        if type_ is None:
            type_ = 0
        if not isinstance(type_, int) or isinstance(type_, bool) or type_ not in CREATABLE_TYPES:
            raise form_error(
                "type", "BASE_TYPE_CHOICES", f"Value must be one of {sorted(CREATABLE_TYPES)}."
            )
        parent = body.get("parent_id")
        parent_id = None
        if parent is not None:
            try:
                parent_id = int(parent)
            except (TypeError, ValueError):
                raise form_error(
                    "parent_id", "NUMBER_TYPE_COERCE", "Value is not snowflake."
                ) from None
        channel = self.sim.add_channel(name, type_, parent_id=parent_id)
        return web.json_response(self.sim.channel_json(channel), status=201)

    async def _get_channel(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.channel_json(self._channel(request)))

    async def _delete_channel(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        del self.sim.state.channels[channel.id]
        return web.json_response(self.sim.channel_json(channel))

    async def _list_messages(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        raw = request.query.get("limit", "50")
        try:
            limit = int(raw)
        except ValueError:
            raise form_error("limit", "NUMBER_TYPE_COERCE", f'Value "{raw}" is not int.') from None
        if not 1 <= limit <= 100:
            raise form_error("limit", "NUMBER_TYPE_MAX", "Int value should be between 1 and 100.")
        newest_first = list(reversed(channel.messages))[:limit]
        return web.json_response([self.sim.message_json(m, channel.id) for m in newest_first])

    async def _post_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        body = await _json_object(request)
        content = body.get("content", "")
        if not isinstance(content, str) or len(content) > 2000:
            raise form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        if not content:
            raise SimError(400, 50006, "Cannot send an empty message")
        msg = self.sim.add_message(channel, content, author="bot")
        return web.json_response(self.sim.message_json(msg, channel.id))

    async def _start_thread(self, request: web.Request) -> web.Response:
        """Start Thread without Message (CDP's /api/thread/create): a public thread under
        the channel; threads do not count toward the guild's channel limit."""
        parent = self._channel(request)
        body = await _json_object(request)
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        thread = self.sim.add_channel(name, 11, parent_id=parent.id)
        return web.json_response(self.sim.channel_json(thread), status=201)


def _snowflake_param(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit():
        raise form_error(name, "NUMBER_TYPE_COERCE", f'Value "{raw}" is not snowflake.')
    return int(raw)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise SimError(
            400,
            50035,
            "Invalid Form Body",
            inner_errors("JSON_INVALID", "The request body contains invalid JSON."),
        ) from None
    if not isinstance(body, dict):
        raise SimError(
            400,
            50035,
            "Invalid Form Body",
            inner_errors("DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType"),
        )
    return body
