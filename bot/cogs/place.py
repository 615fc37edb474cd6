"""Where a command was used, as the services see it: a guild the bot is in, or the personal
scope.

The application is installable to a server (the bot joins it) and to a member's own account
(a user install: the commands follow the member into DMs, group DMs and servers the bot is
not in). The interaction says which: its guild id, and whether the bot has that guild (a
guild the bot is not in is never in its cache; its interactions carry only a partial one).

- A guild the bot is in: that guild's quotas, blocklist and safety policy, as ever; results
  are posted in the channel.
- A DM with the bot: the personal scope (``guild_id`` None: the operator's personal quotas
  and defaults, bot/services/quotas.py). Results go to that DM, which only the member sees.
- Anywhere else (a server without the bot, a group DM or a DM between members, through the
  member's user install): the personal scope too, and results are private: an ephemeral
  follow-up while the interaction lives, a DM after it. The bot cannot post there itself, so
  no channel is kept for the job (``channel_id`` None), which is also how delivery knows to
  answer privately (bot/cogs/render/delivery.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import discord


@dataclass(frozen=True)
class Place:
    """The quota and policy scope of a command (``guild_id`` None: personal) and the channel
    a late result may be posted in (None: only the member's DMs)."""

    guild_id: int | None
    channel_id: int | None

    @property
    def personal(self) -> bool:
        return self.guild_id is None


def place_of(interaction: discord.Interaction[Any]) -> Place:
    """The place of ``interaction`` (see the module docstring)."""
    guild_id = interaction.guild_id
    if guild_id is not None and interaction.client.get_guild(guild_id) is not None:
        return Place(guild_id, interaction.channel_id)
    if guild_id is None and interaction.context.dm_channel:
        return Place(None, interaction.channel_id)
    return Place(None, None)
