"""The Discord simulator's REST API under /api/v9 and /api/v10: gateway discovery, the
bot user and its application, guild channels, channel messages (posted by the bot or a
user token), with Discord's validation errors; every change is dispatched to the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.sim.discord import shapes
from monitor.sim.discord.limits import WHO
from monitor.sim.discord.models import (
    API_PREFIXES,
    CREATABLE_TYPES,
    GUILD_LISTED_TYPES,
    Channel,
    Message,
    SimError,
    form_error,
    inner_errors,
)
from monitor.sim.discord.responses import Answer, discord_json, ratelimited

DAY_S = 86_400.0
USER_ID_BASE = 1_100_000_000_000_000_300  # user token i posts as USER_ID_BASE + i

if TYPE_CHECKING:
    from monitor.sim.discord.simulator import DiscordSimulator


class RestApi:
    """The REST handlers; the middleware in `limits` runs before each of them."""

    def __init__(self, sim: DiscordSimulator) -> None:
        self.sim = sim

    def add_routes(self, r: web.UrlDispatcher) -> None:
        for p in API_PREFIXES:
            r.add_get(p + "/gateway", self._get_gateway)
            r.add_get(p + "/gateway/bot", self._get_gateway_bot)
            r.add_get(p + "/users/@me", self._get_me)
            r.add_get(p + "/oauth2/applications/@me", self._get_application)
            r.add_get(p + "/guilds/{guild_id}/channels", self._list_channels)
            r.add_post(p + "/guilds/{guild_id}/channels", self._create_channel)
            r.add_get(p + "/channels/{channel_id}", self._get_channel)
            r.add_patch(p + "/channels/{channel_id}", self._edit_channel)
            r.add_delete(p + "/channels/{channel_id}", self._delete_channel)
            r.add_get(p + "/channels/{channel_id}/messages", self._list_messages)
            r.add_post(p + "/channels/{channel_id}/messages", self._post_message)
            r.add_patch(p + "/channels/{channel_id}/messages/{message_id}", self._edit_message)
            r.add_post(p + "/channels/{channel_id}/threads", self._start_thread)

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
        return discord_json({"url": self.sim.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        total = self.sim.settings.session_start_total
        return discord_json(
            {
                "url": self.sim.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": total,
                    "remaining": max(0, total - self.sim.state.session_starts_used),
                    "reset_after": 86_400_000,
                    "max_concurrency": self.sim.settings.max_concurrency,
                },
            }
        )

    async def _get_me(self, request: web.Request) -> web.Response:
        user_id, name = self._author(request)
        user = shapes.user_json(user_id, name, bot=request.get(WHO) == "bot")
        user.update(mfa_enabled=False, locale="en-US")
        return discord_json(user)

    async def _get_application(self, request: web.Request) -> web.Response:
        return discord_json(shapes.application_json(self.sim.settings))

    def _author(self, request: web.Request) -> tuple[int, str]:
        who = str(request.get(WHO))
        if who.startswith("user:"):
            i = self.sim.settings.user_tokens.index(who[5:])
            return USER_ID_BASE + i, f"user{i}"
        return self.sim.settings.bot_user_id, "cdp-bot"

    def _check_daily_cap(self) -> None:
        """Discord's per-guild daily channel-create cap (about 500) answers like any
        per-resource limit: a 429 with scope "shared"."""
        cap = self.sim.settings.daily_channel_create_cap
        if cap is None:
            return
        now = self.sim.clock.time()
        creates = self.sim.state.creates_today
        while creates and creates[0] <= now - DAY_S:
            creates.popleft()
        if len(creates) >= cap:
            retry_after = creates[0] + DAY_S - now
            raise Answer(ratelimited(retry_after, is_global=False, scope="shared"))
        creates.append(now)

    async def _list_channels(self, request: web.Request) -> web.Response:
        guild_id = self._guild(request)
        channels = [
            self.sim.channel_json(c)
            for c in self.sim.guild_channels(guild_id)
            if c.type in GUILD_LISTED_TYPES
        ]
        return discord_json(channels)

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
        self._check_daily_cap()
        channel = self.sim.add_channel(name, type_, parent_id=parent_id)
        return discord_json(self.sim.channel_json(channel), 201)

    async def _get_channel(self, request: web.Request) -> web.Response:
        return discord_json(self.sim.channel_json(self._channel(request)))

    async def _delete_channel(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self.sim.remove_channel(channel)
        return discord_json(self.sim.channel_json(channel))

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
        return discord_json([self.sim.message_json(m, channel.id) for m in newest_first])

    async def _post_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        body = await _json_object(request)
        content = body.get("content", "")
        if not isinstance(content, str) or len(content) > 2000:
            raise form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        if not content:
            raise SimError(400, 50006, "Cannot send an empty message")
        author_id, name = self._author(request)
        msg = self.sim.add_message(channel, content, author=name, author_id=author_id)
        if request.get(WHO) == "bot":
            msg.bot = True
        return discord_json(self.sim.message_json(msg, channel.id))

    async def _edit_channel(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        body = await _json_object(request)
        name = body.get("name", channel.name)
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        channel.name = name.lower().replace(" ", "-") if channel.type in (0, 5) else name
        self.sim.channel_changed(channel)
        return discord_json(self.sim.channel_json(channel))

    async def _edit_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        msg = _find_message(channel, request.match_info["message_id"])
        if msg.author_id != self._author(request)[0]:
            raise SimError(403, 50005, "Cannot edit a message authored by another user")
        content = (await _json_object(request)).get("content", msg.content)
        if not isinstance(content, str) or len(content) > 2000:
            raise form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        msg.content = content
        self.sim.edit_message(channel, msg)
        return discord_json(self.sim.message_json(msg, channel.id))

    async def _start_thread(self, request: web.Request) -> web.Response:
        """Start Thread without Message (CDP's /api/thread/create): a public thread under
        the channel; threads do not count toward the guild's channel limit."""
        parent = self._channel(request)
        body = await _json_object(request)
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        thread = self.sim.add_channel(name, 11, parent_id=parent.id)
        return discord_json(self.sim.channel_json(thread), status=201)


def _find_message(channel: Channel, raw: str) -> Message:
    for msg in channel.messages:
        if str(msg.id) == raw:
            return msg
    raise SimError(404, 10008, "Unknown Message")


def _snowflake_param(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit():
        raise form_error(name, "NUMBER_TYPE_COERCE", f'Value "{raw}" is not snowflake.')
    return int(raw)


async def _json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise SimError(
            400,
            50035,
            "Invalid Form Body",
            inner_errors(
                "CONTENT_TYPE_INVALID",
                "Expected \"Content-Type\" header to be one of {'application/json', "
                "'application/x-www-form-urlencoded', 'multipart/form-data'}.",
            ),
        )
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
