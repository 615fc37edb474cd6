"""The one check that an interaction came to avatarbot's own bot, and the persistent button
that relies on it.

Slash command handlers are typed ``discord.Interaction[AvatarBot]`` (discord.py hands a cog's
commands its bot). Components and modals cannot be: discord.py types their callbacks for any
client, and an override must accept what its base accepts. They narrow here, once, instead of
a cast or a ``type: ignore`` at each callback.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import discord

from bot.app import AvatarBot
from bot.ui.errors import report_error


def is_avatarbot(interaction: discord.Interaction) -> TypeGuard[discord.Interaction[AvatarBot]]:
    """Whether ``interaction.client`` is the avatarbot bot (always, unless misregistered)."""
    return isinstance(interaction.client, AvatarBot)


class BotButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    # The base is never registered; each subclass matches its own custom_ids only.
    template=r"avatarbot:(?P<rest>.+)",
):
    """A button whose custom_id carries all its state (it keeps working after a restart). A
    press runs ``press`` with the interaction narrowed to avatarbot's; any failure becomes the
    member's error message (and the operator's log line) in ``report_error``."""

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            if not is_avatarbot(interaction):
                raise RuntimeError(
                    f"{type(self).__name__} reached a client that is not avatarbot's"
                )
            await self.press(interaction)
        except Exception as exc:
            await report_error(interaction, exc)

    async def press(self, interaction: discord.Interaction[AvatarBot]) -> None:
        raise NotImplementedError
