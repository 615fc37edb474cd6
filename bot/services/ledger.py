"""Quota arithmetic on the usage ledger: the UTC day, reservations and refunds.

Quota semantics: **renders per member per UTC calendar day, per guild**. One render (one job,
whatever its image count) reserves one unit when it is accepted; a failed or cancelled job
gives its unit back, counted against the day it was taken from. The count resets at 00:00 UTC.

Why a UTC day rather than a rolling 24 h: the reset is one instant everyone can be told
("resets at 00:00 UTC, in 3 h"), the same for a guild spread over time zones; "used today" is
one indexed range query; and the admin report's "per member and per day" rows add up to
exactly what the limit counted. The price: a member can spend a day's quota just before
midnight and another just after. Admins who mind can lower the limit; a rolling window would
not stop steady heavy use either.

Every function here runs inside the caller's transaction, next to the job state change it
belongs to, so a reservation or refund and the state change commit or roll back together.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from db.models import LedgerEntry, RenderJob
from db.repositories import ledger as ledger_repo

UNITS_PER_RENDER = 1


def day_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC day containing ``now``: [00:00, next 00:00)."""
    start = datetime.combine(now.astimezone(UTC).date(), time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


async def used_today(
    session: AsyncSession,
    *,
    guild_id: int | None,
    user_id: int,
    now: datetime,
    user_keys: Sequence[str] = (),
) -> tuple[int, int]:
    """(units used today net of refunds, units granted today) for a member in a guild.

    ``user_keys``: the member's keys of today (bot/services/usage_keys.py), so that what they
    used before a forget-me still counts."""
    start, end = day_bounds(now)
    totals = await ledger_repo.totals(
        session, guild_id=guild_id, user_id=user_id, start=start, end=end, user_keys=user_keys
    )
    return totals.reserved - totals.refunded, totals.granted


async def reserve(session: AsyncSession, job: RenderJob, now: datetime) -> None:
    """Record the job's reservation (``job.reserved`` units) in the caller's transaction."""
    await ledger_repo.append(
        session,
        entry=LedgerEntry.RESERVE,
        guild_id=job.guild_id,
        user_id=job.user_id,
        amount=job.reserved,
        job_id=job.id,
        now=now,
    )


async def refund(session: AsyncSession, job: RenderJob, now: datetime, note: str) -> None:
    """Give back what ``job`` reserved; call only after a successful final state change."""
    if job.reserved <= 0:
        return
    await ledger_repo.append(
        session,
        entry=LedgerEntry.REFUND,
        guild_id=job.guild_id,
        user_id=job.user_id,
        amount=job.reserved,
        job_id=job.id,
        now=now,
        note=note[:200],
    )
