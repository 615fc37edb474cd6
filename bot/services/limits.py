"""Abuse limits per member: renders per minute and avatar creations per hour.

Both are guild settings with defaults (``renders_per_minute``, ``creates_per_hour`` in
``QuotaDefaults``; ``/avatar-admin quota set`` changes them) and are checked in the same
serialised transaction as the quota (renders: ``RenderService._enqueue`` under the guild's
lock; creations: ``AvatarService.create`` under the member's lock), so concurrent requests
cannot slip past them. A refusal (``RateLimited``) carries the moment the oldest request
counted leaves the window: retrying then succeeds unless something else refuses.

What is counted:
- renders (requests, rerolls, variations) in the guild during the last minute, from the usage
  ledger's reservations: deleting the job does not remove its reservation, and a forget-me
  keeps today's reservations under the member's key (bot/services/usage_keys.py);
- avatar creations in any guild during the last hour (avatars are the member's, not the
  guild's), from the ``encode`` jobs: they stay when the avatar is deleted. A forget-me
  removes them with every other job of the member, and with every avatar: the member starts
  over from nothing, and the per-day render quota still holds.

The queue caps (``queued_per_member``, ``queued_per_guild``) are checked next to these in
``_enqueue``; ``guild_queue_retry_at`` estimates when the guild's queue has room again.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import RateLimited
from bot.services.results import GuildQuotas
from db.models import JobKind
from db.repositories import jobs as jobs_repo
from db.repositories import ledger as ledger_repo

RENDER_WINDOW = timedelta(minutes=1)
CREATE_WINDOW = timedelta(hours=1)
# A guild's full queue: how long until one of its jobs is likely to finish, from its recent
# run times (median of the last RUN_SAMPLE), bounded; DEFAULT_RUN without any history.
RUN_SAMPLE = 20
DEFAULT_RUN = timedelta(minutes=1)
MIN_RUN, MAX_RUN = timedelta(seconds=15), timedelta(minutes=15)


def retry_at(times: Sequence[datetime], limit: int, window: timedelta) -> datetime | None:
    """None when fewer than ``limit`` requests (oldest first) fall in the window, else the
    moment enough of them have left it for one more."""
    if len(times) < limit:
        return None
    # +1 s: the window's lower bound is inclusive, and Discord shows whole seconds.
    return times[len(times) - limit] + window + timedelta(seconds=1)


async def check_render_rate(
    session: AsyncSession,
    quotas: GuildQuotas,
    user_id: int,
    now: datetime,
    user_keys: Sequence[str] = (),
) -> None:
    """Refuse a render beyond ``renders_per_minute`` in the guild (``RateLimited``)."""
    limit = quotas.renders_per_minute
    times = await ledger_repo.reservation_times(
        session,
        guild_id=quotas.guild_id,
        user_id=user_id,
        since=now - RENDER_WINDOW,
        user_keys=user_keys,
    )
    when = retry_at(times, limit, RENDER_WINDOW)
    if when is not None:
        raise RateLimited(
            f"You can start {limit} render{'s' if limit != 1 else ''} a minute here "
            "(rerolls and variations included).",
            retry_at=max(when, now),
        )


async def check_create_rate(
    session: AsyncSession, quotas: GuildQuotas, owner_id: int, now: datetime
) -> None:
    """Refuse an avatar creation beyond ``creates_per_hour`` (``RateLimited``)."""
    limit = quotas.creates_per_hour
    times = await jobs_repo.created_times(
        session, user_id=owner_id, kind=JobKind.ENCODE, since=now - CREATE_WINDOW
    )
    when = retry_at(times, limit, CREATE_WINDOW)
    if when is not None:
        raise RateLimited(
            f"You can create {limit} avatar{'s' if limit != 1 else ''} an hour.",
            retry_at=max(when, now),
        )


async def guild_queue_retry_at(
    session: AsyncSession, guild_id: int | None, now: datetime
) -> datetime:
    """When a full guild queue likely has room again: now + a typical recent run time."""
    runs = await jobs_repo.recent_durations(session, guild_id=guild_id, limit=RUN_SAMPLE)
    typical = timedelta(seconds=statistics.median(runs)) if runs else DEFAULT_RUN
    return now + min(max(typical, MIN_RUN), MAX_RUN)
