"""Issue 21, findings 3, 4, 5 and 7 through the services, on SQLite and PostgreSQL, with the
real tiny engine and the real output check (threshold 0 flags every image):

- a person render's flagged images are never posted, whatever the policy or an old record;
- withheld renders (and renders the worker's prompt screen refused) are not free: a daily
  allowance, then a cool-down recorded in the audit log, and forget-me escapes neither;
- grants never lift a member's day above the operator's ceiling;
- removing and re-inviting the bot resets no usage and keeps the audit log for its retention;
- forget-me does not reset ``creates_per_hour``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from bot.config import QuotaCeilings, QuotaDefaults, SafetySettings
from bot.errors import AvatarbotError, InvalidInput, QuotaExceeded, RateLimited
from bot.services.container import Services, build_services
from bot.services.job_work import RenderWork
from bot.services.ledger import day_bounds
from bot.services.ports import EnginePort
from bot.services.safety import SAFETY_KEY
from db.models import (
    AuditEntry,
    LedgerEntry,
    RenderJob,
    UsageLedger,
)
from db.repositories import ledger as ledger_repo
from db.session import Database
from db.types import utcnow
from tests.fixtures.services import (
    CHANNEL,
    GUILD,
    TINY_FLUX2,
    create_now,
    face_photo,
    make_avatar,
    service_settings,
)

FLAG_ALL = SafetySettings(threshold=0.0)
# The allowance alone: a cool-down only after more than the allowance.
NO_COOLDOWN = SafetySettings(threshold=0.0, withheld_cooldown_after=100)


async def _services(
    database: Database, tmp_path: Path, port: EnginePort, **overrides: Any
) -> Services:
    return await build_services(service_settings(tmp_path, **overrides), database, port)


async def _render(services: Services, member: int, avatar: str, guild: int = GUILD) -> int:
    ticket = await services.renders.request(member, guild, CHANNEL, avatar, "a portrait")
    assert await services.dispatcher.run_once() == ticket.job_id
    return ticket.job_id


async def _result(services: Services, job_id: int) -> dict[str, Any]:
    async with services.database.begin(readonly=True) as session:
        job = await session.get(RenderJob, job_id)
        assert job is not None and job.result is not None
        return dict(job.result[SAFETY_KEY])


def _allowance(withheld_per_day: int) -> QuotaDefaults:
    """The tests' default quotas with another daily allowance of withheld renders."""
    quotas = service_settings(Path(".")).quotas
    return quotas.model_copy(update={"withheld_per_day": withheld_per_day})


async def _shift_counts(services: Services, by: timedelta) -> None:
    """Move every ledger row and counted event back by ``by`` (in Python: SQLite stores
    text)."""
    from db.models import CountedEvent  # migration 0006 (local: the module runs on older code)

    async with services.database.begin() as session:
        for model in (UsageLedger, CountedEvent):
            for row in (await session.scalars(select(model))).all():
                row.created_at = row.created_at - by


async def _age_restricted_spoilers(services: Services) -> None:
    await services.safety.set_policy(GUILD, "spoiler", actor_id=1, actor_is_admin=True)


async def _in_age_restricted_channel(services: Services, job_id: int) -> None:
    """Mark a queued job as requested in an age-restricted channel (what the cog records)."""
    async with services.database.begin() as session:
        job = await session.get(RenderJob, job_id)
        assert job is not None
        job.settings = {**job.settings, "age_restricted": True}


async def _render_age_restricted(services: Services, member: int, avatar: str) -> int:
    ticket = await services.renders.request(member, GUILD, CHANNEL, avatar, "a portrait")
    await _in_age_restricted_channel(services, ticket.job_id)
    assert await services.dispatcher.run_once() == ticket.job_id
    return ticket.job_id


# -- finding 3: real people are never sexualised ---------------------------------------------


