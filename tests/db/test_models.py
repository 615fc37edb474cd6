"""The schema's rules hold in the database itself: cascades, checks, uniqueness, UTC times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from db.models import (
    Avatar,
    Consent,
    Feature,
    GuildSettings,
    JobOutput,
    Photo,
    RenderJob,
    UsageLedger,
)
from db.session import Database


def _avatar(owner: int = 1, name: str = "Rex", kind: str = "pet") -> Avatar:
    return Avatar(owner_id=owner, guild_id=10, name=name, name_key=name.casefold(), kind=kind)


async def _count(database: Database, model: type) -> int:
    async with database.session() as s:
        return int((await s.execute(select(func.count()).select_from(model))).scalar_one())


async def test_deleting_an_avatar_cascades(database: Database) -> None:
    async with database.begin() as s:
        avatar = _avatar()
        s.add(avatar)
        await s.flush()
        s.add_all(
            [
                Photo(
                    avatar_id=avatar.id,
                    position=0,
                    data=b"x",
                    sha256="a" * 64,
                    width=1,
                    height=1,
                    format="JPEG",
                ),
                Feature(avatar_id=avatar.id, encoder_id="tiny:1", data=b"f"),
                Consent(user_id=1, avatar_id=avatar.id, text_version="v1"),
            ]
        )
        job = RenderJob(user_id=1, avatar_id=avatar.id, prompt="a dog", seed=1, settings={})
        s.add(job)
        await s.flush()
        s.add(JobOutput(job_id=job.id, index=0, data=b"png", seed=1, width=64, height=64))
        job_id = job.id
        avatar_id = avatar.id
    async with database.begin() as s:
        # A bulk DELETE: the database's ON DELETE rules do the work, not the ORM.
        await s.execute(delete(Avatar).where(Avatar.id == avatar_id))
    assert await _count(database, Photo) == 0
    assert await _count(database, Feature) == 0
    assert await _count(database, Consent) == 0
    async with database.session() as s:
        stored = await s.get(RenderJob, job_id)
        assert stored is not None and stored.avatar_id is None  # SET NULL: history stays
    async with database.begin() as s:
        s.add(UsageLedger(user_id=1, entry="reserve", amount=1, job_id=job_id))
    async with database.begin() as s:
        await s.execute(delete(RenderJob).where(RenderJob.id == job_id))
    assert await _count(database, JobOutput) == 0
    async with database.session() as s:
        ledger = (await s.execute(select(UsageLedger))).scalar_one()
        assert ledger.job_id is None and ledger.amount == 1  # the ledger keeps its totals


async def test_orm_delete_of_an_avatar_with_unloaded_children(database: Database) -> None:
    async with database.begin() as s:
        avatar = _avatar()
        s.add(avatar)
        await s.flush()
        s.add(
            Photo(
                avatar_id=avatar.id,
                position=0,
                data=b"x",
                sha256="b" * 64,
                width=1,
                height=1,
                format="PNG",
            )
        )
    async with database.begin() as s:
        loaded = await s.get(Avatar, avatar.id)
        await s.delete(loaded)
    assert await _count(database, Photo) == 0


@pytest.mark.parametrize("status", ["bogus", "QUEUED", ""])
async def test_status_check_rejects_unknown_status(database: Database, status: str) -> None:
    with pytest.raises(IntegrityError):
        async with database.begin() as s:
            s.add(RenderJob(user_id=1, prompt="x", seed=1, settings={}, status=status))


@pytest.mark.parametrize(
    ("model", "kwargs"),
    [
        (Avatar, {"owner_id": 1, "name": "X", "name_key": "x", "kind": "robot"}),
        (UsageLedger, {"entry": "steal", "amount": 1}),
        (UsageLedger, {"entry": "reserve", "amount": 0}),
        (UsageLedger, {"entry": "refund", "amount": -3}),
        (RenderJob, {"user_id": 1, "prompt": "x", "seed": 1, "settings": {}, "progress": 1.5}),
    ],
)
async def test_other_checks(database: Database, model: type, kwargs: dict) -> None:
    with pytest.raises(IntegrityError):
        async with database.begin() as s:
            s.add(model(**kwargs))


async def test_avatar_names_unique_per_owner(database: Database) -> None:
    async with database.begin() as s:
        s.add_all([_avatar(owner=1, name="Rex"), _avatar(owner=2, name="Rex")])
    with pytest.raises(IntegrityError):
        async with database.begin() as s:
            s.add(_avatar(owner=1, name="REX"))


async def test_foreign_keys_are_enforced(database: Database) -> None:
    with pytest.raises(IntegrityError):
        async with database.begin() as s:
            s.add(
                Photo(
                    avatar_id=999,
                    position=0,
                    data=b"x",
                    sha256="c" * 64,
                    width=1,
                    height=1,
                    format="PNG",
                )
            )


async def test_job_defaults(database: Database) -> None:
    async with database.begin() as s:
        job = RenderJob(user_id=1, prompt="x", seed=2**62, settings={"steps": 4, "style": "ink"})
        s.add(job)
    async with database.session() as s:
        got = await s.get(RenderJob, job.id)
        assert got is not None
        assert (got.status, got.attempts, got.progress, got.cancel_requested, got.reserved) == (
            "queued",
            0,
            0.0,
            False,
            0,
        )
        assert got.negative_prompt == ""
        assert got.seed == 2**62
        assert got.settings == {"steps": 4, "style": "ink"}
        assert got.created_at.tzinfo is not None


async def test_server_defaults_for_raw_inserts(database: Database) -> None:
    async with database.begin() as s:
        await s.execute(
            text(
                "INSERT INTO render_jobs (user_id, prompt, settings, seed, created_at) "
                "VALUES (1, 'x', '{}', 1, :now)"
            ),
            {"now": datetime(2026, 1, 1) if database.dialect == "sqlite" else datetime.now(UTC)},
        )
    async with database.session() as s:
        job = (await s.execute(select(RenderJob))).scalar_one()
        assert (job.status, job.attempts, job.cancel_requested, job.negative_prompt) == (
            "queued",
            0,
            False,
            "",
        )


async def test_utc_datetime_round_trips(database: Database) -> None:
    paris = timezone(timedelta(hours=1))
    moment = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=paris)
    async with database.begin() as s:
        s.add(GuildSettings(guild_id=2**60, created_at=moment, updated_at=moment))
    async with database.session() as s:
        got = await s.get(GuildSettings, 2**60)
        assert got is not None
        assert got.created_at == moment
        assert got.created_at.utcoffset() == timedelta(0)
        assert got.created_at.hour == 4  # converted to UTC, not relabelled
        # Comparisons in SQL work against aware values too.
        found = await s.execute(
            select(GuildSettings.guild_id).where(GuildSettings.created_at > moment - timedelta(1))
        )
        assert found.scalar_one() == 2**60


async def test_utc_datetime_refuses_naive(database: Database) -> None:
    with pytest.raises(StatementError, match="naive"):
        async with database.begin() as s:
            s.add(GuildSettings(guild_id=1, created_at=datetime(2026, 1, 1)))
