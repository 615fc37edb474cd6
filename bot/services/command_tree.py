"""The stored hash of the application command tree (``bot_state``), per application.

bot/ui/sync.py decides whether to sync the tree with Discord; the hash it compares against is
kept here, behind the services, so the Discord helpers never touch the database themselves.
"""

from __future__ import annotations

from sqlalchemy import select

from db.models import BotState
from db.session import Database


def _state_key(application_id: int | None) -> str:
    return f"command_tree_hash:{application_id or 0}"


class CommandTreeHashes:
    """Read, write and forget the last synced tree's hash (one row per application)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def stored(self, application_id: int | None) -> str | None:
        async with self._db.begin(readonly=True) as session:
            return await session.scalar(
                select(BotState.value).where(BotState.key == _state_key(application_id))
            )

    async def store(self, application_id: int | None, value: str) -> None:
        async with self._db.begin() as session:
            row = await session.get(BotState, _state_key(application_id))
            if row is None:
                session.add(BotState(key=_state_key(application_id), value=value))
            else:
                row.value = value

    async def forget(self, application_id: int | None) -> None:
        """Force the next start to sync (e.g. after commands were removed by hand)."""
        async with self._db.begin() as session:
            row = await session.get(BotState, _state_key(application_id))
            if row is not None:
                await session.delete(row)


__all__ = ["CommandTreeHashes"]
