"""``/avatar render`` and the Reroll/Variations buttons: queue a job, show its place in line.

The command joins the ``/avatar`` group owned by the avatars cog (one group, two features):
it is a plain ``app_commands.Command`` added to that group when this cog loads (the package's
``setup`` loads the avatars feature first when it is not loaded yet). What happens
after the job is queued — progress, the result, notices — is ``RenderMessages``' work
(progress.py), driven by job events through the bot's job feed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.avatars.cog import avatar_name_autocomplete
from bot.cogs.place import place_of
from bot.errors import InvalidInput
from bot.services.prompts import MAX_PROMPT_CHARS, STYLE_PRESETS
from bot.services.renders import MembershipCheck
from bot.services.results import (
    Aspect,
    InteractionRef,
    JobTicket,
    RefineKind,
    RenderOptions,
)
from bot.ui.webhooks import interaction_ref
from engine.types import MAX_SEED

from .friends import ask_friend, friend_avatar_autocomplete, member_check, requests_command
from .progress import RenderMessages

if TYPE_CHECKING:
    from bot.app import AvatarBot

logger = logging.getLogger(__name__)

STYLE_CHOICES = [
    app_commands.Choice(name=preset.label, value=key) for key, preset in STYLE_PRESETS.items()
][:25]
ASPECT_NAMES: dict[Aspect, str] = {
    "square": "Square",
    "portrait": "Portrait (3:4)",
    "landscape": "Landscape (4:3)",
}
ASPECT_CHOICES = [app_commands.Choice(name=name, value=a) for a, name in ASPECT_NAMES.items()]


def chosen_aspect(choice: app_commands.Choice[str] | None) -> Aspect:
    """The aspect the member picked, typed (Discord sends only the choices' values)."""
    return next((a for a in ASPECT_NAMES if choice is not None and choice.value == a), "square")


def channel_is_age_restricted(interaction: discord.Interaction[AvatarBot]) -> bool:
    """Whether the channel is marked age-restricted (NSFW); threads follow their parent."""
    channel = interaction.channel
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


@app_commands.command(name="render", description="Render your avatar in a scene")
@app_commands.rename(with_avatar="with")
@app_commands.describe(
    avatar="Which of your avatars",
    prompt="The scene, e.g. “as an astronaut on the moon, film photo”",
    with_avatar="Another of your avatars in the same picture (“image 2” in the prompt), or "
    "the friend's",
    friend="A member whose avatar you name in “with” (they approve it first)",
    negative_prompt="What to avoid, e.g. “blurry, extra fingers”",
    style="A look to add to the prompt",
    aspect="Picture shape",
    count="How many images (1–4)",
    seed="A number that makes a render repeatable",
    identity_strength="How closely to follow the photos (0–100, default 70)",
    best_of="Render this many, post the ones most like your avatar (1–4; counts as more renders)",
)
@app_commands.choices(style=STYLE_CHOICES, aspect=ASPECT_CHOICES)
@app_commands.autocomplete(avatar=avatar_name_autocomplete, with_avatar=friend_avatar_autocomplete)
async def render_command(
    interaction: discord.Interaction[AvatarBot],
    avatar: str,
    prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
    negative_prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS] | None = None,
    style: app_commands.Choice[str] | None = None,
    aspect: app_commands.Choice[str] | None = None,
    count: app_commands.Range[int, 1, 4] = 1,
    seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
    identity_strength: app_commands.Range[int, 0, 100] = 70,
    with_avatar: str | None = None,
    best_of: app_commands.Range[int, 1, 4] | None = None,
    friend: discord.Member | None = None,
) -> None:
    # Outside a guild the bot is in: the personal quota, the operator's policy, a private
    # result (bot/cogs/place.py).
    place = place_of(interaction)
    response = await interaction.response.defer(ephemeral=True, thinking=True)
    cog = RenderCog.of(interaction)
    options = RenderOptions(
        negative_prompt=negative_prompt or "",
        style=style.value if style else "none",
        aspect=chosen_aspect(aspect),
        count=count,
        seed=seed,
        identity_strength=identity_strength / 100,
        best_of=best_of,
    )
    ref = interaction_ref(interaction, response)
    if friend is not None and friend.id != interaction.user.id:
        if place.guild_id is None:
            raise InvalidInput(
                "Renders with another member's avatar work in a server the bot is in."
            )
        if with_avatar is None:
            raise InvalidInput(f"Name {friend.mention}'s avatar in “with”.")
        await ask_friend(
            cog,
            interaction,
            ref,
            avatar=avatar,
            friend=friend,
            friend_avatar=with_avatar,
            prompt=prompt,
            options=options,
            age_restricted=channel_is_age_restricted(interaction),
        )
        return
    ticket = await cog.bot.services.renders.request(
        interaction.user.id,
        place.guild_id,
        place.channel_id,
        avatar,
        prompt,
        options,
        ref,
        age_restricted=not place.personal and channel_is_age_restricted(interaction),
        with_avatar=with_avatar,
    )
    await cog.queued(interaction, ticket, ref)


