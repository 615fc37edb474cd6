"""Syncing the application command tree only when it changed.

Discord allows 200 command creations a day per guild; a bot that syncs on every start burns
through that during a crash loop. The tree's canonical JSON is hashed and the hash kept in
the ``bot_state`` table, per application (bot/services/command_tree.py): a start whose tree
matches the stored hash makes no call at all.

``/avatar`` offers a user install (README: "In DMs and anywhere"), which Discord accepts only
when the application has User Install turned on in the developer portal. When Discord refuses
the commands, they are synced again for server installs only, with one warning line for the
operator: the bot starts with every command in servers and DMs instead of none at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Protocol

import discord
from discord import app_commands

logger = logging.getLogger(__name__)


class TreeHashStore(Protocol):
    """Where the last synced tree's hash is kept (bot/services/command_tree.py)."""

    async def stored(self, application_id: int | None) -> str | None: ...

    async def store(self, application_id: int | None, value: str) -> None: ...


def tree_payload(tree: app_commands.CommandTree[Any]) -> list[dict[str, Any]]:
    """What ``tree.sync()`` would send for the global commands, in a stable order."""
    commands = [command.to_dict(tree) for command in tree.get_commands()]
    return sorted(commands, key=lambda c: (c.get("type", 1), c["name"]))


def tree_hash(tree: app_commands.CommandTree[Any]) -> str:
    canonical = json.dumps(tree_payload(tree), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def sync_if_changed(
    tree: app_commands.CommandTree[Any], hashes: TreeHashStore, application_id: int | None
) -> bool:
    """Sync the global commands when their hash differs from the stored one.

    Returns True when a sync call was made. The hash is stored only after Discord accepted
    the commands, so a failed sync is retried at the next start.
    """
    current = tree_hash(tree)
    if await hashes.stored(application_id) == current:
        logger.info("command tree unchanged (%s), not syncing", current[:12])
        return False
    try:
        synced = await tree.sync()
    except discord.HTTPException as exc:
        if exc.status != 400 or not _guild_install_only(tree):
            raise
        logger.warning(
            "Discord refused the commands (%s); synced them for server installs only. Turn on "
            "User Install (developer portal, Installation) for /avatar in members' own installs.",
            exc.text or exc,
        )
        # The full tree's hash is not stored: the next start tries the user install again.
        current = tree_hash(tree)
        synced = await tree.sync()
    await hashes.store(application_id, current)
    logger.info("synced %d commands (tree %s)", len(synced), current[:12])
    return True


def _guild_install_only(tree: app_commands.CommandTree[Any]) -> bool:
    """Drop the user install from every command that offers it; False when none did."""
    changed = False
    for command in tree.get_commands():
        installs = getattr(command, "allowed_installs", None)
        if installs is not None and installs.user:
            command.allowed_installs = app_commands.AppInstallationType(guild=True, user=False)
            changed = True
    return changed


__all__ = ["TreeHashStore", "sync_if_changed", "tree_hash", "tree_payload"]
