"""CDP's /api group (controller/channel.go, controller/thread.go), absent with
ONLY_OPENAI_API=1: every answer is HTTP 200, failures `success:false`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.sim.cdp.decode import DecodeError, decode
from monitor.sim.cdp.discordgo import GoError
from monitor.sim.cdp.handlers import REQUEST_ID, json_response

if TYPE_CHECKING:
    from monitor.sim.cdp.emulator import CdpEmulator

ARCHIVE_DURATIONS = (60, 1440, 4320, 10080)


def _result(ok: bool, ok_text: str, bad_text: str) -> web.Response:
    return json_response({"message": ok_text if ok else bad_text, "success": ok})


class ApiHandlers:
    def __init__(self, emu: CdpEmulator) -> None:
        self.emu = emu

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/api/channel/create", self.channel_create)
        r.add_get("/api/channel/del/all/cdp", self.del_all)
        r.add_get("/api/channel/del/{id}", self.channel_del)
        r.add_post("/api/thread/create", self.thread_create)

    async def _decode(self, request: web.Request, struct: str, fields: dict[str, str]) -> Any:
        try:
            return decode(await request.read(), struct, fields)
        except DecodeError:
            return None

    async def channel_create(self, request: web.Request) -> web.Response:
        """A client-named channel: no timer, no retry wrapper."""
        body = await self._decode(
            request, "ChannelReq", {"parentId": "string", "type": "int", "name": "string"}
        )
        if body is None:
            return _result(False, "", "无效的参数")
        name, parent = str(body.get("name") or ""), str(body.get("parentId") or "")
        channels = self.emu.process.channels
        try:
            channel_id = await channels.create(name, parent, int(body.get("type") or 0))
        except GoError as exc:
            if parent:  # ChannelCreateComplex logs first, with no request id
                self.emu.log("ERR", None, f"创建子频道时异常 {exc}")
            self.emu.log("ERR", REQUEST_ID.get(), f"创建频道时异常 {exc}")
            return _result(False, "", "discord创建频道异常")
        return json_response({"data": {"id": channel_id, "name": name}, "success": True})

    async def channel_del(self, request: web.Request) -> web.Response:
        ok = await self.emu.process.channels.delete(request.match_info["id"])
        return _result(ok, "discord删除频道成功", "discord删除频道异常")

    async def del_all(self, request: web.Request) -> web.Response:
        """ChannelDelAllForCdp: every `cdp-chat-` channel, in use or not, one at a time."""
        try:
            await self.emu.process.channels.delete_all_cdp(REQUEST_ID.get())
        except GoError:
            return _result(False, "", "discord删除频道异常")
        return _result(True, "discord删除频道成功", "")

    async def thread_create(self, request: web.Request) -> web.Response:
        """Session.ThreadStart(channelId, name, GuildText, archiveDuration): a thread."""
        body = await self._decode(
            request,
            "ThreadReq",
            {"channelId": "string", "name": "string", "archiveDuration": "int"},
        )
        if body is None:
            return _result(False, "", "无效的参数")
        duration = body.get("archiveDuration") or 0
        if duration not in ARCHIVE_DURATIONS:
            return _result(False, "", "线程创建时间只可为[60,1440,4320,10080]")
        name = str(body.get("name") or "")
        data = {"name": name, "type": 0, "auto_archive_duration": duration}
        try:
            thread = await self.emu.process.client.request(
                "POST", f"/channels/{body.get('channelId') or ''}/threads", data
            )
        except GoError as exc:
            self.emu.log("ERR", None, f"创建线程时异常 {exc}")
            return _result(False, "", "discord创建线程异常")
        return json_response({"data": {"id": str(thread["id"]), "name": name}, "success": True})
