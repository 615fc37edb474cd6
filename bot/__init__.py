"""avatarbot's Discord side: the bot, its cogs, and the services every front end uses.

Importing ``bot`` (or ``bot.services``) must not import discord.py or torch: ``create_bot`` is
resolved lazily so the service layer stays free of both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.app import create_bot

__all__ = ["create_bot"]


def __getattr__(name: str) -> Any:
    if name == "create_bot":
        from bot.app import create_bot

        return create_bot
    raise AttributeError(name)
