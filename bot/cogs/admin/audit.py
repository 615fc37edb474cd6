"""``/avatar-admin audit``: the audit log of admin actions.

A mixin of ``AdminCog`` (bot/cogs/admin/cog.py): discord.py collects app commands along the
class's MRO, so each topic keeps its commands in its own module under the one group; the
cog's ``interaction_check`` (Manage Server) covers these commands too.

Each line shows when (a Discord timestamp, in the reader's time zone), who (a mention that
pings nobody, or "(erased admin)" after the admin's forget-me) and what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.services.audit import MAX_AUDIT_ROWS, AuditView
from bot.services.withheld import COOLDOWN_ACTION
from bot.ui.errors import NO_MENTIONS, discord_time

if TYPE_CHECKING:
    from bot.app import AvatarBot

    _MixinBase = commands.Cog  # what the mixin ends up in (app_commands needs a Cog "self")
else:
    _MixinBase = object

MAX_MESSAGE = 2000


def _member(value: Any) -> str:
    return f"<@{value}>" if value not in (None, "") else "(erased member)"


def describe(entry: AuditView) -> str:
    """What an entry did, in a few words (unknown actions show their details as they are)."""
    d = entry.detail
    if entry.action == "quota.set":
        changes = d.get("changes") or {}
        parts = [
            f"`{name}` {old if old is not None else 'default'} → {new}"
            for name, (old, new) in sorted(changes.items())
        ]
        return "changed " + (", ".join(parts) or "quotas")
    if entry.action == "quota.grant":
        amount = d.get("amount")
        note = f" ({d['note']})" if d.get("note") else ""
        return f"granted {amount} extra render(s) to {_member(d.get('member_id'))}{note}"
    if entry.action == "member.purge":
        return (
            f"removed {d.get('renders', 0)} render(s) and {d.get('images', 0)} image(s) of "
            f"{_member(d.get('member_id'))}"
        )
    details = ", ".join(
        f"{key}: {_member(value) if key == 'member_id' else value}"
        for key, value in sorted(d.items())
    )
    return f"`{entry.action}`" + (f" {details}" if details else "")


# Entries the bot writes itself (bot/services/withheld.py: a member put on a cool-down).
BOT_ACTIONS = frozenset({COOLDOWN_ACTION})


def audit_text(entries: list[AuditView]) -> str:
    """The entries, newest first, cut to one Discord message."""
    if not entries:
        return "No admin actions recorded in this server yet."
    lines: list[str] = []
    used = 0
    for i, entry in enumerate(entries):
        if entry.actor_id is not None:
            who = f"<@{entry.actor_id}>"
        elif entry.action in BOT_ACTIONS:  # the bot's own decisions have no admin
            who = "(the bot)"
        else:
            who = "(erased admin)"
        line = f"{discord_time(entry.when, 'f')} {who} {describe(entry)}"
        if used + len(line) + 60 > MAX_MESSAGE:
            lines.append(f"… and {len(entries) - i} older (ask for fewer).")
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


class AuditCommands(_MixinBase):
    bot: AvatarBot

    @app_commands.command(name="audit", description="Recent admin actions in this server")
    @app_commands.describe(limit="How many entries, newest first")
    async def audit(
        self,
        interaction: discord.Interaction[AvatarBot],
        limit: app_commands.Range[int, 1, MAX_AUDIT_ROWS] = 20,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        entries = await self.bot.services.audit.recent(
            interaction.guild_id, limit, actor_is_admin=True
        )
        await interaction.followup.send(
            audit_text(entries), ephemeral=True, allowed_mentions=NO_MENTIONS
        )
