"""Whether a new render job may be queued now: the member's quota, the withheld allowance,
the render rate and the queues (bot/services/renders.py calls it inside the transaction that
inserts the job, and alone for a render that waits for another member's answer)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import SafetySettings
from bot.errors import QueueFull, QuotaExceeded
from bot.services import limits, withheld
from bot.services.ledger import UNITS_PER_RENDER, day_bounds
from bot.services.quotas import QuotaService
from bot.services.results import RenderSettings
from db.repositories import jobs as repo
from db.repositories.common import lock_scope


async def admit(
    session: AsyncSession,
    quotas_service: QuotaService,
    user_id: int,
    guild_id: int | None,
    settings: RenderSettings,
    units: int,
    now: datetime,
    *,
    safety: SafetySettings,
) -> None:
    """Refuse a new job of ``units`` quota units that the member's quota, withheld
    allowance, render rate or the queues do not allow (``QuotaExceeded``, ``RateLimited``,
    ``QueueFull``); it reserves nothing."""
    # Serialise the guild's check-then-insert: the counts read below cannot change
    # until this transaction ends.
    await lock_scope(session, guild_id)
    quotas = await quotas_service.quotas_in(session, guild_id)
    usage = await quotas_service.usage_in(session, quotas, user_id)
    if usage.remaining < units:
        _, resets_at = day_bounds(now)
        if usage.remaining >= UNITS_PER_RENDER and settings.refine is not None:
            raise QuotaExceeded(
                f"An upscale counts as {units} renders and you have {usage.remaining} left today.",
                resets_at=resets_at,
            )
        if usage.remaining >= UNITS_PER_RENDER:
            raise QuotaExceeded(
                f"Best of {settings.best_of} counts as {units} renders and you have "
                f"{usage.remaining} left today; ask for fewer candidates.",
                resets_at=resets_at,
            )
        raise QuotaExceeded(
            f"You have used your {usage.limit} renders for today.", resets_at=resets_at
        )
    await withheld.check(session, quotas, user_id, now, settings=safety, keys=quotas_service.keys)
    keys = await quotas_service.keys.keys_for(session, guild_id, user_id, now)
    await limits.check_render_rate(session, quotas, user_id, now, keys)
    mine, guild_total = await repo.active_counts(session, guild_id=guild_id, user_id=user_id)
    if mine >= quotas.queued_per_member:
        raise QueueFull(
            f"You already have {mine} render{'s' if mine != 1 else ''} waiting (the most "
            f"{limits.allowing(quotas)}); try again when one of them finishes."
        )
    if guild_total >= quotas.queued_per_guild:
        raise QueueFull(
            "This server's render queue is full."
            if guild_id is not None
            else "The queue of renders outside servers is full.",
            retry_at=await limits.guild_queue_retry_at(session, guild_id, now),
        )
