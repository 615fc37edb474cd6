"""Privacy leftovers of the audit (finding 8): a grant's author, user ids in logs, guilds left
while offline, and a WAL checkpoint that a reader blocked."""

from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from bot.services.container import Services
from db.models import AuditEntry, Base, GuildSettings, RenderJob, UsageLedger
from db.types import utcnow
from tests.fixtures.services import CHANNEL, GUILD, make_avatar

ADMIN = 731_000_000_000_000_001
MEMBER = 731_000_000_000_000_002
OTHER_GUILD = GUILD + 1


async def _every_value(services: Services) -> str:
    """Every value of every row of every table, as one text (ids, JSON, notes)."""
    out = []
    async with services.database.begin(readonly=True) as session:
        for table in Base.metadata.sorted_tables:
            rows = await session.execute(text(f'SELECT * FROM "{table.name}"'))
            out += [repr(tuple(row)) for row in rows]
    return "\n".join(out)


async def test_an_admins_grant_leaves_no_trace_of_them_after_their_forget_me(
    services: Services,
) -> None:
    await services.quotas.grant(
        GUILD, MEMBER, 2, actor_is_admin=True, actor_id=ADMIN, note="contest winner"
    )
    assert str(ADMIN) in await _every_value(services)  # in the audit log, as the actor

    await services.privacy.forget_me(ADMIN)
    everything = await _every_value(services)
    assert str(ADMIN) not in everything
    assert "contest winner" in everything  # the grant and its note stay, without its author
    usage = await services.quotas.usage(GUILD, MEMBER)
    assert usage.limit == usage.used + usage.remaining  # still counts for the member

    await services.privacy.forget_me(MEMBER)
    assert str(MEMBER) not in await _every_value(services)


async def test_logs_above_debug_carry_no_user_id(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    name = await make_avatar(services, MEMBER)
    ticket = await services.renders.request(MEMBER, GUILD, CHANNEL, name, "a portrait")
    assert await services.dispatcher.run_once() == ticket.job_id
    again = await services.renders.reroll(MEMBER, ticket.job_id)
    await services.renders.cancel(MEMBER, again.job_id)
    await services.renders.delete(MEMBER, ticket.job_id)
    await services.quotas.grant(GUILD, MEMBER, 1, actor_is_admin=True, actor_id=ADMIN)
    await services.privacy.purge_member(GUILD, MEMBER, actor_is_admin=True, actor_id=ADMIN)
    await services.avatars.delete(MEMBER, name)
    await services.privacy.forget_me(MEMBER)

    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert loud  # the events are logged...
    assert [m for m in loud if str(MEMBER) in m or str(ADMIN) in m] == []  # ...without members
    quiet = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(str(MEMBER) in m for m in quiet)  # troubleshooting at DEBUG still can


async def _guild_rows(
    services: Services,
    guild_id: int,
    models: tuple[type[GuildSettings | RenderJob | UsageLedger | AuditEntry], ...] = (
        GuildSettings,
        RenderJob,
        UsageLedger,
        AuditEntry,
    ),
) -> int:
    total = 0
    async with services.database.begin(readonly=True) as session:
        for model in models:
            query = select(func.count()).select_from(model).where(model.guild_id == guild_id)
            total += int(await session.scalar(query) or 0)
    return total


async def test_purge_absent_guilds_only_erases_guilds_this_process_serves(
    services: Services,
) -> None:
    name = await make_avatar(services, MEMBER)
    for guild in (GUILD, OTHER_GUILD):
        await services.quotas.set(guild, actor_is_admin=True, renders_per_day=5)
        await services.renders.request(MEMBER, guild, CHANNEL, name, "a portrait")
    assert await _guild_rows(services, GUILD) and await _guild_rows(services, OTHER_GUILD)

    # Zero guilds seen (an outage, a wrong token): nothing goes.
    assert await services.privacy.purge_absent_guilds([]) == []
    assert await _guild_rows(services, GUILD) and await _guild_rows(services, OTHER_GUILD)

    # OTHER_GUILD belongs to a shard another process serves: it is not this one's to judge.
    erased = await services.privacy.purge_absent_guilds(
        [12345], covers=lambda guild_id: guild_id != OTHER_GUILD
    )
    assert [e.guild_id for e in erased] == [GUILD]
    # Settings and jobs go at once; the day's usage and the audit log are kept a while
    # (bot/services/departed.py), then the maintenance pass erases them.
    assert await _guild_rows(services, GUILD, (GuildSettings, RenderJob)) == 0
    assert await _guild_rows(services, OTHER_GUILD) > 0
    assert await services.privacy.purge_absent_guilds([OTHER_GUILD]) == []
    await services.jobs.purge_expired(utcnow() + timedelta(days=31))
    assert await _guild_rows(services, GUILD) == 0
    assert await _guild_rows(services, OTHER_GUILD) > 0


def _wal_size(services: Services) -> int:
    wal = Path(f"{services.database.url.database}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_a_checkpoint_blocked_by_a_reader_is_retried_by_maintenance(
    services: Services,
) -> None:
    if services.database.dialect != "sqlite":
        pytest.skip("PostgreSQL has no WAL file of ours to checkpoint")
    name = await make_avatar(services, MEMBER)
    ticket = await services.renders.request(MEMBER, GUILD, CHANNEL, name, "a portrait")
    assert await services.dispatcher.run_once() == ticket.job_id

    reader = sqlite3.connect(str(services.database.url.database))
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM photos").fetchone()  # holds an old snapshot
        await services.privacy.forget_me(MEMBER)
        assert services.database.checkpoint_pending
        assert _wal_size(services) > 0  # the erased rows' old pages are still in the WAL
    finally:
        reader.rollback()
        reader.close()

    await services.jobs.purge_expired()  # the job loop's maintenance
    assert not services.database.checkpoint_pending
    assert _wal_size(services) == 0
