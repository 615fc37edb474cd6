"""Server administration: quotas, usage, member purge (Manage Server, checked server-side)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.cogs.admin.cog import AdminCog

if TYPE_CHECKING:
    from bot.app import AvatarBot


async def setup(bot: AvatarBot) -> None:
    await bot.add_cog(AdminCog(bot))
