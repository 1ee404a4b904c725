"""The Coze bot persona: a user (`coze_bot_id`) that answers a message mentioning it
(`<@id>`) as Coze's Discord bot does for CDP: a reply referencing the prompt
(`message_reference`), streamed as MESSAGE_UPDATE edits of the whole message, finished
by a message carrying components (Coze's Auto-Suggestion buttons) or, when
`coze_components_as_edit`, by a last edit carrying them. `CozeFaults` delay it, silence
it or make it answer with an error."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from monitor.sim.discord.models import Channel, Message

if TYPE_CHECKING:
    from monitor.sim.discord.simulator import DiscordSimulator

EDIT_INTERVAL_S = 0.02  # between streamed edits
ERROR_TEXT = "Something went wrong, please try again later."


def suggestion_buttons(n: int = 3) -> list[dict[str, Any]]:
    """An action row of Auto-Suggestion buttons, as Coze attaches them."""
    buttons = [
        {"type": 2, "style": 2, "label": f"Suggestion {i + 1}", "custom_id": f"suggest-{i}"}
        for i in range(n)
    ]
    return [{"type": 1, "components": buttons}]


class CozePersona:
    """Answers mentions of `coze_bot_id` in the background; `stop` cancels what runs."""

    def __init__(self, sim: DiscordSimulator) -> None:
        self.sim = sim
        self._tasks: set[asyncio.Task[None]] = set()

    def heard(self, channel: Channel, msg: Message) -> None:
        me = self.sim.settings.coze_bot_id
        if msg.author_id == me or f"<@{me}>" not in msg.content.replace("<@!", "<@"):
            return
        if self.sim.state.coze_faults.silence:
            return
        task = asyncio.get_running_loop().create_task(self._answer(channel, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _answer(self, channel: Channel, prompt: Message) -> None:
        sim, settings = self.sim, self.sim.settings
        faults = sim.state.coze_faults
        if faults.delay_ms:
            await asyncio.sleep(faults.delay_ms / 1000.0)
        text = ERROR_TEXT if faults.error else _answer_text(prompt, settings.coze_reply_length)
        steps = max(1, settings.coze_edits)
        cut = [len(text) * (i + 1) // (steps + 1) for i in range(steps + 1)]
        reply = sim.add_message(
            channel,
            text[: max(1, cut[0])],
            author="Coze",
            author_id=settings.coze_bot_id,
            reference=prompt.id,
        )
        for end in cut[1:]:
            await asyncio.sleep(EDIT_INTERVAL_S)
            if channel.id not in sim.state.channels:
                return  # the channel was deleted under it
            reply.content = text[:end]
            last = end == cut[-1]
            if last and settings.coze_components_as_edit:
                reply.components = suggestion_buttons()
            sim.edit_message(channel, reply)
        if not settings.coze_components_as_edit and channel.id in sim.state.channels:
            sim.add_message(
                channel,
                "",
                author="Coze",
                author_id=settings.coze_bot_id,
                reference=prompt.id,
                components=suggestion_buttons(),
            )


def _answer_text(prompt: Message, length: int) -> str:
    seed = f"Answer to {prompt.id}: " + "lorem ipsum dolor sit amet " * (length // 27 + 1)
    return seed[: max(1, length)]
