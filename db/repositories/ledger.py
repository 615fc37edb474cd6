"""The append-only usage ledger: reservations, refunds and admin grants.

What a member has used is computed from the ledger in SQL, never stored. A refund counts
against the day of the reservation it gives back (through its job's ``created_at``), so a job
reserved at 23:59 and refunded at 00:01 frees a unit of the day it was taken from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Date, case, cast, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from db.models import LedgerEntry, RenderJob, UsageLedger
from db.repositories.common import dialect_name, eq_or_null


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
) -> DayTotals:
    """A member's reserved, refunded and granted units attributed to ``[start, end)``."""
    attributed = _attributed_at()
    row = (
        await session.execute(
            select(*_sums())
            .select_from(UsageLedger)
            .outerjoin(RenderJob, RenderJob.id == UsageLedger.job_id)
            .where(
                eq_or_null(UsageLedger.guild_id, guild_id),
                UsageLedger.user_id == user_id,
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


def _utc_day(session: AsyncSession, column: ColumnElement[Any]) -> ColumnElement[Any]:
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
    day = _utc_day(session, _attributed_at()).label("day")
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


async def delete_user_data(session: AsyncSession, user_id: int) -> int:
    """Anonymise the member's ledger rows: the counts stay (guild statistics, abuse limits
    for the rest of the day), the user id goes. Returns the number of rows anonymised."""
    result = await session.execute(
        update(UsageLedger).where(UsageLedger.user_id == user_id).values(user_id=None)
    )
    return result.rowcount or 0  # type: ignore[attr-defined]


async def delete_guild(session: AsyncSession, guild_id: int) -> int:
    """Drop a removed guild's ledger: its quotas are gone with it."""
    result = await session.execute(delete(UsageLedger).where(UsageLedger.guild_id == guild_id))
    return result.rowcount or 0  # type: ignore[attr-defined]
