"""The append-only usage ledger: reservations, refunds and admin grants.

What a member has used is computed from the ledger in SQL, never stored. A refund counts
against the day of the reservation it gives back (through its job's ``created_at``), so a job
reserved at 23:59 and refunded at 00:01 frees a unit of the day it was taken from.

A member's rows are theirs by ``user_id``, or, after their forget-me and for the rest of that
UTC day only, by ``user_key`` (a keyed hash of guild, member and day: see
bot/services/usage_keys.py); ``expire_user_keys`` clears the keys of earlier days.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Date, case, cast, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from db.models import CountedEvent, LedgerEntry, RenderJob, UsageLedger
from db.repositories.common import affected, dialect_name, eq_or_null


async def append(
    session: AsyncSession,
    *,
    entry: LedgerEntry,
    guild_id: int | None,
    user_id: int | None,
    amount: int,
    now: datetime,
    job_id: int | None = None,
    note: str | None = None,
) -> None:
    session.add(
        UsageLedger(
            entry=entry,
            guild_id=guild_id,
            user_id=user_id,
            amount=amount,
            job_id=job_id,
            created_at=now,
            note=note,
        )
    )
    await session.flush()


# The tables whose rows forget-me keys instead of erasing (``user_id``, ``user_key``,
# ``created_at``): the usage ledger, and the counted events of db/repositories/counted.py.
KeyedTable = type[UsageLedger] | type[CountedEvent]


def member_rows(
    user_id: int, user_keys: Sequence[str], model: KeyedTable = UsageLedger
) -> ColumnElement[bool]:
    """The member's rows: by id, or by one of their keys of today after a forget-me."""
    if not user_keys:
        return model.user_id == user_id
    return or_(model.user_id == user_id, model.user_key.in_(list(user_keys)))


def _attributed_at() -> ColumnElement[Any]:
    # The moment a row counts for: its job's creation (= the reservation) when it has one.
    return func.coalesce(RenderJob.created_at, UsageLedger.created_at)


@dataclass(frozen=True)
class DayTotals:
    reserved: int
    refunded: int
    granted: int


async def totals(
    session: AsyncSession,
    *,
    guild_id: int | None,
    user_id: int,
    start: datetime,
    end: datetime,
    user_keys: Sequence[str] = (),
) -> DayTotals:
    """A member's reserved, refunded and granted units attributed to ``[start, end)``
    (``user_keys``: their keys of that day, matching their rows after a forget-me)."""
    attributed = _attributed_at()
    row = (
        await session.execute(
            select(*_sums())
            .select_from(UsageLedger)
            .outerjoin(RenderJob, RenderJob.id == UsageLedger.job_id)
            .where(
                eq_or_null(UsageLedger.guild_id, guild_id),
                member_rows(user_id, user_keys),
                # Index-friendly bound: nothing attributed to [start, end) was written before
                # start (a refund always follows its reservation).
                UsageLedger.created_at >= start,
                attributed >= start,
                attributed < end,
            )
        )
    ).one()
    return DayTotals(int(row[0] or 0), int(row[1] or 0), int(row[2] or 0))


def _sums() -> tuple[ColumnElement[Any], ...]:
    def total(entry: LedgerEntry) -> ColumnElement[Any]:
        return func.coalesce(
            func.sum(case((UsageLedger.entry == entry, UsageLedger.amount), else_=0)), 0
        )

    return (
        total(LedgerEntry.RESERVE).label("reserved"),
        total(LedgerEntry.REFUND).label("refunded"),
        total(LedgerEntry.GRANT).label("granted"),
    )


def utc_day(
    session: AsyncSession, column: ColumnElement[Any] | InstrumentedAttribute[datetime]
) -> ColumnElement[Any]:
    """The UTC day of a timestamp column, as a date, on either database."""
    if dialect_name(session) == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    # SQLite stores UTC as naive text "YYYY-MM-DD HH:MM:SS...": date() takes its day.
    return func.date(column)


@dataclass(frozen=True)
class ReportRow:
    day: date
    user_id: int | None
    reserved: int
    refunded: int
    granted: int


async def report(
    session: AsyncSession, *, guild_id: int | None, since: datetime, user_id: int | None = None
) -> list[ReportRow]:
    """Per UTC day and member, the guild's ledger totals from ``since`` on, newest day first."""
    day = utc_day(session, _attributed_at()).label("day")
    query = (
        select(day, UsageLedger.user_id, *_sums())
        .select_from(UsageLedger)
        .outerjoin(RenderJob, RenderJob.id == UsageLedger.job_id)
        .where(eq_or_null(UsageLedger.guild_id, guild_id), UsageLedger.created_at >= since)
        .where(_attributed_at() >= since)
        .group_by(day, UsageLedger.user_id)
        .order_by(day.desc(), UsageLedger.user_id)
    )
    if user_id is not None:
        query = query.where(UsageLedger.user_id == user_id)
    rows = (await session.execute(query)).all()
    result = []
    for d, uid, reserved, refunded, granted in rows:
        parsed = d if isinstance(d, date) else date.fromisoformat(str(d))
        result.append(ReportRow(parsed, uid, int(reserved), int(refunded), int(granted)))
    return result