async def test_a_person_render_never_posts_a_flagged_image(
    database: Database, tmp_path: Path, tiny_engine_port: EnginePort
) -> None:
    services = await _services(database, tmp_path, tiny_engine_port, safety=NO_COOLDOWN)
    try:
        await _age_restricted_spoilers(services)
        await create_now(services, 7, GUILD, "Me", "person", [("me.jpg", face_photo())])
        await make_avatar(services, 7, "Rex", kind="pet")

        person = await _render_age_restricted(services, 7, "Me")
        record = await _result(services, person)
        assert record["flagged_as"] == "block" and record["person"] is True
        assert record["withheld"] == [0] and record["refunded"] is True
        outputs, flagged_as = await services.jobs.checked_outputs(person)
        assert flagged_as == "block" and all(o.flagged for o in outputs)

        pet = await _render_age_restricted(services, 7, "Rex")
        record = await _result(services, pet)
        assert (record["flagged_as"], record["person"], record["withheld"]) == (
            "spoiler",
            False,
            [],
        )
        assert (await services.jobs.checked_outputs(pet))[1] == "spoiler"

        # Defence in depth: a record that says "spoiler" (written before the rule, or by an
        # older worker) does not post a person's flagged image.
        async with services.database.begin() as session:
            job = await session.get(RenderJob, person)
            assert job is not None and job.result is not None
            job.result = {SAFETY_KEY: {**job.result[SAFETY_KEY], "flagged_as": "spoiler"}}
        assert (await services.jobs.checked_outputs(person))[1] == "block"
        # A pet whose avatar was deleted meanwhile counts as a person: fail safe.
        await services.avatars.delete(7, "Rex")
        assert (await services.jobs.checked_outputs(pet))[1] == "block"
    finally:
        await services.aclose()


async def test_either_subject_of_a_two_avatar_render_being_a_person_blocks(
    database: Database, tmp_path: Path, tiny_flux2_port: EnginePort
) -> None:
    services = await _services(
        database, tmp_path, tiny_flux2_port, engine=TINY_FLUX2, safety=NO_COOLDOWN
    )
    try:
        await _age_restricted_spoilers(services)
        await create_now(services, 7, GUILD, "Me", "person", [("me.jpg", face_photo())])
        await make_avatar(services, 7, "Rex", kind="pet")
        await make_avatar(services, 7, "Tom", kind="pet")

        async def two(first: str, second: str) -> dict[str, Any]:
            ticket = await services.renders.request(
                7, GUILD, CHANNEL, first, "two friends", with_avatar=second
            )
            await _in_age_restricted_channel(services, ticket.job_id)
            assert await services.dispatcher.run_once() == ticket.job_id
            return await _result(services, ticket.job_id)

        assert (await two("Rex", "Me"))["flagged_as"] == "block"  # the person second
        assert (await two("Me", "Rex"))["flagged_as"] == "block"  # the person first
        pets = await two("Rex", "Tom")
        assert (pets["flagged_as"], pets["person"]) == ("spoiler", False)
    finally:
        await services.aclose()


# -- finding 4: nothing is free --------------------------------------------------------------


async def test_withheld_renders_have_a_daily_allowance_that_forget_me_keeps(
    database: Database, tmp_path: Path, tiny_engine_port: EnginePort
) -> None:
    services = await _services(
        database, tmp_path, tiny_engine_port, safety=NO_COOLDOWN, quotas=_allowance(2)
    )
    try:
        await make_avatar(services, 7, "Mia")
        await make_avatar(services, 8, "Max")
        for _ in range(2):
            job = await _render(services, 7, "Mia")
            assert (await _result(services, job))["refunded"] is True
        assert (await services.quotas.usage(GUILD, 7)).used == 0  # refunded: see withheld.py
        with pytest.raises(QuotaExceeded, match="withheld 2 of your renders today") as refused:
            await services.renders.request(7, GUILD, CHANNEL, "Mia", "again")
        assert refused.value.resets_at == day_bounds(utcnow())[1]
        # Another member and another guild have their own counts.
        await _render(services, 8, "Max")
        await _render(services, 7, "Mia", guild=GUILD + 1)

        # The admins see the withheld renders per member.
        report = await services.quotas.report(GUILD, 1, actor_is_admin=True)
        assert sorted((r.user_id, r.withheld) for r in report.rows) == [(7, 2), (8, 1)]

        # Forget-me is no way out: the count stays the member's under the day's key.
        await services.privacy.forget_me(7)
        await make_avatar(services, 7, "Mia")
        with pytest.raises(QuotaExceeded, match="withheld"):
            await services.renders.request(7, GUILD, CHANNEL, "Mia", "again")

        # A guild quota: admins set it up to the operator's ceiling (10 by default).
        await services.quotas.set(GUILD, actor_is_admin=True, withheld_per_day=3)
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "one more")
        with pytest.raises(InvalidInput, match="withheld_per_day at most 10"):
            await services.quotas.set(GUILD, actor_is_admin=True, withheld_per_day=11)
    finally:
        await services.aclose()


