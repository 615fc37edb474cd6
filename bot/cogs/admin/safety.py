"""``/avatar-admin`` commands: Output safety policy: what happens to flagged images.

A mixin of ``AdminCog`` (bot/cogs/admin/cog.py): discord.py collects app commands along the
class's MRO, so each topic keeps its commands in its own module under the one group.

Flagged images are never posted in channels that are not age-restricted; in age-restricted
channels the server chooses between blocking them (the default) and posting them as spoilers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.services.safety import SafetySummary

if TYPE_CHECKING:
    from bot.app import AvatarBot

    # For the type checker the mixin is a cog (app command decorators require one); at run
    # time it is a plain class that ``AdminCog`` combines with ``commands.GroupCog``.
    _CogBase = commands.Cog
else:
    _CogBase = object

POLICY_LABELS = {
    "block": "Block: never post flagged images",
    "spoiler": "Spoiler: post flagged images behind a spoiler cover",
}
POLICY_CHOICES = [app_commands.Choice(name=label, value=v) for v, label in POLICY_LABELS.items()]


def safety_text(summary: SafetySummary) -> str:
    return "\n".join(
        [
            "Output safety in this server:",
            "- Channels not age-restricted: flagged images are **never posted**",
            f"- Age-restricted channels: **{POLICY_LABELS[summary.nsfw_policy]}**",
            f"- Flagged at a detector score of **{summary.threshold:g}** or more for: "
            + ", ".join(c.lower().replace("_", " ") for c in summary.classes),
            f"- Last {summary.days} day(s): {summary.images_checked} image(s) checked in "
            f"{summary.renders_checked} render(s), {summary.images_flagged} flagged, "
            f"{summary.images_withheld} withheld, {summary.renders_refunded} render(s) refunded",
            "- Live previews while rendering: "
            + (
                "**on** (small and blurred, never stored; `/avatar-admin safety previews`)"
                if summary.live_previews
                else "**off**"
            ),
        ]
    )


class SafetyCommands(_CogBase):
    bot: AvatarBot

    safety = app_commands.Group(name="safety", description="What happens to flagged images")

    @safety.command(name="policy", description="Flagged images in age-restricted channels")
    @app_commands.describe(policy="Block them (default) or post them as spoilers")
    @app_commands.choices(policy=POLICY_CHOICES)
    async def safety_policy(
        self, interaction: discord.Interaction[AvatarBot], policy: app_commands.Choice[str]
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        chosen = await self.bot.services.safety.set_policy(
            interaction.guild_id,
            policy.value,
            actor_id=interaction.user.id,
            actor_is_admin=True,
        )
        await interaction.followup.send(
            f"Age-restricted channels: **{POLICY_LABELS[chosen]}**. Elsewhere flagged images "
            "are never posted.",
            ephemeral=True,
        )

    @safety.command(name="previews", description="Live previews while a render runs")
    @app_commands.describe(on="Show small blurred previews in the progress message (default on)")
    async def safety_previews(self, interaction: discord.Interaction[AvatarBot], on: bool) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        chosen = await self.bot.services.safety.set_previews(
            interaction.guild_id, on, actor_id=interaction.user.id, actor_is_admin=True
        )
        await interaction.followup.send(
            f"Live previews while rendering: **{'on' if chosen else 'off'}**.", ephemeral=True
        )

    @safety.command(name="friends", description="Renders with another member's avatar")
    @app_commands.describe(
        allowed="Let members render with another member's avatar, with its owner's consent "
        "(default on)"
    )
    async def safety_friends(
        self, interaction: discord.Interaction[AvatarBot], allowed: bool
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        chosen = await self.bot.services.friends.set_cross_member_renders(
            interaction.guild_id, allowed, actor_id=interaction.user.id, actor_is_admin=True
        )
        await interaction.followup.send(
            "Renders with another member's avatar: "
            + (
                "**allowed** (each owner approves, or always allows a member)."
                if chosen
                else "**forbidden** in this server."
            ),
            ephemeral=True,
        )

    @safety.command(name="show", description="The output check's settings and recent counts")
    @app_commands.describe(days="How many days back (renders still kept)")
    async def safety_show(
        self, interaction: discord.Interaction[AvatarBot], days: app_commands.Range[int, 1, 30] = 7
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        summary = await self.bot.services.safety.summary(
            interaction.guild_id, actor_is_admin=True, days=days
        )
        await interaction.followup.send(safety_text(summary), ephemeral=True)
