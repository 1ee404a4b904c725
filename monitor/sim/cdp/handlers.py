"""The CDP emulator's OpenAI endpoints (controller/chat.go): chat completions, plain or
streamed, image generations, models. The checks run in CDP's order (decode, user
tokens, bot selection), then the channel (the given `channelId`, the default channel
or a new `cdp-chat-<requestId>`), then the prompt and Coze's reply; the delete timer of
a new channel is set as the handler returns (a `defer`), after a blocking GET."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.sim.cdp.conversation import Reply, SendError
from monitor.sim.cdp.decode import DecodeError, decode
from monitor.sim.cdp.discordgo import GoError
from monitor.sim.cdp.settings import (
    COZE_ERROR_TEXT,
    COZE_USER_DAILY_LIMIT_TEXT,
    CREATE_FAILED,
    DEFAULT_AUTO_DELETE,
    MODELS,
    REQUEST_OUT_TIME,
    ApiError,
    api_failure,
    go_json,
    request_error,
)
from monitor.vocab import CHANNEL_PREFIX

if TYPE_CHECKING:
    from monitor.sim.cdp.emulator import CdpEmulator

# The current request's id, set by the middleware.
REQUEST_ID: ContextVar[str] = ContextVar("cdp_request_id")
CHAT_FIELDS = {"model": "string", "stream": "bool", "messages": "messages", "channelId": "string"}
IMAGE_FIELDS = {"model": "string", "prompt": "string", "channelId": "string"}
IMAGE_PROMPT = (  # common.ImgGeneratePrompt
    "Please adhere strictly to my instructions below for the drawing task. If I do not "
    "provide a specific directive for drawing, create an image that corresponds to the "
    "text I have provided:\\n"
)
JSON_TYPE = "application/json; charset=utf-8"


def json_response(body: Any, status: int = 200) -> web.Response:
    """gin's c.JSON: encoding/json bytes, `application/json; charset=utf-8`."""
    return web.Response(body=go_json(body), status=status, headers={"Content-Type": JSON_TYPE})


def tokens(text: str) -> int:
    return (len(text) + 3) // 4  # tiktoken's count, approximately


