"""Keyed hashes that keep an erased member's usage of the current UTC day, and nothing more.

After ``/avatar forget-me`` the member's ledger rows lose their user id (bot/services/privacy.py).
Without more, their renders of today would stop counting and erasing one's data would be a
fresh quota. So forget-me stores, on the member's rows attributed to **today** only,
``user_key = HMAC-SHA256(secret, "<guild>:<member>:<YYYY-MM-DD>")`` (hex). Counting a member's
usage (``used_today``, the per-minute render limit) matches their rows by ``user_id`` or by the
key of (guild, member, today), which only someone who already knows the member id and the
secret can compute. The key changes with the guild and the day, so rows of two guilds or two
days cannot be linked, and the daily maintenance (``JobService.purge_expired`` →
``ledger.expire_user_keys``) clears every key of an earlier day: older rows keep only counts.

The secret: derived from the data key when one is configured (``DataCipher.derive``; the
secret is then not in the database, so a copy of the database alone cannot test member ids
against the keys), else 32 random bytes created once per installation in ``bot_state``
(``usage_key_secret``, first written by the first forget-me, in its transaction). Matching
also tries the old data keys and the stored secret, so a key rotation during the day does not
free anyone's usage.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.services.crypto import DataCipher
from bot.services.ledger import day_bounds
from db.models import BotState
from db.repositories.common import dialect_name
from db.types import utcnow

STATE_KEY = "usage_key_secret"
PURPOSE = b"avatarbot usage_ledger.user_key v1"


def user_key(secret: bytes, guild_id: int | None, user_id: int, now: datetime) -> str:
    """The hex key of (guild, member, UTC day of ``now``) under ``secret``."""
    day = day_bounds(now)[0].date().isoformat()
    guild = "-" if guild_id is None else str(guild_id)
    message = f"{guild}:{user_id}:{day}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class UsageKeys:
    """The installation's user-key secrets (see the module docstring)."""

    def __init__(self, cipher: DataCipher | None = None) -> None:
        self._derived = cipher.derive(PURPOSE) if cipher is not None else ()
        self._stored: bytes | None = None

    async def _load(self, session: AsyncSession) -> bytes | None:
        if self._stored is None:
            value = await session.scalar(select(BotState.value).where(BotState.key == STATE_KEY))
            if value is not None:
                self._stored = bytes.fromhex(value)
        return self._stored

    async def _create(self, session: AsyncSession) -> bytes:
        """The stored secret, written in the caller's transaction if there is none yet (a
        concurrent first writer wins; both then read its value)."""
        stored = await self._load(session)
        if stored is not None:
            return stored
        values = {"key": STATE_KEY, "value": secrets.token_hex(32), "updated_at": utcnow()}
        insert = pg_insert if dialect_name(session) == "postgresql" else sqlite_insert
        await session.execute(insert(BotState).values(**values).on_conflict_do_nothing())
        stored = await self._load(session)
        assert stored is not None
        return stored

    async def writing_secret(self, session: AsyncSession) -> bytes:
        """The secret new keys are made with (needs a write transaction)."""
        if self._derived:
            return self._derived[0]
        return await self._create(session)

    async def keys_for(
        self, session: AsyncSession, guild_id: int | None, user_id: int, now: datetime
    ) -> tuple[str, ...]:
        """Every key the member's rows of today may carry (read-only; none before the first
        forget-me of the installation)."""
        found: Sequence[bytes] = self._derived
        stored = await self._load(session)
        if stored is not None:
            found = (*found, stored)
        return tuple(user_key(s, guild_id, user_id, now) for s in found)

    async def keys_between(
        self,
        session: AsyncSession,
        guild_id: int | None,
        user_id: int,
        since: datetime,
        now: datetime,
    ) -> list[str]:
        """The member's keys of every UTC day from ``since`` to ``now`` (a window of at most a
        day, such as an hour that began yesterday)."""
        keys = {
            *await self.keys_for(session, guild_id, user_id, since),
            *await self.keys_for(session, guild_id, user_id, now),
        }
        return sorted(keys)
