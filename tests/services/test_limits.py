"""Issue 11, points 4 and 5: no quota escape through forget-me or deletions, abuse limits
with the time to retry, and the audit log of admin actions (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.errors import QueueFull, QuotaExceeded, RateLimited
from bot.services.container import Services, build_services
from bot.services.crypto import DataCipher, parse_key
from bot.services.ledger import day_bounds
from bot.services.usage_keys import STATE_KEY, UsageKeys, user_key
from db.models import AuditEntry, BotState, CountedEvent, RenderJob, UsageLedger
from db.session import Database
from db.types import utcnow
from tests.fixtures.services import CHANNEL, GUILD, make_avatar, service_settings


async def _ledger(services: Services) -> list[tuple[int | None, int | None, str | None]]:
    async with services.database.begin(readonly=True) as session:
        rows = await session.execute(
            select(UsageLedger.guild_id, UsageLedger.user_id, UsageLedger.user_key).order_by(
                UsageLedger.id
            )
        )
        return [tuple(r) for r in rows.all()]  # type: ignore[misc]


async def _jobs(services: Services, user_id: int) -> int:
    async with services.database.begin(readonly=True) as session:
        count = await session.scalar(
            select(func.count()).select_from(RenderJob).where(RenderJob.user_id == user_id)
        )
        return int(count or 0)


async def _shift(
    services: Services,
    model: type[UsageLedger] | type[RenderJob] | type[CountedEvent],
    by: timedelta,
) -> None:
    """Move every row's ``created_at`` back by ``by`` (in Python: SQLite stores text)."""
    async with services.database.begin() as session:
        for row in (await session.scalars(select(model))).all():
            row.created_at = row.created_at - by


async def _to_yesterday(services: Services) -> None:
    """Move every ledger row and job a day back, as if the UTC day had turned."""
    await _shift(services, UsageLedger, timedelta(days=1))
    await _shift(services, RenderJob, timedelta(days=1))


async def test_forget_me_keeps_the_days_usage_and_only_for_the_day(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await make_avatar(services, 8, "Max")
    await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=3)
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "a")
    await services.renders.request(7, GUILD + 1, CHANNEL, "Mia", "elsewhere")
    await services.renders.request(8, GUILD, CHANNEL, "Max", "b")
    # Rendered: a job forget-me finds still queued would be refunded (test_forget_me_locks).
    while await services.dispatcher.run_once() is not None:
        pass
    before = await services.quotas.usage(GUILD, 7)
    assert (before.used, before.limit) == (1, 3)

    await services.privacy.forget_me(7)
    after = await services.quotas.usage(GUILD, 7)
    assert (after.used, after.limit, after.remaining) == (1, 3, 2)  # "1 of 3 used", still
    assert (await services.quotas.usage(GUILD + 1, 7)).used == 1
    assert (await services.quotas.usage(GUILD, 8)).used == 1  # another member: untouched
    ledger = await _ledger(services)
    assert all(uid != 7 for _, uid, _ in ledger)
    keys = [key for _, uid, key in ledger if uid is None]
    # One key per guild, not the member id in any readable form, and only today's rows.
    assert len(keys) == 2 and len(set(keys)) == 2
    assert all(k is not None and len(k) == 64 and k != "7" for k in keys)

    # Starting over does not give a fresh quota: 2 more renders today, then refused.
    await make_avatar(services, 7, "Mia")
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "c")
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "d")
    with pytest.raises(QuotaExceeded):
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "e")
    # The admin report keeps the counts, the erased part as "erased" (user id None).
    report = await services.quotas.report(GUILD, 1, actor_is_admin=True)
    assert sorted((r.user_id or 0, r.reserved) for r in report.rows) == [(0, 1), (7, 2), (8, 1)]

    # The next day the keys are cleared by the maintenance step: counts only, usage 0.
    await _to_yesterday(services)
    await services.jobs.purge_expired()
    assert all(key is None for _, _, key in await _ledger(services))
    assert (await services.quotas.usage(GUILD, 7)).used == 0
    yesterday = await services.quotas.report(GUILD, 2, actor_is_admin=True)
    assert sorted((r.user_id or 0, r.reserved) for r in yesterday.rows) == [(0, 1), (7, 2), (8, 1)]


