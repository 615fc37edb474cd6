"""Avatars: create from photos, list, show, rename, delete, forget-me, usage, help.

``setup`` registers the presenter of encode jobs (avatar creation's checks and encoding, run
by a worker) with the bot's job feed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.cogs.avatars.cog import AvatarsCog
from bot.cogs.avatars.creation import CreationMessages
from bot.ui.images import DEFAULT_FILESIZE_LIMIT
from kinds import JobKind

if TYPE_CHECKING:
    from bot.app import AvatarBot


async def setup(bot: AvatarBot) -> None:
    services = bot.services
    creations = CreationMessages(bot, services.avatars, services.jobs, DEFAULT_FILESIZE_LIMIT)
    await bot.add_cog(AvatarsCog(bot, creations))
    bot.jobs.register(JobKind.ENCODE, creations)
