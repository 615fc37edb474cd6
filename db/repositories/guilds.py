"""Guild settings rows (quota overrides; NULL columns fall back to the defaults)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import CompoundSelect, delete, select, union
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import AuditEntry, CountedEvent, DepartedGuild, GuildSettings, RenderJob, UsageLedger
from db.repositories.common import affected


async def get(session: AsyncSession, guild_id: int) -> GuildSettings | None:
    return await session.get(GuildSettings, guild_id)


async def update_settings(
    session: AsyncSession, guild_id: int, values: dict[str, Any]
) -> GuildSettings:
    """Set the given columns (None resets one to the default); creates the row if needed.

    Callers serialise per guild (``lock_scope``), so get-then-insert cannot race.
    """
    row = await session.get(GuildSettings, guild_id, populate_existing=True)
    if row is None:
        row = GuildSettings(guild_id=guild_id, **values)
        session.add(row)
    else:
        for name, value in values.items():
            setattr(row, name, value)
    await session.flush()
    return row


async def delete_guild(session: AsyncSession, guild_id: int) -> int:
    result = await session.execute(delete(GuildSettings).where(GuildSettings.guild_id == guild_id))
    return affected(result)


async def stored_guild_ids(session: AsyncSession) -> set[int]:
    """Every guild some row is kept for: settings, jobs, usage, audit log (what
    ``PrivacyService.guild_removed`` erases). Avatars belong to members, not guilds."""
    query: CompoundSelect[Any] = union(
        select(GuildSettings.guild_id),
        select(RenderJob.guild_id).where(RenderJob.guild_id.is_not(None)),
        select(UsageLedger.guild_id).where(UsageLedger.guild_id.is_not(None)),
        select(AuditEntry.guild_id),
        select(CountedEvent.guild_id).where(CountedEvent.guild_id.is_not(None)),
    )
    return {int(guild_id) for guild_id in (await session.execute(query)).scalars()}


async def mark_departed(session: AsyncSession, guild_id: int, now: datetime) -> None:
    """Remember that the guild removed the bot (the first removal counts: a repeated
    ``guild_removed`` never extends the retention)."""
    if await session.get(DepartedGuild, guild_id) is None:
        session.add(DepartedGuild(guild_id=guild_id, removed_at=now))
        await session.flush()


async def departed(session: AsyncSession) -> dict[int, datetime]:
    """Every departed guild and when it removed the bot."""
    rows = (await session.execute(select(DepartedGuild.guild_id, DepartedGuild.removed_at))).all()
    return {int(guild_id): removed_at for guild_id, removed_at in rows}


async def returned(session: AsyncSession, guild_ids: Collection[int]) -> int:
    """The guilds added the bot again: their kept data is live again (never erased)."""
    if not guild_ids:
        return 0
    result = await session.execute(
        delete(DepartedGuild).where(DepartedGuild.guild_id.in_(list(guild_ids)))
    )
    return affected(result)