async def test_the_secret_is_created_once_and_a_data_key_replaces_it(
    services: Services, database: Database, tmp_path: Path, tiny_engine_port
) -> None:  # type: ignore[no-untyped-def]
    async def stored() -> list[str]:
        async with database.begin(readonly=True) as session:
            return list(
                await session.scalars(select(BotState.value).where(BotState.key == STATE_KEY))
            )

    assert await stored() == []  # nothing until the first forget-me
    await services.privacy.forget_me(1)
    await services.privacy.forget_me(2)
    assert len(secret := await stored()) == 1 and len(bytes.fromhex(secret[0])) == 32

    # With a data key the secret is derived from it (not stored) and survives a rotation.
    key1 = "one:" + base64.urlsafe_b64encode(os.urandom(32)).decode()
    key2 = "two:" + base64.urlsafe_b64encode(os.urandom(32)).decode()
    keyed = await build_services(
        service_settings(tmp_path, data_key=key1), database, tiny_engine_port
    )
    await make_avatar(keyed, 7, "Mia")
    await keyed.renders.request(7, GUILD, CHANNEL, "Mia", "a")
    await keyed.dispatcher.run_once()  # rendered: not refunded by forget-me
    await keyed.privacy.forget_me(7)
    assert (await keyed.quotas.usage(GUILD, 7)).used == 1
    cipher = DataCipher(parse_key(key1))
    derived = UsageKeys(cipher)
    async with database.begin(readonly=True) as session:
        expected = await derived.keys_for(session, GUILD, 7, utcnow())
    assert expected[0] == user_key(
        cipher.derive(b"avatarbot usage_ledger.user_key v1")[0], GUILD, 7, utcnow()
    )
    assert [k for _, uid, k in await _ledger(keyed) if k] == [expected[0]]
    rotated = await build_services(
        service_settings(tmp_path, data_key=key2, old_data_keys=key1), database, tiny_engine_port
    )
    assert (await rotated.quotas.usage(GUILD, 7)).used == 1
    await keyed.aclose()
    await rotated.aclose()


async def test_deleting_renders_or_avatars_keeps_usage_and_limits(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=5, renders_per_minute=2)
    first = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a")
    assert await services.dispatcher.run_once() == first.job_id
    await services.renders.delete(7, first.job_id)  # finished: its unit stays spent
    assert (await services.quotas.usage(GUILD, 7)).used == 1
    await services.avatars.delete(7, "Mia")
    assert (await services.quotas.usage(GUILD, 7)).used == 1
    await make_avatar(services, 7, "Mia")
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "b")
    # The deleted render still counts towards the per-minute limit.
    with pytest.raises(RateLimited):
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "c")


async def test_render_rate_limit_says_when_to_retry(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await make_avatar(services, 8, "Max")
    await services.quotas.set(GUILD, actor_is_admin=True, renders_per_minute=2)
    first = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a")
    await services.renders.reroll(7, first.job_id)  # rerolls count
    jobs = await _jobs(services, 7)
    with pytest.raises(RateLimited) as refused:
        await services.renders.variations(7, first.job_id)
    with pytest.raises(RateLimited):
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "b")
    assert await _jobs(services, 7) == jobs  # nothing created, nothing reserved
    assert (await services.quotas.usage(GUILD, 7)).used == 2
    async with services.database.begin(readonly=True) as session:
        oldest = await session.scalar(
            select(func.min(UsageLedger.created_at)).where(UsageLedger.user_id == 7)
        )
    assert oldest is not None
    assert refused.value.retry_at == oldest + timedelta(minutes=1, seconds=1)
    assert "2 renders a minute" in refused.value.message
    # Another member and another guild have their own counts.
    await services.renders.request(8, GUILD, CHANNEL, "Max", "c")
    await services.renders.request(7, GUILD + 1, CHANNEL, "Mia", "d")
    # A minute later (rows moved back) the member may render again.
    await _shift(services, UsageLedger, timedelta(seconds=61))
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "e")


