"""The offline demo: the real bot (``create_bot``, real discord.py) on SimCord, an in-memory
Discord, with the ``tiny`` engine. No token, no GPU, no network.

A scripted session — create an avatar from the sample photos, render, reroll, cancel a queued
render, delete a result — is recorded step by step; the images and an HTML transcript of the
conversation are written to a folder. With a profile whose personalizer shows two subjects
(``tiny-flux2``) it also creates a second avatar and renders both in one picture.
``interactive=True`` then opens SimCord's local browser preview of the same channel, where a
newcomer can run the commands and press the buttons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import discord

from bot.app import create_bot
from bot.config import Settings
from bot.ui.transcript import Shown, Step, write_transcript

logger = logging.getLogger(__name__)

SAMPLES = ("person-1.jpg", "person-2.jpg", "cat-1.jpg")
# Profiles the demo runs: random weights built from configs, offline on a CPU in seconds.
DEMO_PROFILES = ("tiny", "tiny-flux2")
TWO_SUBJECTS_PROMPT = "the person from image 1 and the cat from image 2 on a beach"
SETTLE_SECONDS = 300.0  # a tiny render on a slow, busy machine; a hang still ends the demo

Say = Callable[[str], None]


@dataclass
class DemoReport:
    out_dir: Path
    transcript: Path
    images: list[Path] = field(default_factory=list)
    steps: int = 0
    preview_url: str | None = None


def demo_settings(base: Settings, workdir: Path, profile: str = "tiny") -> Settings:
    """The user's settings, pointed at a throwaway database and a tiny engine (``profile``),
    offline."""
    engine = base.engine.model_copy(
        update={"profile": profile, "offline": True, "default_steps": None}
    )
    return base.model_copy(
        update={
            "data_dir": workdir,
            "database_url": f"sqlite+aiosqlite:///{workdir / 'demo.db'}",
            "engine": engine,
            "run_worker": True,
            "shard_count": None,
        }
    )


def sample_photos(names: tuple[str, ...] = SAMPLES) -> list[tuple[str, bytes]]:
    folder = files("bot") / "assets" / "samples"
    return [(name, (folder / name).read_bytes()) for name in names]


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """The tiny models are too small to gain from intra-op threads, and on a small shared CPU
    torch's default pool oversubscribes it (a tiny render: 0.5 s with one thread, 5–20 s
    without, measured here). Restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# Warnings every demo run logs that are no failure, shown at INFO while it runs (issue 24:
# they read like failures): SimCord's connection state has no guilds intent, discord.py has
# no voice libraries (the bot never speaks), and the bot starts in no guild, so it purges
# nothing. Logger -> a fragment of the message.
EXPECTED_WARNINGS = {
    "discord.state": "Guilds intent seems to be disabled",
    "discord.client": "voice will NOT be supported",
    "bot.services.privacy": "the bot sees no guild",
}


class _AtInfo(logging.Filter):
    """Logs its logger's warnings that contain ``fragment`` at INFO (dropped when INFO is
    off for that logger)."""

    def __init__(self, logger: logging.Logger, fragment: str) -> None:
        super().__init__()
        self.logger = logger
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or self.fragment not in record.getMessage():
            return True
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return self.logger.isEnabledFor(logging.INFO)


@contextlib.contextmanager
def _expected_warnings_at_info() -> Iterator[None]:
    filters = []
    for name, fragment in EXPECTED_WARNINGS.items():
        target = logging.getLogger(name)
        filters.append((target, _AtInfo(target, fragment)))
        target.addFilter(filters[-1][1])
    try:
        yield
    finally:
        for target, at_info in filters:
            target.removeFilter(at_info)


