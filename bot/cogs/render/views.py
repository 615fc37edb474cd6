"""The buttons on render messages and the embed of a result.

Buttons are ``DynamicItem``s whose custom_id carries the job id (``avatarbot:reroll:42``): the
bot recognises them by pattern, so they keep working after a restart without any per-message
state in memory. Who may press what is checked by the services (owner only), not by hiding
buttons: everyone sees the same message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import discord

from bot.cogs.interactions import is_avatarbot
from bot.services import likeness
from bot.services.prompts import STYLE_PRESETS
from bot.services.results import JobView, RefineKind
from bot.ui.errors import report_error
from kinds import LikenessScore

if TYPE_CHECKING:
    from bot.app import AvatarBot

logger = logging.getLogger(__name__)


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
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

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            if not is_avatarbot(interaction):
                raise RuntimeError("a render button reached a client that is not avatarbot's bot")
            await self.run(interaction, interaction.client)
        except Exception as exc:
            await report_error(interaction, exc)

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
# Discord's rows of components after the job's buttons (row 0): one per posted image.
MAX_ROW = 4


def result_view(job: JobView, images: Sequence[int] = ()) -> discord.ui.View:
    """The job's buttons, and Upscale / Vary (subtle) / Vary (strong) for each of ``images``
    (1-based: the posted ones; at most four rows of them)."""
    view = discord.ui.View(timeout=None)
    for button in (RerollButton, VariationsButton, DeleteButton):
        view.add_item(button(job.id))
    for row, index in enumerate(images[:MAX_ROW], start=1):
        for image_button in (UpscaleButton, VarySubtleButton, VaryStrongButton):
            view.add_item(image_button(job.id, index, row))
    return view


def cancel_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_embed(job: JobView) -> discord.Embed:
    prompt = discord.utils.escape_markdown(job.prompt)
    embed = discord.Embed(description=prompt[:4000], colour=discord.Colour.blurple())
    names = job.avatar_names
    label = "Avatar" if len(names) == 1 else "Avatars"
    embed.set_author(name=f"{label}: {' + '.join(names)}"[:256])
    settings = job.settings
    seeds = ", ".join(str(s) for s in job.seeds) or str(settings.seed)
    embed.add_field(name="Seed" if len(job.seeds) <= 1 else "Seeds", value=seeds[:1024])
    style = STYLE_PRESETS.get(settings.style)
    if style is not None and settings.style != "none":
        embed.add_field(name="Style", value=style.label)
    embed.add_field(name="Size", value=f"{settings.width}×{settings.height}")
    total = job.timings.get("total")
    if total is None and job.started_at and job.finished_at:
        total = (job.finished_at - job.started_at).total_seconds()
    if total is not None:
        embed.add_field(name="Time", value=f"{total:.1f} s")
    likeness = likeness_text(job.likeness)
    if likeness is not None:
        embed.add_field(name="Likeness", value=likeness)
    if settings.negative_prompt:
        negative = discord.utils.escape_markdown(settings.negative_prompt)
        embed.add_field(name="Negative prompt", value=negative[:1024], inline=False)
    embed.set_footer(text=f"render #{job.id}")
    return embed


def likeness_text(scores: Sequence[LikenessScore | None]) -> str | None:
    """Each image's likeness as members read it (``/avatar help`` explains), numbered when
    there are several; None when none was measured."""
    if not any(s is not None for s in scores):
        return None
    if len(scores) == 1:
        return likeness.label(scores[0])
    return " · ".join(f"{i}: {likeness.label(s)}" for i, s in enumerate(scores, start=1))[:1024]
