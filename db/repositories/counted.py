"""Counted events: what a member's abuse limits count (withheld renders, avatar creations).

A member's rows are theirs by ``user_id``, or, after their forget-me and for the rest of that
UTC day, by ``user_key`` (the keyed hash of guild, member and day, bot/services/usage_keys.py),
exactly like the usage ledger's; ``expire_user_keys`` clears the keys of earlier days.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import CountedEvent, CountedKind
from db.repositories import ledger
from db.repositories.common import eq_or_null
from db.repositories.ledger import member_rows, set_keys, utc_day


async def append(
    session: AsyncSession,
    *,
    kind: CountedKind,
    guild_id: int | None,
    user_id: int,
    now: datetime,
    job_id: int | None = None,
    note: str | None = None,
) -> None:
    session.add(
        CountedEvent(
            kind=kind,
            guild_id=guild_id,
            user_id=user_id,
            job_id=job_id,
            created_at=now,
            note=note,
        )
    )
    await session.flush()


async def times(
    session: AsyncSession,
    *,
    kind: CountedKind,
    guild_id: int | None,
    user_id: int,
    since: datetime,
    user_keys: Sequence[str] = (),
) -> list[datetime]:
    """When the member's events of ``kind`` in the guild (None: no guild) since ``since``
    happened, oldest first; by id, or by one of ``user_keys`` after a forget-me."""
    rows = await session.scalars(
        select(CountedEvent.created_at)
        .where(
            CountedEvent.kind == kind,
            eq_or_null(CountedEvent.guild_id, guild_id),
            member_rows(user_id, user_keys, CountedEvent),
            CountedEvent.created_at >= since,
        )
        .order_by(CountedEvent.created_at)
    )
    return list(rows)


@dataclass(frozen=True)
class DayCount:
    day: date
    user_id: int | None
    count: int


async def per_day(
    session: AsyncSession,
    *,
    kind: CountedKind,
    guild_id: int,
    since: datetime,
    user_id: int | None = None,
) -> list[DayCount]:
    """Per UTC day and member, the guild's events of ``kind`` from ``since`` on (the admin
    usage report; rows kept after a forget-me have ``user_id`` None)."""
    day = utc_day(session, CountedEvent.created_at).label("day")
    query = (
        select(day, CountedEvent.user_id, func.count())
        .where(
            CountedEvent.kind == kind,
            CountedEvent.guild_id == guild_id,
            CountedEvent.created_at >= since,
        )
        .group_by(day, CountedEvent.user_id)
    )
    if user_id is not None:
        query = query.where(CountedEvent.user_id == user_id)
    result = []
    for d, uid, count in (await session.execute(query)).all():
        parsed = d if isinstance(d, date) else date.fromisoformat(str(d))
        result.append(DayCount(parsed, uid, int(count)))
    return result


async def key_rows_of_day(
    session: AsyncSession,
    user_id: int,
    *,
    start: datetime,
    key_for: Callable[[int | None], str],
) -> int:
    """Forget-me: the member's rows of the day starting at ``start`` trade their user id for
    ``key_for(guild_id)``. Returns the number of rows keyed."""
    rows = (
        await session.execute(
            select(CountedEvent.id, CountedEvent.guild_id).where(
                CountedEvent.user_id == user_id, CountedEvent.created_at >= start
            )
        )
    ).all()
    return await set_keys(session, rows, key_for, CountedEvent)


async def expire_user_keys(session: AsyncSession, before: datetime) -> int:
    """Clear the forget-me keys of rows written before ``before`` (the start of the day)."""
    return await ledger.expire_user_keys(session, before, CountedEvent)


async def delete_user_data(session: AsyncSession, user_id: int) -> int:
    """Anonymise the member's rows of earlier days: the counts stay, the user id goes."""
    return await ledger.delete_user_data(session, user_id, CountedEvent)


async def delete_guilds_before(
    session: AsyncSession, guild_ids: Sequence[int], before: datetime
) -> int:
    """A removed guild's rows written before ``before`` (at its removal: earlier days; in the
    maintenance pass: once the day is over)."""
    return await ledger.delete_guilds_before(session, guild_ids, before, CountedEvent)
