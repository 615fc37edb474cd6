"""The audit log: admin actions in a guild (quota changes, purges, safety policy and prompt
blocklist changes), shown to the guild's admins by ``/avatar-admin audit``.

``record`` writes in the caller's transaction, so an action and its entry commit together.
After an admin's forget-me their entries stay without their id (db/repositories/audit.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import Forbidden, InvalidInput
from db.repositories import audit as repo
from db.repositories import guilds as guilds_repo
from db.repositories.common import lock_scope
from db.session import Database
from db.types import utcnow

MAX_AUDIT_ROWS = 50
T = TypeVar("T")


def require_admin(actor_is_admin: bool) -> None:
    """Every admin-only service call starts here: the cogs check permissions too, but a service
    must not trust its caller to have done so."""
    if not actor_is_admin:
        raise Forbidden("Only server managers can do that.")


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


async def set_guild_setting(
    database: Database,
    guild_id: int,
    column: str,
    value: T,
    *,
    current: Callable[[AsyncSession, int], Awaitable[T]],
    actor_id: int | None,
    action: str,
    detail_key: str,
) -> T:
    """Set one guild setting column and record the change with its previous value (as
    ``current`` reads it) in the audit log, in one transaction serialised per guild."""
    async with database.begin() as session:
        await lock_scope(session, guild_id)
        before = await current(session, guild_id)
        await guilds_repo.update_settings(session, guild_id, {column: value})
        await record(session, guild_id, actor_id, action, {detail_key: value, "before": before})
    return value


class AuditService:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def recent(
        self, guild_id: int, limit: int = 20, *, actor_is_admin: bool
    ) -> list[AuditView]:
        """The guild's latest admin actions, newest first (admins only)."""
        require_admin(actor_is_admin)
        if not 1 <= limit <= MAX_AUDIT_ROWS:
            raise InvalidInput(f"limit must be between 1 and {MAX_AUDIT_ROWS}.")
        async with self._db.begin(readonly=True) as session:
            rows = await repo.recent(session, guild_id, limit)
        return [AuditView(r.created_at, r.actor_id, r.action, dict(r.detail or {})) for r in rows]
