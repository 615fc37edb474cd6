"""Avatars: create from photos, list, show, rename, delete, forget-me, usage, help."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.cogs.avatars.cog import AvatarsCog

if TYPE_CHECKING:
    from bot.app import AvatarBot


async def setup(bot: AvatarBot) -> None:
    await bot.add_cog(AvatarsCog(bot))