async def reservation_times(
    session: AsyncSession,
    *,
    guild_id: int | None,
    user_id: int,
    since: datetime,
    user_keys: Sequence[str] = (),
) -> list[datetime]:
    """When the member's reservations in the guild since ``since`` were made, oldest first
    (refunded ones too: a rate limit counts requests). Deleting a job does not remove them."""
    rows = await session.scalars(
        select(UsageLedger.created_at)
        .where(
            eq_or_null(UsageLedger.guild_id, guild_id),
            member_rows(user_id, user_keys),
            UsageLedger.entry == LedgerEntry.RESERVE,
            UsageLedger.created_at >= since,
        )
        .order_by(UsageLedger.created_at)
    )
    return list(rows)


async def key_rows_of_day(
    session: AsyncSession,
    user_id: int,
    *,
    start: datetime,
    key_for: Callable[[int | None], str],
) -> int:
    """Forget-me's first step: the member's rows attributed to the day starting at ``start``
    trade their user id for ``key_for(guild_id)``. Run it before the member's jobs are
    deleted (attribution goes through them). Returns the number of rows keyed."""
    rows = (
        await session.execute(
            select(UsageLedger.id, UsageLedger.guild_id)
            .outerjoin(RenderJob, RenderJob.id == UsageLedger.job_id)
            .where(
                UsageLedger.user_id == user_id,
                UsageLedger.created_at >= start,
                _attributed_at() >= start,
            )
        )
    ).all()
    return await set_keys(session, rows, key_for)


async def set_keys(
    session: AsyncSession,
    rows: Sequence[Any],
    key_for: Callable[[int | None], str],
    model: KeyedTable = UsageLedger,
) -> int:
    """Give ``rows`` (``(id, guild_id)`` pairs) the key of their guild instead of the member
    id. Returns the number of rows keyed."""
    by_guild: dict[int | None, list[int]] = {}
    for row_id, guild_id in rows:
        by_guild.setdefault(guild_id, []).append(row_id)
    for guild_id, ids in by_guild.items():
        await session.execute(
            update(model).where(model.id.in_(ids)).values(user_id=None, user_key=key_for(guild_id))
        )
    return len(rows)


async def expire_user_keys(
    session: AsyncSession, before: datetime, model: KeyedTable = UsageLedger
) -> int:
    """Clear the forget-me keys of rows written before ``before`` (the start of the current
    UTC day): a key only serves the day it was made for. Returns the rows cleared."""
    result = await session.execute(
        update(model)
        .where(model.user_key.is_not(None), model.created_at < before)
        .values(user_key=None)
    )
    return affected(result)


async def delete_user_data(
    session: AsyncSession, user_id: int, model: KeyedTable = UsageLedger
) -> int:
    """Anonymise the member's rows: the counts stay (guild statistics, abuse limits for the
    rest of the day), the user id goes. Returns the number of rows anonymised."""
    result = await session.execute(
        update(model).where(model.user_id == user_id).values(user_id=None)
    )
    return affected(result)


async def delete_guild_before(session: AsyncSession, guild_id: int, start: datetime) -> int:
    """A removed guild: drop its ledger rows attributed to days before ``start`` (the current
    UTC day); the day's rows stay until the day is over, so removing and re-inviting the bot
    resets no one's usage. Run it before the guild's jobs are deleted (attribution goes
    through them; afterwards every row left is attributed to its own, current, day)."""
    rows = await session.scalars(
        select(UsageLedger.id)
        .outerjoin(RenderJob, RenderJob.id == UsageLedger.job_id)
        .where(UsageLedger.guild_id == guild_id, _attributed_at() < start)
    )
    ids = list(rows)
    if ids:
        await session.execute(delete(UsageLedger).where(UsageLedger.id.in_(ids)))
    return len(ids)


async def delete_guilds_before(
    session: AsyncSession,
    guild_ids: Sequence[int],
    before: datetime,
    model: KeyedTable = UsageLedger,
) -> int:
    """Erase the ledger rows of departed guilds written before ``before`` (the start of the
    current UTC day): the maintenance pass once their day is over."""
    if not guild_ids:
        return 0
    result = await session.execute(
        delete(model).where(model.guild_id.in_(list(guild_ids)), model.created_at < before)
    )
    return affected(result)
