"""The audit log of admin actions (per guild), and its part of a member's erasure.

An entry names the acting admin in ``actor_id`` and, for actions on a member (a grant, a
purge), the member in ``detail["member_id"]`` (a string: JSON numbers lose precision on
Discord ids in some clients). Both go on that person's forget-me; the entry stays.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import AuditEntry
from db.repositories.common import affected


async def append(
    session: AsyncSession,
    *,
    guild_id: int,
    actor_id: int | None,
    action: str,
    detail: dict[str, Any],
    now: datetime,
) -> AuditEntry:
    entry = AuditEntry(
        guild_id=guild_id, actor_id=actor_id, action=action[:32], detail=detail, created_at=now
    )
    session.add(entry)
    await session.flush()
    return entry


async def recent(session: AsyncSession, guild_id: int, limit: int) -> list[AuditEntry]:
    rows = await session.scalars(
        select(AuditEntry)
        .where(AuditEntry.guild_id == guild_id)
        .order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())
        .limit(limit)
    )
    return list(rows)


async def delete_user_data(session: AsyncSession, user_id: int) -> int:
    """The admin's actions stay (the guild's record), without who did them; actions on the
    member stay without whom they concerned. Returns the number of entries changed."""
    result = await session.execute(
        update(AuditEntry).where(AuditEntry.actor_id == user_id).values(actor_id=None)
    )
    changed = affected(result)
    about = await session.scalars(
        select(AuditEntry).where(AuditEntry.detail["member_id"].as_string() == str(user_id))
    )
    for entry in about:
        entry.detail = {**entry.detail, "member_id": None}
        changed += 1
    await session.flush()
    return changed


async def delete_guild(session: AsyncSession, guild_id: int) -> int:
    """A removed guild's audit log goes with its settings."""
    result = await session.execute(delete(AuditEntry).where(AuditEntry.guild_id == guild_id))
    return affected(result)