async def test_creation_rate_limit_counts_across_guilds_and_deletions(services: Services) -> None:
    await services.quotas.set(GUILD, actor_is_admin=True, creates_per_hour=2)
    await make_avatar(services, 7, "One")
    await make_avatar(services, 7, "Two", guild=GUILD + 1)  # another guild: still the member's
    await services.avatars.delete(7, "One")
    await services.avatars.delete(7, "Two")
    with pytest.raises(RateLimited) as refused:
        await make_avatar(services, 7, "Three")
    async with services.database.begin(readonly=True) as session:
        oldest = await session.scalar(
            select(func.min(RenderJob.created_at)).where(RenderJob.kind == "encode")
        )
    assert oldest is not None
    assert refused.value.retry_at == oldest + timedelta(hours=1, seconds=1)
    assert [a.name for a in await services.avatars.list(7)] == []
    await make_avatar(services, 8, "Max")  # another member is not limited
    await _shift(services, RenderJob, timedelta(minutes=61))
    await _shift(services, CountedEvent, timedelta(minutes=61))
    await make_avatar(services, 7, "Three")


async def test_queue_caps_say_when_to_retry(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await make_avatar(services, 8, "Max")
    await make_avatar(services, 9, "Zoe")
    await services.quotas.set(GUILD, actor_is_admin=True, queued_per_member=1, queued_per_guild=2)
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "a")
    with pytest.raises(QueueFull, match="when one of them finishes") as mine:
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "b")
    assert mine.value.retry_at is None
    await services.renders.request(8, GUILD, CHANNEL, "Max", "c")
    with pytest.raises(QueueFull, match="server") as full:
        await services.renders.request(9, GUILD, CHANNEL, "Zoe", "d")
    retry_at = full.value.retry_at
    assert retry_at is not None
    assert utcnow() + timedelta(seconds=10) < retry_at < utcnow() + timedelta(minutes=16)


async def test_admin_actions_are_audited(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await services.quotas.set(GUILD, actor_is_admin=True, actor_id=100, renders_per_day=3)
    await services.quotas.grant(GUILD, 7, 2, actor_is_admin=True, actor_id=100)
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "a")
    await services.privacy.purge_member(GUILD, 7, actor_is_admin=True, actor_id=101)
    await services.quotas.set(GUILD + 1, actor_is_admin=True, max_steps=20)  # CLI: no actor

    entries = await services.audit.recent(GUILD, actor_is_admin=True)
    assert [(e.actor_id, e.action) for e in entries] == [
        (101, "member.purge"),
        (100, "quota.grant"),
        (100, "quota.set"),
    ]
    assert entries[0].detail == {"member_id": "7", "renders": 1, "images": 0}
    assert entries[1].detail == {"member_id": "7", "amount": 2}
    assert entries[2].detail == {"changes": {"renders_per_day": [10, 3]}}
    assert [e.actor_id for e in await services.audit.recent(GUILD + 1, actor_is_admin=True)] == [
        None
    ]
    # The grant's ledger row does not name the admin.
    async with services.database.begin(readonly=True) as session:
        notes = (
            await session.scalars(select(UsageLedger.note).where(UsageLedger.entry == "grant"))
        ).all()
    assert notes == ["admin grant"]

    # Forget-me of the admin and of the member: the entries stay, without them.
    await services.privacy.forget_me(100)
    await services.privacy.forget_me(7)
    entries = await services.audit.recent(GUILD, actor_is_admin=True)
    assert [(e.actor_id, e.action) for e in entries] == [
        (101, "member.purge"),
        (None, "quota.grant"),
        (None, "quota.set"),
    ]
    assert entries[0].detail["member_id"] is None and entries[1].detail["member_id"] is None
    # The guild's removal keeps its audit log for the retention period (issue 21), then the
    # maintenance pass erases it.
    await services.privacy.guild_removed(GUILD)
    async with services.database.begin(readonly=True) as session:
        guilds = (await session.scalars(select(AuditEntry.guild_id))).all()
    assert sorted(guilds) == [GUILD] * 3 + [GUILD + 1]
    await services.jobs.purge_expired(utcnow() + timedelta(days=31))
    async with services.database.begin(readonly=True) as session:
        guilds = (await session.scalars(select(AuditEntry.guild_id))).all()
    assert guilds == [GUILD + 1]


def test_retry_time_arithmetic() -> None:
    from bot.services.limits import retry_at

    start = day_bounds(utcnow())[0]
    times = [start + timedelta(seconds=s) for s in (0, 10, 20)]
    assert retry_at(times[:1], 2, timedelta(minutes=1)) is None
    assert retry_at(times[:2], 2, timedelta(minutes=1)) == start + timedelta(seconds=61)
    assert retry_at(times, 2, timedelta(minutes=1)) == start + timedelta(seconds=71)
