"""Guilds that removed the bot: what is kept, and for how long.

Removing the bot from a guild (``PrivacyService.guild_removed``) erases the guild's settings,
jobs, prompts and images at once, but keeps two things, so that removing and re-inviting the
bot is no way to reset the day's quotas or hide what admins did:

- the usage ledger and counted events of the current UTC day (counts per member: renders
  reserved, refunded, granted, withheld), until the day is over: a re-invited bot counts the
  day on;
- the audit log (admin actions, cool-downs), for ``Settings.audit_retention_days`` (30 by
  default).

Nothing else: no prompt, image or setting. A member's forget-me still reaches both (their
ledger rows lose their id, the audit entries their id). The guild is remembered in
``departed_guilds``; when it adds the bot again the mark goes (``on_guild_join``, or at the
next start when the gateway lists the guild) and its kept rows are live data again.
``erase_expired`` is the maintenance pass (``JobService.purge_expired``, every
``maintenance_seconds``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from bot.services.ledger import day_bounds
from db.repositories import audit as audit_repo
from db.repositories import counted as counted_repo
from db.repositories import guilds as guilds_repo
from db.repositories import ledger as ledger_repo

logger = logging.getLogger(__name__)

DEFAULT_AUDIT_RETENTION = timedelta(days=30)


@dataclass(frozen=True)
class DepartedErasure:
    ledger_rows: int = 0
    audit_entries: int = 0
    guilds_forgotten: int = 0


async def erase_expired(
    session: AsyncSession, now: datetime, audit_retention: timedelta
) -> DepartedErasure:
    """Erase what departed guilds keep once its time is over: ledger rows of days that are
    over, and the whole audit log (with the mark) ``audit_retention`` after the removal."""
    departed = await guilds_repo.departed(session)
    if not departed:
        return DepartedErasure()
    start = day_bounds(now)[0]
    ledger = await ledger_repo.delete_guilds_before(session, list(departed), start)
    ledger += await counted_repo.delete_guilds_before(session, list(departed), start)
    expired = [g for g, removed_at in departed.items() if removed_at <= now - audit_retention]
    audit = 0
    for guild_id in expired:
        audit += await audit_repo.delete_guild(session, guild_id)
    await guilds_repo.returned(session, expired)
    result = DepartedErasure(ledger, audit, len(expired))
    if ledger or expired:
        logger.info("departed guilds: erased %s", result)
    return result