async def test_repeated_withheld_renders_start_an_audited_cool_down(
    database: Database, tmp_path: Path, tiny_engine_port: EnginePort
) -> None:
    cool = SafetySettings(threshold=0.0, withheld_cooldown_after=2, withheld_cooldown_minutes=30)
    services = await _services(database, tmp_path, tiny_engine_port, safety=cool)
    try:
        await make_avatar(services, 7, "Mia")
        await _render(services, 7, "Mia")
        async with services.database.begin(readonly=True) as session:
            assert (
                await session.scalars(select(AuditEntry).where(AuditEntry.guild_id == GUILD))
            ).all() == []
        await _render(services, 7, "Mia")
        with pytest.raises(RateLimited, match="cool-down") as refused:
            await services.renders.request(7, GUILD, CHANNEL, "Mia", "again")
        async with services.database.begin(readonly=True) as session:
            [entry] = (
                await session.scalars(select(AuditEntry).where(AuditEntry.guild_id == GUILD))
            ).all()
        # 30 minutes from the latest withheld render, which finished just now.
        assert refused.value.retry_at == datetime.fromisoformat(entry.detail["until"])
        assert timedelta(minutes=29) < refused.value.retry_at - utcnow() <= timedelta(minutes=30)
        assert entry.action == "safety.cooldown" and entry.actor_id is None
        assert entry.detail["member_id"] == "7" and entry.detail["withheld"] == 2

        # Forget-me keeps the cool-down, and takes the member's id out of the audit log.
        await services.privacy.forget_me(7)
        await make_avatar(services, 7, "Mia")
        with pytest.raises(RateLimited, match="cool-down"):
            await services.renders.request(7, GUILD, CHANNEL, "Mia", "again")
        entries = await services.audit.recent(GUILD, actor_is_admin=True)
        assert [(e.action, e.detail["member_id"]) for e in entries] == [("safety.cooldown", None)]

        # Once it is over (rows moved back past it), the member may render again.
        await _shift_counts(services, timedelta(hours=1))
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "later")
    finally:
        await services.aclose()


