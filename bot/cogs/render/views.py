"""The buttons on render messages, and a result's two layouts.

A result is posted as a gallery (Discord's components V2, ``result_layout``): one card with
the subjects and prompt, the images as a media gallery, the facts, and the buttons: Reroll,
Variations, Delete, and Upscale / Vary (subtle) / Vary (strong) per image. The classic layout
(``result_embed`` + ``result_view``: an embed, attachments and rows of buttons) is the
operator's fallback, for clients that do not show components V2 (``AVATARBOT_RESULT_LAYOUT``).

Buttons are ``DynamicItem``s whose custom_id carries the job id (``avatarbot:reroll:42``): the
bot recognises them by pattern, so they keep working after a restart without any per-message
state in memory. Who may press what is checked by the services (owner only), not by hiding
buttons: everyone sees the same message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import discord

from bot.cogs.interactions import BotButton
from bot.services import likeness
from bot.services.prompts import STYLE_PRESETS
from bot.services.results import JobView, RefineKind
from kinds import LikenessScore

if TYPE_CHECKING:
    from bot.app import AvatarBot

logger = logging.getLogger(__name__)


class JobButton(
    BotButton,
    # The base is never registered; each subclass matches its own action only.
    template=r"avatarbot:(?P<action>[a-z]+):(?P<job>[0-9]+)",
):
    """A button bound to one job; subclasses set the template, the look and ``run``."""

    action: str = ""
    label: str = ""
    style: discord.ButtonStyle = discord.ButtonStyle.secondary
    emoji: str | None = None

    def __init__(self, job_id: int, index: int | None = None, row: int | None = None) -> None:
        """``index``: the image a button acts on (``ImageButton``), ``row`` where it shows
        (None when matched from a press: no layout then)."""
        suffix = "" if index is None else f":{index}"
        super().__init__(
            discord.ui.Button(
                label=self.label.format(index=index),
                style=self.style,
                emoji=self.emoji,
                custom_id=f"avatarbot:{self.action}:{job_id}{suffix}",
                row=row,
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> JobButton:
        index = match.groupdict().get("index")
        return cls(int(match["job"]), None if index is None else int(index))

    async def press(self, interaction: discord.Interaction[AvatarBot]) -> None:
        await self.run(interaction, interaction.client)

    async def run(self, interaction: discord.Interaction[AvatarBot], bot: AvatarBot) -> None:
        raise NotImplementedError


class Renderer(Protocol):
    """What the buttons need of the render cog (bot/cogs/render/cog.py), which imports this
    module: named by what it does, so this module does not import the cog back (a circle)."""

    async def again(
        self, interaction: discord.Interaction[AvatarBot], job_id: int, *, variations: bool
    ) -> None: ...

    async def refine(
        self, interaction: discord.Interaction[AvatarBot], job_id: int, index: int, kind: RefineKind
    ) -> None: ...


def _renderer(bot: AvatarBot) -> Renderer:
    cog = bot.get_cog("RenderCog")
    if cog is None:
        raise RuntimeError("the render cog is not loaded")
    # Not an isinstance check: discord.py re-imports an extension's modules when a bot loads it
    # again (a restart in tests), so the cog's class object may be a newer copy.
    return cast(Renderer, cog)


class RerollButton(JobButton, template=r"avatarbot:reroll:(?P<job>[0-9]+)"):
    action, label, emoji = "reroll", "Reroll", "🎲"
    style = discord.ButtonStyle.primary

    async def run(self, interaction: discord.Interaction[AvatarBot], bot: AvatarBot) -> None:
        await _renderer(bot).again(interaction, self.job_id, variations=False)


class VariationsButton(JobButton, template=r"avatarbot:vary:(?P<job>[0-9]+)"):
    action, label, emoji = "vary", "Variations", "🔀"

    async def run(self, interaction: discord.Interaction[AvatarBot], bot: AvatarBot) -> None:
        await _renderer(bot).again(interaction, self.job_id, variations=True)


class DeleteButton(JobButton, template=r"avatarbot:delete:(?P<job>[0-9]+)"):
    action, label, emoji = "delete", "Delete", "🗑️"
    style = discord.ButtonStyle.danger

    async def run(self, interaction: discord.Interaction[AvatarBot], bot: AvatarBot) -> None:
        # Acknowledge first (an update of this message: nothing visible yet).
        await interaction.response.defer()
        await bot.services.renders.delete(interaction.user.id, self.job_id)
        await interaction.delete_original_response()
        await interaction.followup.send("Deleted: the images and the prompt.", ephemeral=True)


class CancelButton(JobButton, template=r"avatarbot:cancel:(?P<job>[0-9]+)"):
    action, label, emoji = "cancel", "Cancel", "✖️"
    style = discord.ButtonStyle.danger

    async def run(self, interaction: discord.Interaction[AvatarBot], bot: AvatarBot) -> None:
        await interaction.response.defer()
        view = await bot.services.renders.cancel(interaction.user.id, self.job_id)
        await interaction.edit_original_response(content=cancelled_message(view), view=None)


class ImageButton(
    JobButton,
    # The base is never registered; each subclass matches its own action only.
    template=r"avatarbot:(?P<action>[a-z]+):(?P<job>[0-9]+):(?P<index>[0-9]+)",
):
    """A button bound to one posted image of a job (``avatarbot:upscale:42:2``, 1-based);
    subclasses set the template, the look (``label`` formatted with the index) and the
    refinement."""

    kind: RefineKind = "upscale"

    def __init__(self, job_id: int, index: int | None = None, row: int | None = None) -> None:
        if index is None:
            raise ValueError("an image button needs the image's index")
        super().__init__(job_id, index, row)
        self.index = index

    async def run(self, interaction: discord.Interaction[AvatarBot], bot: AvatarBot) -> None:
        await _renderer(bot).refine(interaction, self.job_id, self.index, self.kind)


class UpscaleButton(ImageButton, template=r"avatarbot:upscale:(?P<job>[0-9]+):(?P<index>[0-9]+)"):
    action, label, emoji, kind = "upscale", "Upscale {index}", "🔍", "upscale"


class VarySubtleButton(ImageButton, template=r"avatarbot:subtle:(?P<job>[0-9]+):(?P<index>[0-9]+)"):
    action, label, emoji, kind = "subtle", "Vary {index} (subtle)", "🌱", "vary_subtle"


class VaryStrongButton(ImageButton, template=r"avatarbot:strong:(?P<job>[0-9]+):(?P<index>[0-9]+)"):
    action, label, emoji, kind = "strong", "Vary {index} (strong)", "🌪️", "vary_strong"


def cancelled_message(job: JobView) -> str:
    """What the member is told after a cancel (see ``RenderService.cancel``'s refund rule)."""
    if job.started_at is None:
        return "Cancelled. Your render was refunded."
    return "Cancelled. It had already started, so it still counts against today's renders."


DYNAMIC_ITEMS: tuple[type[JobButton], ...] = (
    RerollButton,
    VariationsButton,
    DeleteButton,
    CancelButton,
    UpscaleButton,
    VarySubtleButton,
    VaryStrongButton,
)
# Rows of image buttons: the classic layout has Discord's five rows, the job's buttons in the
# first; a gallery message has room for more (40 components), but a render posts at most four.
MAX_IMAGE_ROWS = 4


@dataclass(frozen=True)
class PostedImage:
    """One image of a result as uploaded: its 1-based index among the job's images, the
    attachment's file name (a gallery refers to it) and whether it is shown as a spoiler."""

    index: int
    filename: str
    spoiler: bool = False


def _job_buttons(job_id: int, row: int | None) -> list[JobButton]:
    return [button(job_id, None, row) for button in (RerollButton, VariationsButton, DeleteButton)]


def _image_buttons(job_id: int, index: int, row: int | None) -> list[JobButton]:
    return [b(job_id, index, row) for b in (UpscaleButton, VarySubtleButton, VaryStrongButton)]


def result_view(job: JobView, images: Sequence[int] = ()) -> discord.ui.View:
    """The classic layout's buttons: the job's, and Upscale / Vary (subtle) / Vary (strong)
    for each of ``images`` (1-based: the posted ones), a row each."""
    view = discord.ui.View(timeout=None)
    for item in _job_buttons(job.id, 0):
        view.add_item(item)
    for row, index in enumerate(images[:MAX_IMAGE_ROWS], start=1):
        for item in _image_buttons(job.id, index, row):
            view.add_item(item)
    return view


def cancel_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_facts(job: JobView) -> list[tuple[str, str]]:
    """What a result says besides its prompt, as (name, value): both layouts show these."""
    settings = job.settings
    seeds = ", ".join(str(s) for s in job.seeds) or str(settings.seed)
    facts = [("Seed" if len(job.seeds) <= 1 else "Seeds", seeds[:1024])]
    style = STYLE_PRESETS.get(settings.style)
    if style is not None and settings.style != "none":
        facts.append(("Style", style.label))
    facts.append(("Size", f"{settings.width}×{settings.height}"))
    total = job.timings.get("total")
    if total is None and job.started_at and job.finished_at:
        total = (job.finished_at - job.started_at).total_seconds()
    if total is not None:
        facts.append(("Time", f"{total:.1f} s"))
    likeness = likeness_text(job.likeness)
    if likeness is not None:
        facts.append(("Likeness", likeness))
    return facts


def _subjects(job: JobView) -> str:
    names = job.avatar_names
    return f"{'Avatar' if len(names) == 1 else 'Avatars'}: {' + '.join(names)}"


def result_embed(job: JobView) -> discord.Embed:
    """The classic layout's embed (the images are the message's attachments)."""
    prompt = discord.utils.escape_markdown(job.prompt)
    embed = discord.Embed(description=prompt[:4000], colour=discord.Colour.blurple())
    embed.set_author(name=_subjects(job)[:256])
    for name, value in result_facts(job):
        embed.add_field(name=name, value=value)
    if job.settings.negative_prompt:
        negative = discord.utils.escape_markdown(job.settings.negative_prompt)
        embed.add_field(name="Negative prompt", value=negative[:1024], inline=False)
    embed.set_footer(text=f"render #{job.id}")
    return embed


def _shown(text: str, limit: int) -> str:
    """Member-written text inside a text display, where Discord parses markdown and mentions:
    both escaped (``allowed_mentions`` already stops pings; this stops the look of one)."""
    text = discord.utils.escape_mentions(discord.utils.escape_markdown(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _row(buttons: Sequence[JobButton]) -> discord.ui.ActionRow[discord.ui.LayoutView]:
    row = discord.ui.ActionRow[discord.ui.LayoutView]()
    for button in buttons:
        row.add_item(button)
    return row


def result_layout(job: JobView, images: Sequence[PostedImage]) -> discord.ui.LayoutView:
    """The gallery layout: the member's mention, then one card with the subjects and prompt,
    the images as a media gallery, the facts, the job's buttons and a row per image. At most
    27 components of Discord's 40 and well under its 4,000 characters of text."""
    if not 1 <= len(images) <= MAX_IMAGE_ROWS:
        raise ValueError(f"a result shows 1 to {MAX_IMAGE_ROWS} images, not {len(images)}")
    prompt = "\n".join(f"> {line}" for line in _shown(job.prompt, 1500).splitlines() or [""])
    facts = " · ".join(f"**{name}** {value}" for name, value in result_facts(job))
    if job.settings.negative_prompt:
        facts += f"\n**Negative prompt** {_shown(job.settings.negative_prompt, 500)}"
    gallery = discord.ui.MediaGallery[discord.ui.LayoutView](
        *(
            discord.MediaGalleryItem(
                f"attachment://{image.filename}",
                description=f"Image {image.index}",
                spoiler=image.spoiler,
            )
            for image in images
        )
    )
    card = discord.ui.Container[discord.ui.LayoutView](
        discord.ui.TextDisplay(f"**{_shown(_subjects(job), 300)}**\n{prompt}"),
        gallery,
        discord.ui.TextDisplay(facts),
        discord.ui.Separator(),
        _row(_job_buttons(job.id, None)),
        *(_row(_image_buttons(job.id, i.index, None)) for i in images),
        discord.ui.TextDisplay(f"-# render #{job.id}"),
        accent_colour=discord.Colour.blurple(),
    )
    view = discord.ui.LayoutView(timeout=None)
    view.add_item(discord.ui.TextDisplay(f"<@{job.user_id}>"))
    view.add_item(card)
    return view


def likeness_text(scores: Sequence[LikenessScore | None]) -> str | None:
    """Each image's likeness as members read it (``/avatar help`` explains), numbered when
    there are several; None when none was measured."""
    if not any(s is not None for s in scores):
        return None
    if len(scores) == 1:
        return likeness.label(scores[0])
    return " · ".join(f"{i}: {likeness.label(s)}" for i, s in enumerate(scores, start=1))[:1024]
