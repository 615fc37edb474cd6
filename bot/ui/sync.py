"""Syncing the application command tree only when it changed.

Discord allows 200 command creations a day per guild; a bot that syncs on every start burns
through that during a crash loop. The tree's canonical JSON is hashed and the hash kept in
the ``bot_state`` table, per application: a start whose tree matches the stored hash makes no
call at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from discord import app_commands
from sqlalchemy import select

from db.models import BotState
from db.session import Database

logger = logging.getLogger(__name__)


def tree_payload(tree: app_commands.CommandTree[Any]) -> list[dict[str, Any]]:
    """What ``tree.sync()`` would send for the global commands, in a stable order."""
    commands = [command.to_dict(tree) for command in tree.get_commands()]
    return sorted(commands, key=lambda c: (c.get("type", 1), c["name"]))


def tree_hash(tree: app_commands.CommandTree[Any]) -> str:
    canonical = json.dumps(tree_payload(tree), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _state_key(application_id: int | None) -> str:
    return f"command_tree_hash:{application_id or 0}"


async def stored_hash(database: Database, application_id: int | None) -> str | None:
    async with database.begin(readonly=True) as session:
        row = await session.scalar(
            select(BotState.value).where(BotState.key == _state_key(application_id))
        )
    return row


async def store_hash(database: Database, application_id: int | None, value: str) -> None:
    async with database.begin() as session:
        row = await session.get(BotState, _state_key(application_id))
        if row is None:
            session.add(BotState(key=_state_key(application_id), value=value))
        else:
            row.value = value


async def sync_if_changed(
    tree: app_commands.CommandTree[Any], database: Database, application_id: int | None
) -> bool:
    """Sync the global commands when their hash differs from the stored one.

    Returns True when a sync call was made. The hash is stored only after Discord accepted
    the commands, so a failed sync is retried at the next start.
    """
    current = tree_hash(tree)
    if await stored_hash(database, application_id) == current:
        logger.info("command tree unchanged (%s), not syncing", current[:12])
        return False
    synced = await tree.sync()
    await store_hash(database, application_id, current)
    logger.info("synced %d commands (tree %s)", len(synced), current[:12])
    return True


async def forget_hash(database: Database, application_id: int | None) -> None:
    """Force the next start to sync (e.g. after commands were removed by hand)."""
    async with database.begin() as session:
        row = await session.get(BotState, _state_key(application_id))
        if row is not None:
            await session.delete(row)


__all__ = ["forget_hash", "sync_if_changed", "tree_hash", "tree_payload"]
