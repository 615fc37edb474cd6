"""Rendering: ``/avatar render``, its progress messages, results and their buttons.

The whole Discord side of the render feature lives in this package: the command and buttons
(``cog.py``, ``views.py``), what members see while a job waits and runs (``progress.py``) and
how results reach them (``delivery.py``). ``setup`` wires them with arguments and registers the
presenter of render jobs with the bot's job feed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.cogs.render.cog import RenderCog
from bot.cogs.render.delivery import Delivery
from bot.cogs.render.friends import AnswerButton
from bot.cogs.render.progress import RenderMessages
from bot.cogs.render.views import DYNAMIC_ITEMS
from kinds import JobKind

if TYPE_CHECKING:
    from bot.app import AvatarBot


# ``/avatar render`` joins the ``/avatar`` group that the avatars cog owns: the render feature
# loads that feature itself when it is not loaded yet, so the cogs' load order does not matter.
AVATARS_EXTENSION = "bot.cogs.avatars"


async def setup(bot: AvatarBot) -> None:
    if AVATARS_EXTENSION not in bot.extensions:
        await bot.load_extension(AVATARS_EXTENSION)
    jobs = bot.services.jobs
    delivery = Delivery(bot, jobs, metrics=bot.services.metrics, layout=bot.settings.result_layout)
    # Previews are edits too: at most one per job as often as progress (Discord's edit limits).
    messages = RenderMessages(bot, jobs, delivery, bot.settings.jobs.progress_seconds)
    await bot.add_cog(RenderCog(bot, messages))
    # Buttons on messages posted before any restart are matched by their custom_id pattern.
    bot.add_dynamic_items(*DYNAMIC_ITEMS, AnswerButton)
    bot.jobs.register(JobKind.RENDER, messages)


async def teardown(bot: AvatarBot) -> None:
    bot.remove_dynamic_items(*DYNAMIC_ITEMS, AnswerButton)