class RenderCog(commands.Cog):
    def __init__(self, bot: AvatarBot, messages: RenderMessages) -> None:
        self.bot = bot
        self.messages = messages

    @staticmethod
    def of(interaction: discord.Interaction[AvatarBot]) -> RenderCog:
        """The loaded cog, from an interaction's client."""
        cog = interaction.client.get_cog("RenderCog")
        if cog is None:
            raise RuntimeError("the render cog is not loaded")
        # Not an isinstance check: discord.py re-imports an extension's modules when a bot
        # loads it again (a restart in tests), so the class object may be a newer copy.
        return cast(RenderCog, cog)

    async def cog_load(self) -> None:
        group = self.bot.tree.get_command("avatar")
        if not isinstance(group, app_commands.Group):
            raise RuntimeError("the /avatar group is missing: the avatars cog did not load")
        group.add_command(render_command)
        group.add_command(requests_command)

    async def cog_unload(self) -> None:
        group = self.bot.tree.get_command("avatar")
        if isinstance(group, app_commands.Group):
            group.remove_command(render_command.name)
            group.remove_command(requests_command.name)

    async def again(
        self, interaction: discord.Interaction[AvatarBot], job_id: int, *, variations: bool
    ) -> None:
        """Reroll or Variations on a posted result: a new job from the old one (owner only)."""
        response = await interaction.response.defer(ephemeral=True, thinking=True)
        ref = interaction_ref(interaction, response)
        renders = self.bot.services.renders
        start = renders.variations if variations else renders.reroll
        is_member = self._membership(interaction)
        ticket = await start(interaction.user.id, job_id, ref, is_member=is_member)
        await self.queued(interaction, ticket, ref)

    async def refine(
        self, interaction: discord.Interaction[AvatarBot], job_id: int, index: int, kind: RefineKind
    ) -> None:
        """Upscale or Vary one posted image: a new job from it (owner only)."""
        response = await interaction.response.defer(ephemeral=True, thinking=True)
        ref = interaction_ref(interaction, response)
        renders = self.bot.services.renders
        user_id, is_member = interaction.user.id, self._membership(interaction)
        if kind == "upscale":
            ticket = await renders.upscale(user_id, job_id, index, ref, is_member=is_member)
        else:
            variation: Literal["subtle", "strong"] = "subtle" if kind == "vary_subtle" else "strong"
            ticket = await renders.vary(user_id, job_id, index, variation, ref, is_member=is_member)
        await self.queued(interaction, ticket, ref)

    def _membership(self, interaction: discord.Interaction[AvatarBot]) -> MembershipCheck:
        """Whether the pressing member still belongs to a guild (asked of Discord)."""
        user_id = interaction.user.id
        ask_discord = member_check(self.bot)

        async def is_member(guild_id: int) -> bool:
            # Pressed in a DM (deliveries fall back to one) or long after: ask Discord whether
            # the member still belongs to the guild whose quota the new render spends.
            if interaction.guild_id == guild_id:
                return True
            return await ask_discord(guild_id, user_id)

        return is_member

    async def queued(
        self, interaction: discord.Interaction[AvatarBot], ticket: JobTicket, ref: InteractionRef
    ) -> None:
        await self.messages.show_queued(ticket, ref, interaction.filesize_limit)