async def test_renders_the_prompt_screen_refused_count_as_withheld(
    database: Database,
    tmp_path: Path,
    tiny_engine_port: EnginePort,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def screened(self: RenderWork, job: Any, progress: Any) -> Any:
        raise AvatarbotError("Refused by the prompt screen.", code="prompt_screened")

    monkeypatch.setattr(RenderWork, "run", screened)
    safety = SafetySettings(withheld_cooldown_after=100)
    services = await _services(
        database, tmp_path, tiny_engine_port, safety=safety, quotas=_allowance(1)
    )
    try:
        await make_avatar(services, 7, "Mia")
        job = await _render(services, 7, "Mia")
        async with services.database.begin(readonly=True) as session:
            row = await session.get(RenderJob, job)
            assert row is not None
            assert (row.status, row.error_code) == ("failed", "prompt_screened")
        assert (await services.quotas.usage(GUILD, 7)).used == 0  # refunded like any failure
        with pytest.raises(QuotaExceeded, match="withheld 1 of your renders today"):
            await services.renders.request(7, GUILD, CHANNEL, "Mia", "again")
    finally:
        await services.aclose()


# -- finding 5: ceilings bind, trails kept --------------------------------------------------


async def test_grants_never_lift_a_day_above_the_ceiling(
    database: Database, tmp_path: Path, tiny_engine_port: EnginePort
) -> None:
    ceilings = QuotaCeilings(renders_per_day=200)
    services = await _services(database, tmp_path, tiny_engine_port, quota_ceilings=ceilings)
    try:
        # The case: five grants of 1,000 under a ceiling of 200.
        with pytest.raises(InvalidInput, match="at most 190 more"):
            await services.quotas.grant(GUILD, 7, 1000, actor_is_admin=True)
        await services.quotas.grant(GUILD, 7, 150, actor_is_admin=True)
        usage = await services.quotas.grant(GUILD, 7, 40, actor_is_admin=True)
        assert usage.limit == 200
        with pytest.raises(InvalidInput, match="nothing more can be granted"):
            await services.quotas.grant(GUILD, 7, 1, actor_is_admin=True)
        # Removing and re-inviting the bot does not make room either.
        await services.privacy.guild_removed(GUILD)
        with pytest.raises(InvalidInput, match="nothing more"):
            await services.quotas.grant(GUILD, 7, 1, actor_is_admin=True)
        # Another member's day is theirs.
        await services.quotas.grant(GUILD, 8, 190, actor_is_admin=True)
        # Grants stored before the rule are read up to the ceiling only.
        async with services.database.begin() as session:
            await ledger_repo.append(
                session,
                entry=LedgerEntry.GRANT,
                guild_id=GUILD,
                user_id=9,
                amount=5000,
                now=utcnow(),
            )
        assert (await services.quotas.usage(GUILD, 9)).limit == 200
    finally:
        await services.aclose()


async def test_removing_the_bot_keeps_the_day_and_the_audit_log_for_a_while(
    services: Services,
) -> None:
    await make_avatar(services, 7, "Mia")
    await services.quotas.set(GUILD, actor_is_admin=True, actor_id=1, renders_per_day=2)
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "one")
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "two")
    await services.quotas.grant(GUILD, 7, 1, actor_is_admin=True, actor_id=1)
    before = await services.quotas.usage(GUILD, 7)
    assert (before.used, before.remaining) == (2, 1)  # 2 a day plus 1 granted

    erased = await services.privacy.guild_removed(GUILD)
    assert erased.jobs == 2 and erased.settings == 1
    assert await services.privacy.purge_absent_guilds([GUILD]) == []  # re-invited
    await services.privacy.guild_removed(GUILD)
    after = await services.quotas.usage(GUILD, 7)
    assert after.used == 2  # the day counts on (the guild's own settings went)
    async with services.database.begin(readonly=True) as session:
        actions = (
            await session.scalars(select(AuditEntry.action).where(AuditEntry.guild_id == GUILD))
        ).all()
        rows = (await session.scalars(select(RenderJob).where(RenderJob.guild_id == GUILD))).all()
    assert sorted(actions) == ["quota.grant", "quota.set"] and rows == []

    # The maintenance pass: the ledger goes once the day is over, the audit log after the
    # retention (30 days by default), then the guild is forgotten.
    await services.jobs.purge_expired()
    assert (await services.quotas.usage(GUILD, 7)).used == 2  # today is not over yet
    await services.jobs.purge_expired(utcnow() + timedelta(days=1))
    async with services.database.begin(readonly=True) as session:
        ledger = (
            await session.scalars(select(UsageLedger.id).where(UsageLedger.guild_id == GUILD))
        ).all()
        audit = (
            await session.scalars(select(AuditEntry.id).where(AuditEntry.guild_id == GUILD))
        ).all()
    assert ledger == [] and len(audit) == 2
    await services.jobs.purge_expired(utcnow() + timedelta(days=31))
    async with services.database.begin(readonly=True) as session:
        audit = (
            await session.scalars(select(AuditEntry.id).where(AuditEntry.guild_id == GUILD))
        ).all()
        departed = (await session.scalars(text("SELECT guild_id FROM departed_guilds"))).all()
    assert audit == [] and departed == []


async def test_a_guild_that_comes_back_keeps_its_audit_log(services: Services) -> None:
    await services.quotas.set(GUILD, actor_is_admin=True, actor_id=1, renders_per_day=2)
    await services.privacy.guild_removed(GUILD)
    # Back while the bot was offline: the next start sees it among the present guilds.
    assert await services.privacy.purge_absent_guilds([GUILD]) == []
    await services.jobs.purge_expired(utcnow() + timedelta(days=60))
    entries = await services.audit.recent(GUILD, actor_is_admin=True)
    assert [e.action for e in entries] == ["quota.set"]
    # Removed again while offline: erased once, never again at every start.
    assert [e.guild_id for e in await services.privacy.purge_absent_guilds([GUILD + 5])] == [GUILD]
    assert await services.privacy.purge_absent_guilds([GUILD + 5]) == []


# -- finding 7: forget-me keeps the hour's creations counted ----------------------------------


async def test_forget_me_does_not_reset_creations_per_hour(services: Services) -> None:
    await services.quotas.set(GUILD, actor_is_admin=True, creates_per_hour=2)
    await make_avatar(services, 7, "One")
    await make_avatar(services, 7, "Two", guild=GUILD + 1)
    await services.privacy.forget_me(7)
    with pytest.raises(RateLimited, match="2 avatars an hour"):
        await make_avatar(services, 7, "Three")
    await make_avatar(services, 8, "Max")  # another member is not limited
