"""Guild settings rows (quota overrides; NULL columns fall back to the defaults)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import GuildSettings


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
    return result.rowcount or 0  # type: ignore[attr-defined]