class _Recorder:
    """Turns what the bot answered into transcript entries and saved images."""

    def __init__(self, env: Any, out_dir: Path, member: Any) -> None:
        self.env = env
        self.out_dir = out_dir
        self.member = member
        self.steps: list[Step] = []
        self.images: list[Path] = []
        self._http_seen = 0
        self._channel_seen: set[int] = set()

    def begin(self, title: str, action: str) -> Step:
        step = Step(title=title, action=action)
        self.steps.append(step)
        self._http_seen = len(self.env.http_requests)
        return step

    def seen_now(self, channel: Any) -> None:
        """Everything in the channel so far is old news for the next step."""
        self._channel_seen.update(m.id for m in channel.history(viewer=self.member))

    def progress_edits(self) -> list[str]:
        """Contents of the interaction-message edits since the step began (progress)."""
        out = []
        for entry in self.env.http_requests[self._http_seen :]:
            if entry.method == "PATCH" and entry.path.startswith("/webhooks/") and entry.json:
                content = entry.json.get("content")
                if content:
                    out.append(content)
        return out

    async def shown(self, message: Any, *, ephemeral: bool, note: str = "") -> Shown:
        """One message as the member saw it; its images are saved next to the transcript."""
        images = []
        for attachment in getattr(message, "attachments", []):
            name = f"step{len(self.steps)}-{len(self.images) + 1}-{attachment.filename}"
            path = self.out_dir / "images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(await attachment.read())
            self.images.append(path)
            images.append(f"images/{name}")
        # Components as Discord's payload dicts, nested ones (a V2 card's rows) included.
        pending = [
            c if isinstance(c, dict) else c.to_dict()
            for c in getattr(message, "components", []) or []
        ]
        buttons, texts = [], []
        while pending:
            component = pending.pop(0)
            if component["type"] == discord.ComponentType.button.value:
                buttons.append(component.get("label"))
            elif component["type"] == discord.ComponentType.text_display.value:
                texts.append(component["content"])
            pending[:0] = component.get("components", [])
        embeds = [embed.to_dict() for embed in getattr(message, "embeds", [])]
        return Shown(
            # A components V2 message has no content: its text is in its text displays.
            content=getattr(message, "content", "") or "\n".join(texts),
            ephemeral=ephemeral,
            embeds=embeds,
            images=images,
            buttons=[b for b in buttons if b],
            note=note,
        )

    async def new_channel_messages(self, channel: Any) -> list[Shown]:
        """Public messages posted since the step began (ephemeral ones are recorded from the
        interaction results)."""
        out = []
        for message in channel.history(viewer=self.member):
            if message.id in self._channel_seen or message.flags.ephemeral:
                continue
            self._channel_seen.add(message.id)
            out.append(await self.shown(message, ephemeral=False))
        return out


async def run_demo(
    settings: Settings,
    out_dir: Path,
    *,
    interactive: bool = False,
    minutes: float = 30.0,
    port: int | None = None,
    say: Say = logger.info,
    profile: str = "tiny",
) -> DemoReport:
    """Run the scripted session, write the transcript, optionally open the browser preview.
    ``profile``: one of ``DEMO_PROFILES``."""
    if profile not in DEMO_PROFILES:
        raise RuntimeError(f"the demo runs {' or '.join(DEMO_PROFILES)}, not {profile}")
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="avatarbot-demo-") as tmp,
        _one_torch_thread(),
        _expected_warnings_at_info(),
    ):
        import simcord  # its import builds a probe client, which warns as the bot's does

        bot = create_bot(demo_settings(settings, Path(tmp), profile))
        say(f"Starting the bot on SimCord (an in-memory Discord) with the {profile} engine…")
        try:
            async with simcord.run(bot, settle_timeout=SETTLE_SECONDS) as env:
                guild = env.create_guild(name="avatarbot demo")
                channel = guild.create_text_channel("renders")
                member = guild.add_member(env.create_user("you"))
                guild.add_member(env.create_user("a-friend"))
                recorder = _Recorder(env, out_dir, member)
                recorder.seen_now(channel)
                await _script(bot, channel, member, recorder, say)
                transcript = write_transcript(
                    out_dir / "transcript.html", recorder.steps, env.transcript()
                )
                report = DemoReport(out_dir, transcript, recorder.images, len(recorder.steps))
                say(f"Wrote {len(recorder.images)} images and {transcript}")
                if interactive:
                    await _preview(env, channel, member, minutes, port, report, say)
        finally:
            if not bot.is_closed():
                await bot.close()
    return report


async def _two_subjects(bot: Any) -> bool:
    """Whether the bot's engine renders two avatars in one picture."""
    facts = await bot.services.workers.current_facts()
    return bool(facts.subjects_for(facts.default_personalizer) >= 2)