class OpenAiHandlers:
    def __init__(self, emu: CdpEmulator) -> None:
        self.emu = emu

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v1/chat/completions", self.chat)
        r.add_post("/v1/images/generations", self.images)
        r.add_get("/v1/models", self.models)

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model"} for m in MODELS]
        return json_response({"object": "list", "data": data})

    async def _decode(self, request: web.Request, struct: str, fields: dict[str, str]) -> Any:
        try:
            return decode(await request.read(), struct, fields)
        except DecodeError as exc:
            self.emu.log("ERR", REQUEST_ID.get(), str(exc))
            raise request_error("Invalid request parameters") from None

    def _check_user_auths(self, rid: str) -> None:
        if not self.emu.process.conversation.user_auths:
            self.emu.log("ERR", rid, "无可用的 user_auth")
            raise request_error("no_available_user_auth")

    async def _send_channel(
        self, request: web.Request, body: dict[str, Any], failed: str
    ) -> tuple[str, bool]:
        """getSendChannelIdAndCozeBotId: the channel and whether it is new."""
        rid, emu = REQUEST_ID.get(), self.emu
        bot_models = emu.bot_models
        if bot_models is not None and body.get("model", "") not in bot_models | {""}:
            # auth.go:45-47 blanked Authorization when no PROXY_SECRET is set
            header = request.headers.get("Authorization", "") if emu.settings.secrets else ""
            secret = header.replace("Bearer ", "", 1)
            emu.log(
                "ERR", rid, f"[proxy-secret:{secret}]+[model:{body.get('model')}]未匹配到有效bot"
            )
            raise request_error("model_not_found")
        if bot_models is None and not emu.coze_bot_id:
            emu.log("ERR", rid, "no_available_bot")
            raise request_error("no_available_bot")
        if body.get("channelId"):
            return str(body["channelId"]), False
        if emu.settings.default_channel:
            return emu.channel_id, False
        try:
            name = f"{CHANNEL_PREFIX}{rid}"
            return await emu.process.channels.create_with_retry(rid, name), True
        except GoError as exc:
            if bot_models is not None:  # chat.go:686 logs it too with bot_config.json
                emu.log("ERR", rid, str(exc))
            emu.log("ERR", rid, str(exc))
            raise request_error(failed) from None

    async def _set_timer(self, channel_id: str) -> None:
        """The deferred CHANNEL_AUTO_DEL_TIME handling (chat.go:191-206)."""
        channels = self.emu.process.channels
        auto = self.emu.settings.auto_delete
        if auto is None:
            await channels.set_delete_timer(channel_id, DEFAULT_AUTO_DELETE)
        elif auto == 0:
            channels.cancel_delete_timer(channel_id)
        elif auto > 0:
            await channels.set_delete_timer(channel_id, auto)

    def _out_time(self, request: web.Request, stream: bool) -> float:
        """setTimerWithHeader: the `out-time` header, else the env, else 5 min."""
        settings = self.emu.settings
        header = request.headers.get("out-time", "")
        env = settings.stream_request_out_time if stream else settings.request_out_time
        try:
            seconds = float(int(header)) if header else env
        except ValueError:
            seconds = float("nan")
        if seconds is not None and seconds != seconds:  # NaN: did not parse
            self.emu.log(
                "ERR", REQUEST_ID.get(), f'strconv.ParseInt: parsing "{header}": invalid syntax'
            )
            raise api_failure("超时时间设置异常", 400)
        return settings.scaled(REQUEST_OUT_TIME if seconds is None else seconds)

    # -- chat --------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        rid, proc = REQUEST_ID.get(), self.emu.process
        body = await self._decode(request, "OpenAIChatCompletionRequest", CHAT_FIELDS)
        self._check_user_auths(rid)
        channel_id, is_new = await self._send_channel(request, body, CREATE_FAILED)
        try:
            content = _dialog(body.get("messages"))
            return await self._converse(request, rid, channel_id, content, body)
        finally:
            if is_new and self.emu.is_current(proc):  # a killed process runs no defer
                await self._set_timer(channel_id)

    async def _converse(
        self, request: web.Request, rid: str, channel_id: str, content: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        conversation = self.emu.process.conversation
        try:
            prompt_id, auth = await conversation.send(rid, channel_id, content)
        except SendError as exc:
            raise request_error(str(exc)) from None
        stream = bool(body.get("stream"))
        timeout = self._out_time(request, stream)
        model = str(body.get("model") or "")
        replies = conversation.replies(channel_id, prompt_id, content, image=False)
        if stream:
            return await self._stream(request, rid, replies, timeout, model, content, auth)
        last: dict[str, Any] = _empty_completion()
        async for reply in _until(replies, timeout, reset=False):
            if self._coze_error(rid, reply, auth):
                raise request_error(reply.content)
            last = _completion(reply, model, content, chunk=False, delta="")
            if reply.suggestions is not None:
                break
        return json_response(last)

    def _coze_error(self, rid: str, reply: Reply, auth: str) -> bool:
        if reply.content == COZE_USER_DAILY_LIMIT_TEXT:
            self.emu.log("WARN", rid, f"USER_AUTHORIZATION:{auth} DAILY LIMIT")
            conversation = self.emu.process.conversation
            conversation.user_auths = [a for a in conversation.user_auths if a != auth]
            return True
        return reply.content == COZE_ERROR_TEXT

    async def _stream(
        self,
        request: web.Request,
        rid: str,
        replies: AsyncIterator[Reply],
        timeout: float,
        model: str,
        prompt: str,
        auth: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        response.headers["X-Request-Id"] = rid
        sent = ""
        async for reply in _until(replies, timeout, reset=True):
            if not reply.content.startswith(sent):
                continue
            delta = reply.content[len(sent) :]
            sent += delta
            chunk = _completion(reply, model, prompt, chunk=True, delta=delta)
            await _sse(request, response, b" " + go_json(chunk))
            if self._coze_error(rid, reply, auth) or reply.suggestions is not None:
                break
        await _sse(request, response, b" [DONE]")
        return response

    # -- images ------------------------------------------------------------------------

    async def images(self, request: web.Request) -> web.Response:
        rid, proc = REQUEST_ID.get(), self.emu.process
        body = await self._decode(request, "OpenAIImagesGenerationRequest", IMAGE_FIELDS)
        self._check_user_auths(rid)
        channel_id, is_new = await self._send_channel(request, body, "config error")
        try:
            prompt = IMAGE_PROMPT + str(body.get("prompt") or "")
            conversation = self.emu.process.conversation
            try:
                prompt_id, _ = await conversation.send(rid, channel_id, prompt)
            except SendError as exc:
                raise request_error(str(exc)) from None
            timeout = self._out_time(request, False)
            replies = conversation.replies(channel_id, prompt_id, prompt, image=True)
            async for reply in _until(replies, timeout, reset=False):
                if reply.suggestions is not None and "](" in reply.content:
                    url = reply.content.split("](", 1)[1].rstrip(")")
                    data = [{"url": url, "revised_prompt": reply.content, "b64_json": ""}]
                    created = int(time.time())
                    return json_response(
                        {
                            "created": created,
                            "dailyLimit": False,
                            "data": data,
                            "suggestions": reply.suggestions,
                        }
                    )
            raise request_error("Failed to fetch image URL, please try again later.")
        finally:
            if is_new and self.emu.is_current(proc):  # a killed process runs no defer
                await self._set_timer(channel_id)


def _dialog(messages: list[Any] | None) -> str:
    """ALL_DIALOG_RECORD_ENABLE (default on): the whole dialog, as JSON, is the prompt."""
    out = []
    for message in messages or []:
        message = message or {}
        role = next((v for k, v in message.items() if k.lower() == "role"), None) or ""
        content = next((v for k, v in message.items() if k.lower() == "content"), None)
        if role == "user" and not isinstance(content, str | list):
            raise request_error("Message format error")
        if role == "user" and isinstance(content, list):
            content = "\n".join(
                str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
            )
        out.append({"role": role, "content": content})
    if messages is None:
        return "null"
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def _empty_completion() -> dict[str, Any]:
    """The zero OpenAIChatCompletionResponse a timed-out request answers with."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": None,
        "usage": usage,
        "system_fingerprint": None,
        "suggestions": None,
    }


def _completion(
    reply: Reply, model: str, prompt: str, *, chunk: bool, delta: str
) -> dict[str, Any]:
    """processMessage*ForOpenAI's answer: Discord's message id, both message and delta."""
    p, c = tokens(prompt), tokens(reply.content)
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": reply.content},
        "logprobs": None,
        "finish_reason": "stop" if reply.suggestions is not None else None,
        "delta": {"content": delta},
    }
    return {
        "id": reply.message_id,
        "object": "chat.completion.chunk" if chunk else "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        "system_fingerprint": None,
        "suggestions": reply.suggestions,
    }


async def _until(
    replies: AsyncIterator[Reply], timeout: float, *, reset: bool
) -> AsyncIterator[Reply]:
    """Replies until the REQUEST_OUT_TIME timer fires (reset by each one when `reset`)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    iterator = replies.__aiter__()
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:
            reply = await asyncio.wait_for(iterator.__anext__(), remaining)
        except TimeoutError:
            return
        except StopAsyncIteration:  # the stop signal
            return
        yield reply
        if reset:
            deadline = loop.time() + timeout


async def _sse(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    """gin's c.SSEvent("", data): the headers go with the first event."""
    if not response.prepared:
        await response.prepare(request)
    await response.write(b"data:" + data + b"\n\n")


__all__ = ["REQUEST_ID", "ApiError", "OpenAiHandlers", "json_response"]
