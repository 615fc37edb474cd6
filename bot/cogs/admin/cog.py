"""``/avatar-admin …``: a server's quotas, usage report, and removing a member's renders.

Discord hides the group from members without Manage Server (``default_permissions``), but a
server can re-grant commands to anyone in its integration settings, so the permission is
checked again here, on every invocation, from the permissions Discord computed for the member
in this channel. The services check it a third time (``actor_is_admin``).
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.admin.audit import AuditCommands
from bot.cogs.admin.blocklist import BlocklistCommands
from bot.cogs.admin.safety import SafetyCommands
from bot.services.quotas import PERSONALIZERS, QUOTA_FIELDS
from bot.services.results import GuildQuotas, UsageReport
from bot.ui.charts import png_bytes, usage_chart
from bot.ui.confirm import ask
from bot.ui.errors import NO_MENTIONS

if TYPE_CHECKING:
    from bot.app import AvatarBot

logger = logging.getLogger(__name__)

QUOTA_LABELS = {
    "renders_per_day": "Renders per member per day (UTC)",
    "avatars_per_member": "Avatars per member",
    "photos_per_avatar": "Photos per avatar",
    "queued_per_member": "Queued renders per member",
    "queued_per_guild": "Queued renders in the server",
    "images_per_render": "Images per render",
    "max_steps": "Maximum diffusion steps",
    "max_side": "Maximum image side (px)",
    "renders_per_minute": "Renders per member per minute",
    "creates_per_hour": "Avatar creations per member per hour",
    "withheld_per_day": "Withheld renders per member per day (then refused)",
    "best_of": "Best of k: candidates a render picks its images from by likeness (1: off)",
}
SETTING_CHOICES = [app_commands.Choice(name=QUOTA_LABELS.get(f, f), value=f) for f in QUOTA_FIELDS][
    :25
]
PERSONALIZER_CHOICES = [app_commands.Choice(name=p, value=p) for p in PERSONALIZERS]


def quotas_text(quotas: GuildQuotas) -> str:
    lines = [f"- {QUOTA_LABELS.get(f, f)}: **{getattr(quotas, f)}**" for f in QUOTA_FIELDS]
    lines.append(f"- Personalizer: **{quotas.personalizer or 'engine default'}**")
    return "Quotas in this server:\n" + "\n".join(lines)


def usage_table(report: UsageReport) -> str:
    """Per member: net renders per day, newest day first (a fixed-width table)."""
    if not report.rows:
        return f"No renders in the last {report.days} day(s)."
    per_member: dict[int | None, int] = defaultdict(int)
    for row in report.rows:
        per_member[row.user_id] += row.net
    # "withheld": renders the safety checks withheld entirely or refused on the worker.
    # "likeness": the mean face likeness of the day's person renders still kept; "lost":
    # their images in which no face was found.
    lines = ["day         member                 used  refunded  granted  withheld  likeness  lost"]
    for row in sorted(report.rows, key=lambda r: (r.day, r.net), reverse=True):
        who = str(row.user_id) if row.user_id is not None else "(erased)"
        seen = "-" if row.likeness is None else f"{round(row.likeness * 100)} %"
        lines.append(
            f"{row.day.isoformat()}  {who:<20} {row.reserved:>6} {row.refunded:>9} "
            f"{row.granted:>8} {row.withheld:>9} {seen:>9} {row.lost_faces:>5}"
        )
    totals = ", ".join(
        f"<@{uid}>: {n}" if uid is not None else f"erased members: {n}"
        for uid, n in sorted(per_member.items(), key=lambda kv: -kv[1])
    )
    return (
        f"Last {report.days} day(s), net per member: {totals}\n```\n" + "\n".join(lines) + "\n```"
    )


def usage_chart_png(report: UsageReport, name_of: Callable[[int], str]) -> bytes:
    """The report as a PNG chart of renders per day per member (today, UTC, last)."""
    today = datetime.now(UTC).date()
    return png_bytes(usage_chart(report.rows, report.days, today, name_of))


# Hidden from members without Manage Server, never offered in DMs, and only ever installed
# with the bot in a server (a member's own install has no server to manage).
@app_commands.default_permissions(manage_guild=True)
@app_commands.guild_only()
@app_commands.allowed_installs(guilds=True, users=False)
class AdminCog(
    SafetyCommands,
    BlocklistCommands,
    AuditCommands,
    commands.GroupCog,
    group_name="avatar-admin",
    group_description="Server settings for avatarbot (Manage Server)",
):
    def __init__(self, bot: AvatarBot) -> None:
        self.bot = bot

    async def interaction_check(self, interaction: discord.Interaction[AvatarBot]) -> bool:  # type: ignore[override]
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage()
        if not interaction.permissions.manage_guild:
            logger.info(
                "a member without Manage Server tried an admin command in guild %s",
                interaction.guild_id,
            )
            logger.debug("that member was user %s", interaction.user.id)
            raise app_commands.MissingPermissions(["manage_guild"])
        return True

    quota = app_commands.Group(name="quota", description="This server's quotas")

    @quota.command(name="show", description="Show this server's quotas")
    async def quota_show(self, interaction: discord.Interaction[AvatarBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        quotas = await self.bot.services.quotas.get(interaction.guild_id)
        await interaction.followup.send(quotas_text(quotas), ephemeral=True)

    @quota.command(name="set", description="Change a quota (leave the value out for the default)")
    @app_commands.describe(setting="Which quota", value="The new value (empty: the default)")
    @app_commands.choices(setting=SETTING_CHOICES)
    async def quota_set(
        self,
        interaction: discord.Interaction[AvatarBot],
        setting: app_commands.Choice[str],
        value: app_commands.Range[int, 0, 100_000] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        quotas = await self.bot.services.quotas.set(
            interaction.guild_id,
            actor_is_admin=True,
            actor_id=interaction.user.id,
            **{setting.value: value},
        )
        shown = getattr(quotas, setting.value)
        await interaction.followup.send(
            f"{setting.name}: now **{shown}**{' (default)' if value is None else ''}.",
            ephemeral=True,
        )

    @quota.command(name="personalizer", description="Which personalizer new avatars use here")
    @app_commands.describe(personalizer="How new avatars learn a face or object in this server")
    @app_commands.choices(personalizer=PERSONALIZER_CHOICES)
    async def quota_personalizer(
        self, interaction: discord.Interaction[AvatarBot], personalizer: app_commands.Choice[str]
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        await self.bot.services.quotas.set(
            interaction.guild_id,
            actor_is_admin=True,
            actor_id=interaction.user.id,
            personalizer=personalizer.value,
        )
        await interaction.followup.send(f"Personalizer: **{personalizer.value}**.", ephemeral=True)

    @app_commands.command(name="usage", description="Renders per member and day")
    @app_commands.describe(member="Only this member", days="How many days back, today included")
    async def usage(
        self,
        interaction: discord.Interaction[AvatarBot],
        member: discord.Member | None = None,
        days: app_commands.Range[int, 1, 90] = 7,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        report = await self.bot.services.quotas.report(
            interaction.guild_id, days, member.id if member else None, actor_is_admin=True
        )
        text = usage_table(report)
        files = []
        if report.rows:
            chart = await asyncio.to_thread(
                usage_chart_png, report, self._member_namer(interaction.guild_id)
            )
            files.append(discord.File(io.BytesIO(chart), filename="usage.png"))
        if len(text) > 2000:
            files.insert(0, discord.File(io.BytesIO(text.encode()), filename="usage.txt"))
            text = f"Usage for the last {days} day(s) (attached)."
        await interaction.followup.send(
            text, files=files, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    def _member_namer(self, guild_id: int) -> Callable[[int], str]:
        """A member's display name when cached, else the id's last digits (never a ping:
        an image cannot render mentions)."""
        guild = self.bot.get_guild(guild_id)

        def name_of(user_id: int) -> str:
            member = guild.get_member(user_id) if guild is not None else None
            return member.display_name if member is not None else f"member …{user_id % 10000:04d}"

        return name_of

    @app_commands.command(name="grant", description="Give a member extra renders for today")
    @app_commands.describe(
        member="Who gets the extra renders", amount="How many extra renders, for today (UTC)"
    )
    async def grant(
        self,
        interaction: discord.Interaction[AvatarBot],
        member: discord.Member,
        amount: app_commands.Range[int, 1, 1000],
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        usage = await self.bot.services.quotas.grant(
            interaction.guild_id,
            member.id,
            amount,
            actor_is_admin=True,
            actor_id=interaction.user.id,  # in the audit log, not in the ledger's note
        )
        await interaction.followup.send(
            f"{member.mention} can render {usage.remaining} more time(s) today.",
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="purge", description="Remove a member's renders in this server")
    @app_commands.describe(member="Whose renders (their avatars stay theirs)")
    async def purge(
        self, interaction: discord.Interaction[AvatarBot], member: discord.Member
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        message = await ask(
            interaction,
            f"Remove every render of {member.mention} in this server (prompts and images; "
            "running ones are stopped)? Their avatars are theirs and stay.",
            confirm_label="Remove",
        )
        if message is None:
            return
        report = await self.bot.services.privacy.purge_member(
            interaction.guild_id, member.id, actor_is_admin=True, actor_id=interaction.user.id
        )
        await message.edit(
            content=f"Removed {report.jobs} render(s) and {report.outputs} image(s) of "
            f"{member.mention}.",
            view=None,
            allowed_mentions=NO_MENTIONS,
        )
