"""``/avatar-admin`` commands: The guild's prompt blocklist: add, remove, show.

A mixin of ``AdminCog`` (bot/cogs/admin/cog.py): discord.py collects app commands along the
class's MRO, so each topic keeps its commands in its own module under the one group.

``add`` blocks a word or ``/pattern/`` here; ``remove`` takes one back, or lifts an entry of the
default ``[sexual]`` list for pet and object avatars. Person avatars never get sexual prompts,
and the default list's entries about minors can never be lifted (bot/services/prompt_policy.py).
Every change goes to the audit log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.services.blocklist import BlocklistView
from bot.services.prompt_policy import MAX_TERM_CHARS
from bot.ui.errors import NO_MENTIONS

if TYPE_CHECKING:
    from bot.app import AvatarBot

    # For the type checker the mixin is a cog (app command decorators require one); at run
    # time it is a plain class that ``AdminCog`` combines with ``commands.GroupCog``.
    _CogBase = commands.Cog
else:
    _CogBase = object

ACTIONS = {
    "blocked": "Blocked `{term}` in this server's prompts.",
    "restored": "`{term}` is blocked again (the default list applies).",
    "unblocked": "`{term}` is no longer on this server's blocklist.",
    "lifted": (
        "Lifted the default entry `{term}` for pet and object avatars. Person avatars are never "
        "rendered in sexual content, and channels' age restriction still applies to the rest."
    ),
}


def _code(term: str) -> str:
    return term.replace("`", "ˋ")


def blocklist_text(view: BlocklistView) -> str:
    lines = [
        "Prompt blocklist in this server:",
        "- Default list: "
        + ", ".join(f"{n} {category}" for category, n in view.defaults.items())
        + " entries (sexual: only in age-restricted channels, never with person avatars; "
        "minors and always: never; undress: read in negative prompts, never with person "
        "avatars)",
    ]
    if view.operator:
        lines.append(f"- Set by the bot's operator: {view.operator} entries")
    blocked = ", ".join(f"`{_code(t)}`" for t in view.blocked) or "none"
    lifted = ", ".join(f"`{_code(t)}`" for t in view.lifted) or "none"
    lines.append(f"- Blocked here ({len(view.blocked)}): {blocked}")
    lines.append(f"- Default entries lifted here ({len(view.lifted)}): {lifted}")
    text = "\n".join(lines)
    return text if len(text) <= 1900 else text[:1897] + "..."


class BlocklistCommands(_CogBase):
    bot: AvatarBot

    blocklist = app_commands.Group(name="blocklist", description="Words refused in prompts")

    @blocklist.command(name="add", description="Refuse a word or /pattern/ in prompts here")
    @app_commands.describe(term="A word or phrase, or a /regular expression/ (RE2 syntax)")
    async def blocklist_add(
        self,
        interaction: discord.Interaction[AvatarBot],
        term: app_commands.Range[str, 1, MAX_TERM_CHARS],
    ) -> None:
        await self._change_blocklist(interaction, term, add=True)

    @blocklist.command(
        name="remove", description="Take back a word, or lift a default entry (not minors)"
    )
    @app_commands.describe(term="The word or /pattern/ as it is listed")
    async def blocklist_remove(
        self,
        interaction: discord.Interaction[AvatarBot],
        term: app_commands.Range[str, 1, MAX_TERM_CHARS],
    ) -> None:
        await self._change_blocklist(interaction, term, add=False)

    async def _change_blocklist(
        self, interaction: discord.Interaction[AvatarBot], term: str, *, add: bool
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        service = self.bot.services.blocklist
        change = await (service.add if add else service.remove)(
            interaction.guild_id,
            term,
            actor_id=interaction.user.id,
            actor_is_admin=interaction.permissions.manage_guild,
        )
        await interaction.followup.send(
            ACTIONS[change.action].format(term=_code(change.term)),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @blocklist.command(name="show", description="This server's prompt blocklist")
    async def blocklist_show(self, interaction: discord.Interaction[AvatarBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild_id is not None
        view = await self.bot.services.blocklist.show(
            interaction.guild_id, actor_is_admin=interaction.permissions.manage_guild
        )
        await interaction.followup.send(
            blocklist_text(view), ephemeral=True, allowed_mentions=NO_MENTIONS
        )
