"""Nothing is free: renders the safety checks withheld count against a daily allowance, and
repeated ones put the member on a cool-down.

What counts as withheld: a render whose every image the output check withheld
(``RenderWork.commit``; a person avatar's flagged images are always withheld), and a render
the worker's semantic prompt screen refused (the job failed with error code
``prompt_screened``). Each writes one ``withheld`` row to ``counted_events`` (guild, member,
job) in the transaction that finishes the job.

- **Allowance**: once a member has ``withheld_per_day`` withheld renders in a guild's UTC day
  (a guild quota with the operator's ceiling), new renders there are refused before any job
  exists (``QuotaExceeded``, with the end of the day). Jobs already queued still run: at most
  ``queued_per_member`` more.
- **Cool-down**: ``withheld_cooldown_after`` withheld renders within
  ``withheld_cooldown_window_minutes`` stop the member's renders in that guild for
  ``withheld_cooldown_minutes`` after the latest one (``RateLimited`` with its end). Each
  withheld render that starts (or extends) a cool-down is written to the guild's audit log
  (``safety.cooldown``: the member, the count, the end); the member's forget-me removes their
  id from it as from any entry about them.
- Admins see the withheld renders per member and day in ``/avatar-admin usage``.

Refund: a withheld render is still refunded from the day's render quota. The member got
nothing, and an honest member whose harmless prompt tripped a check should not lose a render
for it; what stops a member from keeping a GPU busy with withheld renders is this allowance
and the cool-down, which bound them to a few per day whatever the render quota is.

The counts survive forget-me like the day's renders: forget-me keys the member's rows of the
day with the hash of (guild, member, day), as it does their ledger rows
(bot/services/usage_keys.py), so erasing one's data is no way out of a cool-down or the
allowance.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import SafetySettings
from bot.errors import PromptScreened, QuotaExceeded, RateLimited
from bot.services import audit
from bot.services.ledger import day_bounds
from bot.services.results import GuildQuotas
from bot.services.usage_keys import UsageKeys
from db.models import CountedKind, RenderJob
from db.repositories import counted as counted_repo

logger = logging.getLogger(__name__)

# The error code of a job the worker's semantic prompt screen refused (semantic_screen.py).
PROMPT_SCREENED = PromptScreened.code
COOLDOWN_ACTION = "safety.cooldown"


async def _withheld_times(
    session: AsyncSession,
    keys: UsageKeys,
    guild_id: int | None,
    user_id: int,
    since: datetime,
    now: datetime,
) -> list[datetime]:
    """When the member's withheld renders in the guild since ``since`` were recorded, their
    rows after a forget-me included (the keys of each UTC day the span touches)."""
    user_keys = await keys.keys_between(session, guild_id, user_id, since, now)
    return await counted_repo.times(
        session,
        kind=CountedKind.WITHHELD,
        guild_id=guild_id,
        user_id=user_id,
        since=since,
        user_keys=user_keys,
    )


async def record(
    session: AsyncSession,
    job: RenderJob,
    now: datetime,
    *,
    settings: SafetySettings,
    keys: UsageKeys,
    reason: str,
) -> datetime | None:
    """Count ``job`` as withheld (in the caller's transaction, the one that finishes it).
    Returns the end of the cool-down it starts, if it starts one."""
    await counted_repo.append(
        session,
        kind=CountedKind.WITHHELD,
        guild_id=job.guild_id,
        user_id=job.user_id,
        job_id=job.id,
        now=now,
        note=reason[:200],
    )
    window = timedelta(minutes=settings.withheld_cooldown_window_minutes)
    times = await _withheld_times(session, keys, job.guild_id, job.user_id, now - window, now)
    if len(times) < settings.withheld_cooldown_after:
        return None
    until = max(times[-1], now) + timedelta(minutes=settings.withheld_cooldown_minutes)
    if job.guild_id is not None:
        await audit.record(
            session,
            job.guild_id,
            None,  # the bot's decision, not an admin's
            COOLDOWN_ACTION,
            {
                "member_id": str(job.user_id),
                "withheld": len(times),
                "window_minutes": settings.withheld_cooldown_window_minutes,
                "until": until.isoformat(),
            },
        )
    logger.info("job %s: withheld renders put its member on a cool-down", job.id)
    return until


async def check(
    session: AsyncSession,
    quotas: GuildQuotas,
    user_id: int,
    now: datetime,
    *,
    settings: SafetySettings,
    keys: UsageKeys,
) -> None:
    """Refuse a new render past the day's allowance (``QuotaExceeded``) or during a
    cool-down (``RateLimited``); run where the quota is checked, before any job exists."""
    start, end = day_bounds(now)
    window = timedelta(minutes=settings.withheld_cooldown_window_minutes)
    since = min(start, now - window)
    times = await _withheld_times(session, keys, quotas.guild_id, user_id, since, now)
    today = [t for t in times if t >= start]
    if len(today) >= quotas.withheld_per_day:
        raise QuotaExceeded(
            f"The safety checks withheld {len(today)} of your renders today, the most this "
            "server allows in a day. You can render again when the day ends.",
            resets_at=end,
        )
    recent = [t for t in times if t >= now - window]
    if len(recent) >= settings.withheld_cooldown_after:
        until = recent[-1] + timedelta(minutes=settings.withheld_cooldown_minutes)
        if until > now:
            raise RateLimited(
                f"The safety checks withheld {len(recent)} of your renders in the last "
                f"{settings.withheld_cooldown_window_minutes} minutes, so you are on a "
                "cool-down here.",
                retry_at=until,
            )
