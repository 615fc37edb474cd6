"""The one check that an interaction came to avatarbot's own bot.

Slash command handlers are typed ``discord.Interaction[AvatarBot]`` (discord.py hands a cog's
commands its bot). Components and modals cannot be: discord.py types their callbacks for any
client, and an override must accept what its base accepts. They narrow here, once, instead of
a cast or a ``type: ignore`` at each callback.
"""

from __future__ import annotations

from typing import TypeGuard

import discord

from bot.app import AvatarBot


def is_avatarbot(interaction: discord.Interaction) -> TypeGuard[discord.Interaction[AvatarBot]]:
    """Whether ``interaction.client`` is the avatarbot bot (always, unless misregistered)."""
    return isinstance(interaction.client, AvatarBot)
