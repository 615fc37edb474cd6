"""Abuse limits per member: renders per minute and avatar creations per hour.

Both are guild settings with defaults (``renders_per_minute``, ``creates_per_hour`` in
``QuotaDefaults``; ``/avatar-admin quota set`` changes them) and are checked in the same
serialised transaction as the quota (renders: ``RenderService._enqueue`` under the guild's
lock; creations: ``AvatarService.create`` under the member's lock), so concurrent requests
cannot slip past them. A refusal (``RateLimited``) carries the moment the oldest request
counted leaves the window: retrying then succeeds unless something else refuses.

The personal scope (guild None: DMs with the bot and a member's own install elsewhere,
bot/services/quotas.py) has the same limits from ``Settings.personal_quotas``; its
``queued_per_guild`` caps the queue of that whole scope, every member outside servers together.

What is counted:
- renders (requests, rerolls, variations) in the guild during the last minute, from the usage
  ledger's reservations: deleting the job does not remove its reservation, and a forget-me
  keeps today's reservations under the member's key (bot/services/usage_keys.py);
- avatar creations in any guild during the last hour (avatars are the member's, not the
  guild's), from ``counted_events``' ``create`` rows (guild NULL), written with the encode job
  (``record_creation``): they stay when the avatar or the job is deleted, and a forget-me keeps
  them counted under the member's key like the day's renders, so erasing one's data does not
  reset ``creates_per_hour`` either. (Creations made before migration 0006 have no such row:
  the encode jobs count for them, whichever of the two counts more.)

Avatars are the member's, across guilds, so a guild's avatar limits are also checked when an
avatar is rendered there (``check_avatar_fits``): one made in DMs or in a looser guild cannot
skip them.

At most one avatar creation per member is in progress (``check_no_pending_creation`` and
the in-process intake guard in bot/services/avatars.py), and each counts against
``creates_per_hour``.

The queue caps (``queued_per_member``, ``queued_per_guild``) are checked next to these in
``_enqueue``; ``guild_queue_retry_at`` estimates when the guild's queue has room again.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import InvalidInput, QueueFull, QuotaExceeded, RateLimited
from bot.services.results import GuildQuotas
from bot.services.usage_keys import UsageKeys
from db.models import Avatar, CountedKind
from db.repositories import avatars as avatars_repo
from db.repositories import counted as counted_repo
from db.repositories import jobs as jobs_repo
from db.repositories import ledger as ledger_repo
from kinds import AvatarStatus, JobKind

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
    session: AsyncSession, quotas: GuildQuotas, owner_id: int, now: datetime, keys: UsageKeys
) -> None:
    """Refuse an avatar creation beyond ``creates_per_hour`` (``RateLimited``)."""
    limit = quotas.creates_per_hour
    since = now - CREATE_WINDOW
    # Creations count across guilds (guild NULL); after a forget-me by the keys of each UTC
    # day the window touches.
    user_keys = await keys.keys_between(session, None, owner_id, since, now)
    times = await counted_repo.times(
        session,
        kind=CountedKind.CREATE,
        guild_id=None,
        user_id=owner_id,
        since=since,
        user_keys=user_keys,
    )
    # The encode jobs too, while creations from before migration 0006 (no ledger row) are in
    # the window: whichever counts more (both count the same creations otherwise).
    jobs = await jobs_repo.created_times(
        session, user_id=owner_id, kind=JobKind.ENCODE, since=since
    )
    times = max(times, jobs, key=len)
    when = retry_at(times, limit, CREATE_WINDOW)
    if when is not None:
        raise RateLimited(
            f"You can create {limit} avatar{'s' if limit != 1 else ''} an hour.",
            retry_at=max(when, now),
        )


async def record_creation(session: AsyncSession, owner_id: int, job_id: int, now: datetime) -> None:
    """Count an avatar creation (its encode job) for ``creates_per_hour``, in the caller's
    transaction."""
    await counted_repo.append(
        session,
        kind=CountedKind.CREATE,
        guild_id=None,
        user_id=owner_id,
        job_id=job_id,
        now=now,
    )


async def check_no_pending_creation(session: AsyncSession, owner_id: int) -> None:
    """Refuse a creation while another of the member's is in progress (its avatar is pending:
    its encode job has not finished). With the in-process guard on intake
    (``AvatarService._intake_slot``) a member has at most one creation in progress."""
    pending = await session.scalar(
        select(func.count())
        .select_from(Avatar)
        .where(Avatar.owner_id == owner_id, Avatar.status == AvatarStatus.PENDING)
    )
    if pending:
        raise QueueFull(
            "Your previous avatar is still being checked; wait until it is done, then try again."
        )


async def check_avatar_fits(
    session: AsyncSession, quotas: GuildQuotas, avatar: Avatar, owner_id: int
) -> None:
    """Refuse rendering ``avatar`` in the quotas' guild when it breaks that guild's avatar
    limits, wherever it was made (in DMs, in another guild with looser limits): more photos
    than ``photos_per_avatar`` (``InvalidInput``), or a member holding more avatars than
    ``avatars_per_member`` (``QuotaExceeded``). Nothing is deleted: the member can use the
    avatar where it fits, or delete some to use it here."""
    photos = (await avatars_repo.photo_counts(session, [avatar.id])).get(avatar.id, 0)
    if photos > quotas.photos_per_avatar:
        raise InvalidInput(
            f"“{avatar.name}” has {photos} photos; {allowing(quotas)} at most "
            f"{quotas.photos_per_avatar} per avatar."
        )
    owned = await avatars_repo.count_for_owner(session, owner_id)
    if owned > quotas.avatars_per_member:
        raise QuotaExceeded(
            f"You have {owned} avatars; {allowing(quotas)} {quotas.avatars_per_member}. "
            "Delete some to render here."
        )


def allowing(quotas: GuildQuotas) -> str:
    """Who sets the limits a refusal names: the server, or the operator outside servers."""
    return "this server allows" if quotas.guild_id is not None else "outside servers I allow"


async def guild_queue_retry_at(
    session: AsyncSession, guild_id: int | None, now: datetime
) -> datetime:
    """When a full guild queue likely has room again: now + a typical recent run time."""
    runs = await jobs_repo.recent_durations(session, guild_id=guild_id, limit=RUN_SAMPLE)
    typical = timedelta(seconds=statistics.median(runs)) if runs else DEFAULT_RUN
    return now + min(max(typical, MIN_RUN), MAX_RUN)
