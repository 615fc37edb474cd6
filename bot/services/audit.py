"""The audit log: admin actions in a guild (quota changes, purges, safety policy and prompt
blocklist changes), shown to the guild's admins by ``/avatar-admin audit``.

``record`` writes in the caller's transaction, so an action and its entry commit together.
After an admin's forget-me their entries stay without their id (db/repositories/audit.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import Forbidden, InvalidInput
from db.repositories import audit as repo
from db.session import Database
from db.types import utcnow

MAX_AUDIT_ROWS = 50


@dataclass(frozen=True)
class AuditView:
    when: datetime
    actor_id: int | None
    action: str
    detail: dict[str, Any]


async def record(
    session: AsyncSession,
    guild_id: int,
    actor_id: int | None,
    action: str,
    detail: dict[str, Any],
) -> None:
    await repo.append(
        session, guild_id=guild_id, actor_id=actor_id, action=action, detail=detail, now=utcnow()
    )


class AuditService:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def recent(
        self, guild_id: int, limit: int = 20, *, actor_is_admin: bool
    ) -> list[AuditView]:
        """The guild's latest admin actions, newest first (admins only)."""
        if not actor_is_admin:
            raise Forbidden("Only server managers can do that.")
        if not 1 <= limit <= MAX_AUDIT_ROWS:
            raise InvalidInput(f"limit must be between 1 and {MAX_AUDIT_ROWS}.")
        async with self._db.begin(readonly=True) as session:
            rows = await repo.recent(session, guild_id, limit)
        return [AuditView(r.created_at, r.actor_id, r.action, dict(r.detail or {})) for r in rows]