async def _script(bot: Any, channel: Any, member: Any, rec: _Recorder, say: Say) -> None:
    together = await _two_subjects(bot)
    total = 9 if together else 7
    done = 0

    def announce(text: str) -> None:
        nonlocal done
        done += 1
        say(f"{done}/{total} {text}")

    step = rec.begin("Help", "/avatar help")
    announce("/avatar help")
    result = await member.slash(channel, "avatar help")
    step.shown.append(await rec.shown(result.response, ephemeral=True))

    step = rec.begin(
        "Create an avatar from three photos",
        "/avatar create → name: Me, kind: person, photos: person-1.jpg, person-2.jpg, "
        "cat-1.jpg, consent ✓",
    )
    announce("/avatar create (the form, with the sample photos)")
    form = await member.slash(channel, "avatar create")
    result = await member.submit_modal(
        form,
        {"name": "Me", "kind": ["person"], "photos": sample_photos(), "consent": ["accepted"]},
    )
    step.shown.append(await rec.shown(result.response, ephemeral=True))

    step = rec.begin(
        "Render",
        "/avatar render avatar: Me, prompt: as an astronaut on the moon, style: Photo, "
        "count: 2, seed: 42",
    )
    announce("/avatar render")
    result = await member.slash(
        channel,
        "avatar render",
        avatar="Me",
        prompt="as an astronaut on the moon",
        style="photo",
        count=2,
        seed=42,
    )
    step.progress = rec.progress_edits()
    step.shown.append(await rec.shown(result.response, ephemeral=True))
    step.shown += await rec.new_channel_messages(channel)
    posted = result.followups[-1] if result.followups else None

    step = rec.begin("Reroll", "pressed 🎲 Reroll under the result")
    announce("Reroll")
    rerolled = None
    if posted is not None:
        clicked = await member.click(posted, label="Reroll")
        step.progress = rec.progress_edits()
        step.shown.append(await rec.shown(clicked.response, ephemeral=True))
        step.shown += await rec.new_channel_messages(channel)
        rerolled = clicked.followups[-1] if clicked.followups else None

    if together:
        await _render_together(channel, member, rec, announce)

    step = rec.begin(
        "Cancel a queued render",
        "/avatar render prompt: as a knight in shining armour — then ✖️ Cancel while it waits "
        "(the demo pauses the worker so the render stays in line)",
    )
    announce("Cancel a queued render")
    bot.services.dispatcher.pause()
    try:
        result = await member.slash(
            channel, "avatar render", avatar="Me", prompt="as a knight in shining armour"
        )
        step.shown.append(await rec.shown(result.response, ephemeral=True, note="before"))
        await member.click(result.response, label="Cancel")
        step.shown.append(await rec.shown(result.response, ephemeral=True, note="after Cancel"))
    finally:
        bot.services.dispatcher.resume()

    step = rec.begin("Delete a result", "pressed 🗑️ Delete under the rerolled result")
    announce("Delete")
    if rerolled is not None:
        clicked = await member.click(rerolled, label="Delete")
        gone = all(m.id != rerolled.id for m in channel.history(viewer=member))
        for message in clicked.followups:
            step.shown.append(
                await rec.shown(
                    message, ephemeral=True, note="the result message is gone" if gone else ""
                )
            )

    step = rec.begin("Usage", "/avatar usage")
    announce("/avatar usage")
    result = await member.slash(channel, "avatar usage")
    step.shown.append(await rec.shown(result.response, ephemeral=True))


async def _render_together(channel: Any, member: Any, rec: _Recorder, announce: Say) -> None:
    """A second avatar (the cat), then one picture of both avatars."""
    step = rec.begin(
        "Create a second avatar",
        "/avatar create → name: Cat, kind: pet, photos: cat-1.jpg, consent ✓",
    )
    announce("/avatar create (a second avatar: the cat)")
    form = await member.slash(channel, "avatar create")
    result = await member.submit_modal(
        form,
        {
            "name": "Cat",
            "kind": ["pet"],
            "photos": sample_photos(("cat-1.jpg",)),
            "consent": ["accepted"],
        },
    )
    step.shown.append(await rec.shown(result.response, ephemeral=True))

    step = rec.begin(
        "Two avatars in one picture",
        f"/avatar render avatar: Me, with: Cat, prompt: {TWO_SUBJECTS_PROMPT}, seed: 7",
    )
    announce("/avatar render with: Cat (two avatars in one picture)")
    result = await member.slash(
        channel, "avatar render", avatar="Me", prompt=TWO_SUBJECTS_PROMPT, seed=7, **{"with": "Cat"}
    )
    step.progress = rec.progress_edits()
    step.shown.append(await rec.shown(result.response, ephemeral=True))
    step.shown += await rec.new_channel_messages(channel)


async def _preview(
    env: Any,
    channel: Any,
    member: Any,
    minutes: float,
    port: int | None,
    report: DemoReport,
    say: Say,
) -> None:
    try:
        preview = env.preview(channel, viewers=[member], layout="channel", port=port)
    except Exception as exc:  # the preview extra is missing or broken
        raise RuntimeError(
            f"the browser preview is unavailable ({exc}); install it with "
            "`pip install 'avatarbot[demo]'` (it pulls simcord[preview])"
        ) from exc
    async with preview:
        report.preview_url = preview.url
        say(
            f"Open {preview.url} in a browser on this machine (the address is a secret). "
            f"Type / in the composer to run commands. Closes after {minutes:g} minutes, "
            "with “End preview session”, or Ctrl-C."
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(preview.wait_closed(), timeout=minutes * 60)
