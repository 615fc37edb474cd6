"""Avatars: create (intake here, checks and encoding as a job), list, show, rename, delete,
lazy re-encoding, and what a process without an engine knows of the workers' engine."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from bot.config import Settings
from bot.errors import AvatarbotError, ConsentRequired, InvalidInput, NotFound, QuotaExceeded
from bot.services.avatars import CONSENT_VERSION, NoUsablePhotos
from bot.services.container import Services, build_services
from bot.services.ports import EnginePort
from bot.services.results import RenderOptions
from bot.services.workers import NoRenderWorker
from db.models import Avatar, Consent, Feature, Photo
from db.session import Database
from tests.fixtures.services import (
    CHANNEL,
    GUILD,
    create_now,
    face_photo,
    make_avatar,
    make_photo,
    same_features,
)


async def test_create_keeps_good_photos_and_explains_the_rest(services: Services) -> None:
    files = [
        ("a.png", make_photo(1)),
        ("b.jpg", make_photo(2, fmt="JPEG")),
        ("notes.png", b"this is text"),
        ("copy.png", make_photo(1)),  # same bytes as a.png
        ("a-small.png", make_photo(1, size=300)),  # the same picture, resized
    ]
    ticket = await services.avatars.create(7, GUILD, "  Rex  ", "pet", files, consent=True)
    assert ticket.avatar.pending and ticket.avatar.photo_count == 3
    assert [r.filename for r in ticket.refused] == ["notes.png", "copy.png"]
    with pytest.raises(InvalidInput, match="still being checked"):
        await services.renders.request(7, GUILD, CHANNEL, "Rex", "a hat")
    await services.dispatcher.run_job(ticket.job_id)
    created = await services.avatars.creation_result(ticket.job_id)
    assert created.avatar.name == "Rex" and created.avatar.kind == "pet"
    assert not created.avatar.pending
    assert created.kept == ("a.png", "b.jpg", "a-small.png")
    assert [(r.filename, r.reason) for r in created.refused] == [
        ("notes.png", "unsupported_format"),
        ("copy.png", "duplicate"),
    ]
    assert [(w.filename, w.code) for w in created.warnings] == [("a-small.png", "near_duplicate")]
    assert created.avatar.photo_count == 3 and created.avatar.features_ready

    async with services.database.begin(readonly=True) as session:
        consent = (await session.scalars(select(Consent))).one()
    assert (consent.user_id, consent.guild_id, consent.text_version) == (7, GUILD, CONSENT_VERSION)


async def test_person_photos_are_checked_for_one_clear_face(services: Services) -> None:
    files = [("me.jpg", face_photo()), ("wall.png", make_photo(5))]
    created = await create_now(services, 7, GUILD, "Me", "person", files)
    assert created.kept == ("me.jpg",)
    assert [(r.filename, r.reason) for r in created.refused] == [("wall.png", "no_face")]
    assert "no face" in created.refused[0].message
    assert created.avatar.photo_count == 1  # the refused photo is gone, bytes and all
    async with services.database.begin(readonly=True) as session:
        assert await session.scalar(select(func.count()).select_from(Photo)) == 1


async def test_a_creation_the_worker_refuses_entirely_leaves_nothing(services: Services) -> None:
    files = [("wall.png", make_photo(5)), ("notes.txt", b"text")]
    with pytest.raises(AvatarbotError) as info:
        await create_now(services, 7, GUILD, "Me", "person", files)
    assert "None of the photos" in info.value.message
    assert "wall.png" in info.value.message and "notes.txt" in info.value.message
    assert await services.avatars.list(7) == []  # the pending avatar went with the job
    async with services.database.begin(readonly=True) as session:
        assert await session.scalar(select(func.count()).select_from(Avatar)) == 0
        assert await session.scalar(select(func.count()).select_from(Photo)) == 0
    assert await make_avatar(services, 7, "Me") == "Me"  # the name is free again


async def test_create_refusals(services: Services) -> None:
    good = [("a.png", make_photo(1))]
    with pytest.raises(ConsentRequired):
        await services.avatars.create(7, GUILD, "Mia", "object", good, consent=False)
    for bad_name in ["", "@everyone", "**x**", "x" * 33]:
        with pytest.raises(InvalidInput):
            await services.avatars.create(7, GUILD, bad_name, "object", good, consent=True)
    with pytest.raises(InvalidInput):
        await services.avatars.create(7, GUILD, "Mia", "dragon", good, consent=True)
    with pytest.raises(InvalidInput):
        await services.avatars.create(7, GUILD, "Mia", "object", [], consent=True)
    too_many = [(f"{i}.png", make_photo(i)) for i in range(11)]
    with pytest.raises(InvalidInput, match="at most 10"):
        await services.avatars.create(7, GUILD, "Mia", "object", too_many, consent=True)
    with pytest.raises(NoUsablePhotos) as info:
        await services.avatars.create(
            7, GUILD, "Mia", "object", [("x.gif", b"GIF89a"), ("y.png", b"")], consent=True
        )
    assert [r.reason for r in info.value.refused] == ["corrupt", "empty"]
    assert await services.avatars.list(7) == []  # nothing was stored by any refusal


async def test_names_are_unique_per_owner_case_insensitively(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    with pytest.raises(InvalidInput, match="already"):
        await make_avatar(services, 7, "MIA")
    assert await make_avatar(services, 8, "mia") == "mia"  # another owner may


async def test_avatar_limit_per_member(services: Services) -> None:
    for name in ("a", "b", "c"):
        await make_avatar(services, 7, name, photos=1)
    with pytest.raises(QuotaExceeded):
        await make_avatar(services, 7, "d", photos=1)


async def test_list_get_names_and_owner_only_photos(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await make_avatar(services, 7, "max", photos=1)
    await make_avatar(services, 8, "Milo", photos=1)
    assert [a.name for a in await services.avatars.list(7)] == ["max", "Mia"]
    assert await services.avatars.names(7, "M") == ["max", "Mia"]
    assert await services.avatars.names(7, "mi") == ["Mia"]
    assert await services.avatars.names(7, "%") == []  # LIKE wildcards are escaped
    shown = await services.avatars.get(7, "  mia ")
    assert shown.name == "Mia" and shown.photo_count == 2
    photos = await services.avatars.photos(7, "Mia")
    assert len(photos) == 2 and all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in photos)
    with pytest.raises(NotFound):
        await services.avatars.photos(8, "Mia")  # someone else's avatar does not exist for 8
    with pytest.raises(NotFound):
        await services.avatars.get(7, "Milo")


async def test_rename_and_delete(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await make_avatar(services, 7, "Max", photos=1)
    with pytest.raises(InvalidInput):
        await services.avatars.rename(7, "Mia", "max")
    renamed = await services.avatars.rename(7, "Mia", "Mila")
    assert renamed.name == "Mila"
    assert await services.avatars.rename(7, "mila", "MILA") is not None  # case change of itself
    await services.avatars.delete(7, "Max")
    assert [a.name for a in await services.avatars.list(7)] == ["MILA"]
    with pytest.raises(NotFound):
        await services.avatars.delete(7, "Max")
    async with services.database.begin(readonly=True) as session:
        assert await session.scalar(select(func.count()).select_from(Consent)) == 1


# The personalizers' encodings among an avatar's features (not its enrolled identity for
# likeness, bot/services/likeness.py).
ENCODINGS = Feature.encoder_id.not_like("likeness:%")


async def test_stale_features_are_reencoded_lazily(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    fresh = await _feature_bytes(services)
    async with services.database.begin() as session:
        await session.execute(
            update(Feature).where(ENCODINGS).values(encoder_id="some-older-encoder")
        )
    assert not (await services.avatars.get(7, "Mia")).features_ready
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a hat")
    assert (await services.dispatcher.run_job(ticket.job_id)).status == "done"
    facts = await services.workers.current_facts()
    current = facts.encoder_id(facts.default_personalizer)
    async with services.database.begin(readonly=True) as session:
        rows = (
            await session.scalars(select(Feature).where(ENCODINGS).order_by(Feature.encoder_id))
        ).all()
    assert sorted(r.encoder_id for r in rows) == sorted(["some-older-encoder", current])
    reencoded = next(r for r in rows if r.encoder_id == current)
    # The same photos through the same encoder.
    assert same_features(services.cipher.open(reencoded.data, b"features"), fresh)
    assert (await services.avatars.get(7, "Mia")).features_ready


async def test_a_process_without_an_engine_uses_the_workers_facts(
    database: Database, settings: Settings, tiny_engine_port: EnginePort
) -> None:
    bot = await build_services(settings, database, None)
    assert not bot.dispatcher.claims
    with pytest.raises(NoRenderWorker):
        await bot.workers.current_facts()
    with pytest.raises(NoRenderWorker):
        await bot.avatars.create(7, GUILD, "Mia", "object", [("a.png", make_photo(1))], True)

    worker = await build_services(settings, database, tiny_engine_port)
    await worker.dispatcher.start()  # registers its engine's facts
    try:
        facts = await bot.workers.current_facts()
        assert facts == tiny_engine_port.facts()
        assert facts.count_tokens("a photo of a cat") == tiny_engine_port.facts().count_tokens(
            "a photo of a cat"
        )
        ticket = await bot.avatars.create(
            7, GUILD, "Mia", "object", [("a.png", make_photo(1))], consent=True
        )
        done = await worker.dispatcher.run_job(ticket.job_id)
        assert done.status == "done"
        with pytest.raises(InvalidInput, match="too long"):
            await bot.renders.request(7, GUILD, CHANNEL, "Mia", "cat " * 80)
        job = await bot.renders.request(7, GUILD, CHANNEL, "Mia", "a hat", RenderOptions())
        view = await bot.jobs.view(job.job_id)
        assert view.settings.steps == settings.engine.default_steps
        assert max(view.settings.width, view.settings.height) == facts.native_size
    finally:
        await worker.aclose()


async def _feature_bytes(services: Services) -> bytes:
    async with services.database.begin(readonly=True) as session:
        rows = (await session.scalars(select(Feature).where(ENCODINGS))).all()
    assert len(rows) == 1
    return services.cipher.open(rows[0].data, b"features")
