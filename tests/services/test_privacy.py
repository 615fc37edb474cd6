"""Privacy: forget-me leaves no byte behind, member purge, guild removal, retention purge,
encryption at rest and key rotation."""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from bot.errors import Forbidden, InternalError, NotFound
from bot.services.container import Services, build_services
from bot.services.crypto import sealed_key_id
from bot.services.ledger import day_bounds
from db.models import (
    Avatar,
    Base,
    Consent,
    CountedEvent,
    Feature,
    GuildSettings,
    JobOutput,
    Photo,
    RenderJob,
    UsageLedger,
)
from db.session import Database
from db.types import utcnow
from tests.fixtures.services import CHANNEL, GUILD, make_avatar, service_settings


def _key(key_id: str) -> str:
    return f"{key_id}:" + base64.urlsafe_b64encode(os.urandom(32)).decode()


# The columns that name a member (renders with another member's avatar: requester, grantee).
MEMBER_COLUMNS = ("user_id", "owner_id", "requester_id", "grantee_id")


def _raw_files(database: Database) -> bytes:
    """The SQLite database file and its WAL, as they are on disk."""
    path = Path(str(database.url.database))
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def _windows(blob: bytes) -> list[bytes]:
    """Three 48-byte windows from the body of a blob (compressed image data: unique bytes)."""
    assert len(blob) >= 512
    return [blob[i : i + 48] for i in (len(blob) // 4, len(blob) // 2, 3 * len(blob) // 4)]


def _found(blobs: list[bytes], raw: bytes) -> list[bool]:
    return [any(w in raw for w in _windows(b)) for b in blobs]


async def _count(services: Services, model: type) -> int:
    async with services.database.begin(readonly=True) as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def _render_one(services: Services, owner: int, avatar: str) -> int:
    ticket = await services.renders.request(owner, GUILD, CHANNEL, avatar, "a portrait")
    assert await services.dispatcher.run_once() == ticket.job_id
    return ticket.job_id


async def test_forget_me_erases_every_row_and_byte(services: Services) -> None:
    await make_avatar(services, 7, "Mia", photos=3)
    await make_avatar(services, 8, "Keep", photos=1)
    job = await _render_one(services, 7, "Mia")
    await _render_one(services, 8, "Keep")
    photos = await services.avatars.photos(7, "Mia")
    outputs = await services.jobs.outputs(job)
    if services.database.dialect == "sqlite":  # the check below must be able to fail
        assert _found(photos, _raw_files(services.database)) == [True] * 3

    async with services.database.begin(readonly=True) as session:
        cached = set((await session.scalars(select(Feature.encoder_id))).all())
    # Each avatar's features and its enrolled identity for likeness (bot/services/likeness.py).
    assert len([c for c in cached if c.startswith("likeness:")]) == 1  # one method for both

    report = await services.privacy.forget_me(7)
    assert (report.avatars, report.photos, report.features, report.consents) == (1, 3, 2, 1)
    # One render (the avatar's creation job goes too, not counted as a render).
    assert (report.jobs, report.outputs, report.ledger_rows_anonymised) == (1, 1, 1)
    assert await services.avatars.list(7) == []
    async with services.database.begin(readonly=True) as session:
        assert set((await session.scalars(select(RenderJob.user_id))).all()) == {8}
        assert (await session.scalars(select(Consent.user_id))).all() == [8]
        assert (await session.scalars(select(Avatar.owner_id))).all() == [8]
        ledger = (await session.execute(select(UsageLedger.user_id, UsageLedger.amount))).all()
        # What the abuse limits count (the creations) stays too, without the member's id.
        counted = (await session.execute(select(CountedEvent.user_id, CountedEvent.kind))).all()
    assert sorted(counted, key=str) == sorted([(None, "create"), (8, "create")], key=str)
    assert sorted(ledger, key=str) == sorted([(None, 1), (8, 1)], key=str)  # counts stay
    assert (await services.quotas.report(GUILD, 1, actor_is_admin=True)).rows[0].user_id in (
        None,
        8,
    )
    assert await services.avatars.list(8) != []  # another member is untouched
    # Whatever tables exist (now or added later), no row names the erased member any more.
    async with services.database.begin(readonly=True) as session:
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                if column.name in MEMBER_COLUMNS:
                    hits = await session.scalar(
                        select(func.count()).select_from(table).where(column == 7)
                    )
                    assert hits == 0, f"{table.name}.{column.name} still names user 7"
    if services.database.dialect == "sqlite":
        assert _found([*photos, *outputs], _raw_files(services.database)) == [False] * 4


async def test_forget_me_erases_two_subject_renders(two_subject_services: Services) -> None:
    """A render of two of the member's avatars goes with them (its second avatar is theirs
    too); another member's renders and avatars stay; no job points at an erased avatar."""
    services = two_subject_services
    await make_avatar(services, 7, "Mia", photos=2)
    await make_avatar(services, 7, "Rex", photos=1, kind="pet")
    await make_avatar(services, 8, "Keep", photos=1)
    both = await services.renders.request(7, GUILD, CHANNEL, "Mia", "together", with_avatar="Rex")
    assert await services.dispatcher.run_once() == both.job_id
    queued = await services.renders.request(7, GUILD, CHANNEL, "Rex", "again", with_avatar="Mia")
    outputs = await services.jobs.outputs(both.job_id)
    kept = await _render_one(services, 8, "Keep")
    async with services.database.begin(readonly=True) as session:
        alices = set(await session.scalars(select(Avatar.id).where(Avatar.owner_id == 7)))
        withs = set(await session.scalars(select(RenderJob.with_avatar_id)))
    assert withs - {None} <= alices and len(withs - {None}) == 2

    report = await services.privacy.forget_me(7)
    assert (report.avatars, report.jobs, report.outputs) == (2, 2, 1)
    for job_id in (both.job_id, queued.job_id):
        with pytest.raises(NotFound):
            await services.jobs.view(job_id)
    async with services.database.begin(readonly=True) as session:
        referenced = set(await session.scalars(select(RenderJob.avatar_id))) | set(
            await session.scalars(select(RenderJob.with_avatar_id))
        )
        remaining = set(await session.scalars(select(Avatar.id)))
    assert referenced - {None} <= remaining
    assert not referenced & alices
    assert (await services.jobs.view(kept)).status == "done"
    if services.database.dialect == "sqlite":
        assert _found(outputs, _raw_files(services.database)) == [False]


@pytest.mark.parametrize("erased", [7, 8])
async def test_either_members_forget_me_erases_their_joint_render(
    two_subject_services: Services, erased: int
) -> None:
    """Alice (7) renders with Bob's (8) avatar, with his approval: the render, its prompt and
    images, the grant and the requests go with either member's forget-me; the other member's
    own renders stay."""
    services = two_subject_services
    await make_avatar(services, 7, "Mia", photos=2)
    await make_avatar(services, 8, "Rex", photos=1, kind="pet")
    await services.friends.set_others_may_ask(8, "Rex", True)

    async def members(guild_id: int, user_id: int) -> bool:
        return True

    asked = await services.friends.ask(
        7, GUILD, CHANNEL, "Mia", 8, "Rex", "together at sea", is_member=members
    )
    assert asked.waiting is not None
    approved = await services.friends.approve(8, asked.waiting.id, always=True, is_member=members)
    assert approved.ticket is not None
    assert await services.dispatcher.run_once() == approved.ticket.job_id
    outputs = await services.jobs.outputs(approved.ticket.job_id)
    other = 8 if erased == 7 else 7
    kept = await _render_one(services, other, "Rex" if other == 8 else "Mia")
    await services.friends.ask(7, GUILD, CHANNEL, "Mia", 8, "Rex", "queued", is_member=members)

    report = await services.privacy.forget_me(erased)
    assert (report.joint_jobs, report.grants) == (2, 1)
    async with services.database.begin(readonly=True) as session:
        assert list(
            await session.scalars(select(RenderJob.id).where(RenderJob.kind == "render"))
        ) == [kept]
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                if column.name in MEMBER_COLUMNS:
                    hits = await session.scalar(
                        select(func.count()).select_from(table).where(column == erased)
                    )
                    assert hits == 0, f"{table.name}.{column.name} still names {erased}"
    assert await services.friends.grants(other) == []
    if services.database.dialect == "sqlite":
        assert _found(outputs, _raw_files(services.database)) == [False]


async def test_member_purge_and_guild_removal(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=5)
    await _render_one(services, 7, "Mia")
    other_guild = await services.renders.request(7, GUILD + 1, CHANNEL, "Mia", "elsewhere")
    with pytest.raises(Forbidden):
        await services.privacy.purge_member(GUILD, 7, actor_is_admin=False)
    purged = await services.privacy.purge_member(GUILD, 7, actor_is_admin=True)
    assert (purged.jobs, purged.outputs) == (1, 1)
    assert (await services.jobs.view(other_guild.job_id)).status == "queued"

    assert await services.dispatcher.run_once() == other_guild.job_id
    await _render_one(services, 7, "Mia")
    erased = await services.privacy.guild_removed(GUILD)
    # The day's usage stays until the day is over (issue 21): re-inviting resets nothing.
    assert erased.settings == 1 and erased.jobs == 1 and erased.ledger_rows == 0
    assert (await services.quotas.usage(GUILD, 7)).used == 2
    assert await _count(services, GuildSettings) == 0
    assert (await services.quotas.get(GUILD)).renders_per_day == 10  # defaults again
    assert [a.name for a in await services.avatars.list(7)] == ["Mia"]  # the member's own
    assert (await services.jobs.view(other_guild.job_id)).status == "done"


async def test_retention_purge(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    delivered = await _render_one(services, 7, "Mia")
    undelivered = await _render_one(services, 7, "Mia")
    recent = await _render_one(services, 7, "Mia")
    await services.jobs.mark_delivered(delivered)
    await services.jobs.mark_delivered(recent)
    start_of_today = day_bounds(utcnow())[0]
    async with services.database.begin() as session:
        for job_id, age in ((delivered, 30), (undelivered, 30), (recent, 23)):
            finished = utcnow() - timedelta(hours=age)
            await session.execute(
                update(RenderJob)
                .where(RenderJob.id == job_id)
                .values(finished_at=finished, created_at=min(finished, start_of_today))
            )
    assert await services.jobs.purge_expired() == 1  # delivered and past 24 h
    remaining = {j.id for j in await services.jobs.undelivered()} | {recent}
    assert remaining == {undelivered, recent}
    # An undelivered job is kept up to a week longer, then goes too.
    later = utcnow() + timedelta(days=8)
    assert await services.jobs.purge_expired(now=later) == 2
    assert await _count(services, JobOutput) == 0
    assert await _count(services, UsageLedger) == 3  # the ledger keeps its counts


async def test_encryption_at_rest_and_key_rotation(
    database: Database, tmp_path: Path, tiny_engine_port
) -> None:  # type: ignore[no-untyped-def]
    key1, key2 = _key("one"), _key("two")
    first = await build_services(
        service_settings(tmp_path, data_key=key1), database, tiny_engine_port
    )
    await make_avatar(first, 7, "Mia", photos=2)
    job = await _render_one(first, 7, "Mia")
    photos = await first.avatars.photos(7, "Mia")
    outputs = await first.jobs.outputs(job)
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in [*photos, *outputs])
    async with database.begin(readonly=True) as session:
        stored = [*(await session.scalars(select(Photo))).all()]
        features = [*(await session.scalars(select(Feature))).all()]
        # The enrolled identity (bot/services/likeness.py) is sealed like the features.
        assert any(f.encoder_id.startswith("likeness:") for f in features)
        blobs = [r.data for r in stored] + [r.data for r in features]
        blobs += (await session.scalars(select(JobOutput.data))).all()
    assert {sealed_key_id(b) for b in blobs} == {"one"}
    assert {r.key_id for r in stored + features} == {"one"}
    if database.dialect == "sqlite":
        assert _found([*photos, *outputs], _raw_files(database)) == [False] * 3

    # Rotation: the new key writes, the old one still reads; re-encryption moves everything.
    rotated = await build_services(
        service_settings(tmp_path, data_key=key2, old_data_keys=key1), database, tiny_engine_port
    )
    assert await rotated.avatars.photos(7, "Mia") == photos
    report = await rotated.privacy.reencrypt(batch_size=1)
    # Features: the avatar's encoding and its enrolled identity for likeness.
    assert (report.photos, report.features, report.outputs, report.jobs) == (2, 2, 1, 2)
    assert (await rotated.privacy.reencrypt()).unchanged == 7  # idempotent
    new_only = await build_services(
        service_settings(tmp_path, data_key=key2), database, tiny_engine_port
    )
    assert await new_only.avatars.photos(7, "Mia") == photos
    assert await new_only.jobs.outputs(job) == outputs
    assert await new_only.renders.request(7, GUILD, CHANNEL, "Mia", "again")  # features decrypt
    assert await new_only.dispatcher.run_once() is not None
    without_key = await build_services(service_settings(tmp_path), database, tiny_engine_port)
    with pytest.raises(InternalError):
        await without_key.avatars.photos(7, "Mia")


async def test_blobs_are_bound_to_row_and_owner_and_prompts_are_sealed(
    database: Database, tmp_path: Path, tiny_engine_port
) -> None:  # type: ignore[no-untyped-def]
    """Audit finding 6, end to end: a photo blob copied into another member's row does not
    open; prompts and interaction tokens are not stored in the clear; the photo digest is
    keyed; legacy rows are re-sealed by reencrypt, after which strict mode refuses a
    plaintext blob written into the database (a downgrade)."""
    key = _key("one")
    services = await build_services(
        service_settings(tmp_path, data_key=key), database, tiny_engine_port
    )
    await make_avatar(services, 7, "Mia", photos=1)
    await make_avatar(services, 8, "Rex", photos=1)
    job = await _render_one(services, 7, "Mia")
    view = await services.jobs.view(job)
    assert view.prompt == "a portrait"
    async with database.begin() as session:
        prompts = (await session.scalars(select(RenderJob.prompt))).all()
        assert prompts and not any("portrait" in p for p in prompts)
        mia, rex = (
            await session.execute(
                select(Photo.id, Photo.data, Photo.sha256).join(Avatar).order_by(Avatar.owner_id)
            )
        ).all()
        plain_mia = (await services.avatars.photos(7, "Mia"))[0]
        assert mia.sha256 != hashlib.sha256(plain_mia).hexdigest()
        # Member 8's photo row now holds member 7's sealed photo.
        await session.execute(update(Photo).where(Photo.id == rex.id).values(data=mia.data))
    with pytest.raises(InternalError):
        await services.avatars.photos(8, "Rex")
    async with database.begin() as session:
        await session.execute(update(Photo).where(Photo.id == rex.id).values(data=rex.data))
        # A legacy row: a prompt from before the upgrade (plain text).
        await session.execute(
            update(RenderJob).where(RenderJob.id == job).values(prompt="an old prompt")
        )
    assert (await services.jobs.view(job)).prompt == "an old prompt"
    report = await services.privacy.reencrypt()
    assert report.jobs == 1
    assert (await services.jobs.view(job)).prompt == "an old prompt"

    strict = await build_services(
        service_settings(tmp_path, data_key=key, encryption_strict=True),
        database,
        tiny_engine_port,
    )
    assert await strict.avatars.photos(7, "Mia") == [plain_mia]
    async with database.begin() as session:  # the downgrade: a plaintext blob written in
        await session.execute(update(Photo).where(Photo.id == mia.id).values(data=plain_mia))
    with pytest.raises(InternalError):
        await strict.avatars.photos(7, "Mia")
