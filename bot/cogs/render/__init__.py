"""Rendering: ``/avatar render``, progress, results and their buttons."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.cogs.render.cog import RenderCog
from bot.cogs.render.views import DYNAMIC_ITEMS, result_embed, result_view

if TYPE_CHECKING:
    from bot.app import AvatarBot


async def setup(bot: AvatarBot) -> None:
    await bot.add_cog(RenderCog(bot))
    # Buttons on messages posted before any restart are matched by their custom_id pattern.
    bot.add_dynamic_items(*DYNAMIC_ITEMS)
    bot.jobs.delivery.result_embed = result_embed
    bot.jobs.delivery.result_view = result_view


async def teardown(bot: AvatarBot) -> None:
    bot.remove_dynamic_items(*DYNAMIC_ITEMS)
