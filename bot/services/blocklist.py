"""A guild's changes to the prompt blocklist (``/avatar-admin blocklist add|remove|show``).

``add`` blocks a word or ``/pattern/`` in the guild (or re-blocks a default entry the guild had
lifted); ``remove`` takes back one of the guild's own entries, or lifts a ``[sexual]`` entry of
the default file for pet and object avatars (see bot/services/prompt_policy.py). The default
``[minors]``, ``[always]`` and ``[undress]`` entries and the operator's entries cannot be
lifted. Each change is written to the audit log in the same transaction. Admins only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.errors import InvalidInput
from bot.services.audit import record, require_admin
from bot.services.prompt_policy import (
    ALWAYS,
    CATEGORIES,
    MAX_GUILD_TERMS,
    MINORS,
    UNDRESS,
    PromptPolicy,
    term_key,
    validate_term,
)
from bot.services.quotas import QuotaService
from db.repositories import guilds as guilds_repo
from db.repositories.common import lock_scope
from db.session import Database

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlocklistView:
    """What a guild's prompt policy is made of."""

    blocked: tuple[str, ...]  # the guild's own entries
    lifted: tuple[str, ...]  # default [sexual] entries the guild lifted
    defaults: dict[str, int]  # entries per default section
    operator: int  # entries set by the bot's operator (not shown: not the guild's)


@dataclass(frozen=True)
class BlocklistChange:
    """What ``add`` or ``remove`` did (``action``: blocked, unblocked, lifted, restored)."""

    term: str
    action: str
    view: BlocklistView


class BlocklistService:
    def __init__(self, database: Database, quotas: QuotaService, policy: PromptPolicy) -> None:
        self._db = database
        self._quotas = quotas
        self._policy = policy

    async def show(self, guild_id: int, *, actor_is_admin: bool) -> BlocklistView:
        require_admin(actor_is_admin)
        async with self._db.begin(readonly=True) as session:
            quotas = await self._quotas.quotas_in(session, guild_id)
        return self._view(quotas.blocked_terms, quotas.allowed_terms)

    async def add(
        self, guild_id: int, term: str, *, actor_id: int | None, actor_is_admin: bool
    ) -> BlocklistChange:
        """Block ``term`` in the guild; a lifted default entry is restored instead."""
        require_admin(actor_is_admin)
        key = validate_term(term)
        async with self._db.begin() as session:
            await lock_scope(session, guild_id)
            quotas = await self._quotas.quotas_in(session, guild_id)
            blocked, allowed = list(quotas.blocked_terms), list(quotas.allowed_terms)
            if key in {term_key(t) for t in allowed}:
                allowed = [t for t in allowed if term_key(t) != key]
                action = "restored"
            elif key in {term_key(t) for t in blocked}:
                raise InvalidInput("That is already on this server's blocklist.")
            else:
                if len(blocked) >= MAX_GUILD_TERMS:
                    raise InvalidInput(
                        f"This server already blocks {MAX_GUILD_TERMS} words or patterns; "
                        "remove one first."
                    )
                blocked.append(key)
                action = "blocked"
            await guilds_repo.update_settings(
                session, guild_id, {"blocked_terms": blocked, "allowed_terms": allowed}
            )
            await record(
                session, guild_id, actor_id, "blocklist.add", {"term": key, "action": action}
            )
        logger.info("guild %s blocklist: %s %r", guild_id, action, key)
        return BlocklistChange(key, action, self._view(blocked, allowed))

    async def remove(
        self, guild_id: int, term: str, *, actor_id: int | None, actor_is_admin: bool
    ) -> BlocklistChange:
        """Take back one of the guild's entries, or lift a default ``[sexual]`` entry."""
        require_admin(actor_is_admin)
        key = term_key(str(term))
        if not key:
            raise InvalidInput("The word or pattern cannot be empty.")
        async with self._db.begin() as session:
            await lock_scope(session, guild_id)
            quotas = await self._quotas.quotas_in(session, guild_id)
            blocked, allowed = list(quotas.blocked_terms), list(quotas.allowed_terms)
            if key in {term_key(t) for t in blocked}:
                blocked = [t for t in blocked if term_key(t) != key]
                action = "unblocked"
            elif self._in_default(key, MINORS) or self._in_default(key, ALWAYS):
                raise InvalidInput(
                    "That entry of the default list protects minors or is never allowed; "
                    "it cannot be lifted."
                )
            elif self._policy.is_liftable(key):
                if key in {term_key(t) for t in allowed}:
                    raise InvalidInput("That default entry is already lifted on this server.")
                if len(allowed) >= MAX_GUILD_TERMS:
                    raise InvalidInput(f"At most {MAX_GUILD_TERMS} default entries can be lifted.")
                allowed.append(key)
                action = "lifted"
            elif self._in_default(key, UNDRESS):
                raise InvalidInput(
                    "That entry of the default list keeps avatars of people clothed (it is "
                    "read in negative prompts); it cannot be lifted."
                )
            elif key in {term_key(t) for t in self._policy.operator}:
                raise InvalidInput(
                    "That entry is set by the bot's operator; it cannot be removed here."
                )
            else:
                raise InvalidInput(
                    "That is neither on this server's blocklist nor an entry of the default list."
                )
            await guilds_repo.update_settings(
                session, guild_id, {"blocked_terms": blocked, "allowed_terms": allowed}
            )
            await record(
                session, guild_id, actor_id, "blocklist.remove", {"term": key, "action": action}
            )
        logger.info("guild %s blocklist: %s %r", guild_id, action, key)
        return BlocklistChange(key, action, self._view(blocked, allowed))

    def _in_default(self, key: str, category: str) -> bool:
        return any(term_key(e) == key for e in self._policy.defaults.entries(category))

    def _view(
        self, blocked: list[str] | tuple[str, ...], allowed: list[str] | tuple[str, ...]
    ) -> BlocklistView:
        return BlocklistView(
            blocked=tuple(blocked),
            lifted=tuple(allowed),
            defaults={c: len(self._policy.defaults.entries(c)) for c in CATEGORIES},
            operator=len(self._policy.operator),
        )


__all__ = ["BlocklistChange", "BlocklistService", "BlocklistView"]
