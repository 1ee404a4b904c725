"""The CDP emulator's client-facing endpoints: the OpenAI ones (chat completions, plain
or streamed; image generations; models) and CDP's /api channel endpoints."""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.errors import DiscordError
from monitor.sim.cdp.golog import go_error_text
from monitor.sim.cdp.settings import IMAGE_URL, MAX_MESSAGE_LEN, MODELS, ApiError, openai_error
from monitor.vocab import CHANNEL_PREFIX, LEGACY_CHANNEL_PREFIX

if TYPE_CHECKING:
    from monitor.sim.cdp.emulator import CdpEmulator

# The current request's id, set by the middleware (a ContextVar works with every
# aiohttp version, unlike typed request keys).
REQUEST_ID: ContextVar[str] = ContextVar("cdp_request_id")


class Handlers:
    """The request handlers; the emulator's middleware runs before each of them."""

    def __init__(self, emu: CdpEmulator) -> None:
        self.emu = emu

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/images/generations", self._images)
        r.add_get("/v1/models", self._models)
        r.add_post("/api/channel/create", self._api_channel_create)
        r.add_post("/api/thread/create", self._api_thread_create)
        r.add_get("/api/channel/del/all/cdp", self._api_del_all)

    async def _json_object(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise openai_error(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise openai_error(400, "request body must be a JSON object")
        return body

    @staticmethod
    def _optional(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
        value = body.get(key)
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise openai_error(400, f"`{key}` must be a {kind.__name__}")
        return value

    def _channel_id_field(self, body: dict[str, Any]) -> str | None:
        value = self._optional(body, "channelId", str, None)
        return value or None  # an empty channelId means "create one", as in CDP

    @staticmethod
    def _prompt(messages: Any) -> str:
        if not isinstance(messages, list) or not messages:
            raise openai_error(400, "`messages` must be a non-empty array")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise openai_error(400, "each message must be an object with a `role`")
        chosen = next((m for m in reversed(messages) if m["role"] == "user"), messages[-1])
        content = chosen.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "\n".join(
                str(p.get("text", ""))
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if not isinstance(content, str) or not content.strip():
            raise openai_error(400, "the last user message has no text content")
        return content[:MAX_MESSAGE_LEN]

    # -- OpenAI endpoints --------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        created = int(self.emu.clock.time())
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": created, "owned_by": "coze"}
                    for m in MODELS
                ],
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        rid = REQUEST_ID.get()
        body = await self._json_object(request)
        model = self._optional(body, "model", str, "gpt-4o")
        stream = self._optional(body, "stream", bool, False)
        channel_field = self._channel_id_field(body)
        prompt = self._prompt(body.get("messages"))
        channel_id, created = await self.emu.channels.send_channel(rid, channel_field)
        try:
            reply = await self._converse(rid, channel_id, prompt)
            if stream:
                return await self._stream_reply(request, rid, model, reply)
            return web.json_response(self._completion(rid, model, prompt, reply))
        finally:
            # CDP defers SetChannelDeleteTimer: it runs when the handler returns,
            # whether the conversation worked or not.
            if created:
                self.emu.channels.schedule_delete(channel_id)

    async def _images(self, request: web.Request) -> web.Response:
        rid = REQUEST_ID.get()
        body = await self._json_object(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise openai_error(400, "`prompt` must be a non-empty string")
        self._optional(body, "model", str, None)
        channel_field = self._channel_id_field(body)
        channel_id, created = await self.emu.channels.send_channel(rid, channel_field)
        try:
            await self._converse(rid, channel_id, prompt[:MAX_MESSAGE_LEN], image=True)
            return web.json_response(
                {"created": int(self.emu.clock.time()), "data": [{"url": IMAGE_URL}]}
            )
        finally:
            if created:
                self.emu.channels.schedule_delete(channel_id)

    def _completion(self, rid: str, model: str, prompt: str, reply: str) -> dict[str, Any]:
        prompt_tokens = max(1, len(prompt) // 4)
        completion_tokens = max(1, len(reply) // 4)
        return {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": int(self.emu.clock.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    async def _stream_reply(
        self, request: web.Request, rid: str, model: str, reply: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Request-Id": rid,
            }
        )
        await response.prepare(request)
        pieces = _split(reply, self.emu.settings.stream_chunks)
        created = int(self.emu.clock.time())
        for i, piece in enumerate(pieces):
            if i:
                await self.emu.clock.sleep(self.emu.settings.stream_chunk_delay)
            last = i == len(pieces) - 1
            delta: dict[str, str] = {"content": piece}
            if i == 0:
                delta["role"] = "assistant"
            chunk = {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
                ],
            }
            await response.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _converse(
        self, rid: str, channel_id: str, prompt: str, *, image: bool = False
    ) -> str:
        """Post the prompt, let the Coze bot think, and have it answer in the channel."""
        try:
            await self.emu.client.request(
                "POST", f"/channels/{channel_id}/messages", {"content": prompt}
            )
            await self.emu.clock.sleep(self.emu.settings.reply_delay)
            reply = (
                f"Here is your image: {IMAGE_URL}"
                if image
                else f"This is the simulated Coze bot answering: {prompt}"
            )[:MAX_MESSAGE_LEN]
            await self.emu.client.request(
                "POST", f"/channels/{channel_id}/messages", {"content": reply}
            )
        except DiscordError as exc:
            message = f"discord send message error: {go_error_text(exc)}"
            self.emu.log("ERR", rid, message)
            raise openai_error(500, message, "request_error") from exc
        return reply

    # -- CDP's /api endpoints ----------------------------------------------------------

    async def _api_channel_create(self, request: web.Request) -> web.Response:
        rid = REQUEST_ID.get()
        body = await self._json_object(request)
        name = body.get("name")
        parent = body.get("parentId") or None
        if not isinstance(name, str) or not name:
            raise openai_error(400, "`name` must be a non-empty string")
        if parent is not None and not isinstance(parent, str):
            raise openai_error(400, "`parentId` must be a string")
        try:
            channel_id = await self.emu.channels.create_channel(name, parent)
        except DiscordError as exc:
            self.emu.log("ERR", rid, f"create channel error: {go_error_text(exc)}")
            # CDP answers its /api failures with 200 and success=false.
            return web.json_response({"success": False, "message": "discord create channel error"})
        return web.json_response({"success": True, "data": {"id": channel_id, "name": name}})

    async def _api_thread_create(self, request: web.Request) -> web.Response:
        await self._json_object(request)
        raise ApiError(501, {"success": False, "message": "thread creation is not emulated"})

    async def _api_del_all(self, request: web.Request) -> web.Response:
        """ChannelDelAllForCdp: every temporary channel, in use or not, one by one."""
        rid = REQUEST_ID.get()
        deleted = 0
        try:
            channels = await self.emu.client.request(
                "GET", f"/guilds/{self.emu.settings.guild_id}/channels"
            )
            for channel in channels:
                name = str(channel.get("name", ""))
                if name.startswith((CHANNEL_PREFIX, LEGACY_CHANNEL_PREFIX)):
                    await self.emu.client.request("DELETE", f"/channels/{channel['id']}")
                    deleted += 1
                    self.emu.stats.channels_deleted += 1
        except DiscordError as exc:  # stops at the first error
            self.emu.log("ERR", rid, f"delete channel error: {go_error_text(exc)}")
            return web.json_response(
                {"success": False, "message": "discord delete channel error", "deleted": deleted}
            )
        return web.json_response(
            {"success": True, "message": "discord delete channel success", "deleted": deleted}
        )


def _split(text: str, n: int) -> list[str]:
    """`text` in `n` consecutive pieces of near-equal length (some may be empty)."""
    size, extra = divmod(len(text), n)
    pieces, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces
