"""Two avatars in one render (``with``): refused by a one-subject personalizer (``tiny``,
IP-Adapter) before any work; on ``tiny-flux2`` (FLUX.2 [klein], two subjects) both subjects'
checks, their order, rerolls and variations, lazy re-encoding of the second, deletion of the
second avatar; and the guidance default from the engine's facts. The same on SimCord:
tests/bot/test_two_subjects.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import select, update

from bot.errors import InvalidInput, NotFound, PromptRefused
from bot.services.container import Services, build_services
from bot.services.job_work import RenderWork
from bot.services.ports import EngineFacts, EnginePort
from bot.services.results import RenderOptions
from db.models import Avatar, Feature, RenderJob
from db.session import Database
from tests.fixtures.services import (
    CHANNEL,
    GUILD,
    TINY,
    RecordingRenders,
    create_now,
    face_photo,
    make_photo,
    same_features,
    service_settings,
)

ALICE, BOB = 7, 8


async def _avatar(services: Services, owner: int, name: str, seed: int, kind: str = "object"):  # type: ignore[no-untyped-def]
    """An avatar of ``owner`` from photos of its own (seeded: its features differ)."""
    files = [(f"{name}-{i}.png", make_photo(seed * 10 + i, size=256)) for i in range(2)]
    return (await create_now(services, owner, GUILD, name, kind, files)).avatar


async def _features(services: Services, avatar_id: int) -> bytes:
    """The avatar's cached features for the engine's default personalizer."""
    assert services.engine is not None
    work = RenderWork(services.database, services.engine, services.cipher)
    return await work.features_for(avatar_id, services.engine.facts().default_personalizer)


async def test_a_one_subject_personalizer_refuses_with_before_any_work(
    services: Services,
) -> None:
    await _avatar(services, ALICE, "Mia", 1)
    await _avatar(services, ALICE, "Rex", 2, "pet")
    with pytest.raises(InvalidInput) as refused:
        await services.renders.request(
            ALICE, GUILD, CHANNEL, "Mia", "the object from image 1 and the dog from image 2",
            with_avatar="Rex",
        )  # fmt: skip
    assert refused.value.message == (
        "This server renders with ip-adapter, which shows one avatar per picture, so “with” "
        "cannot be used here. Render each avatar on its own."
    )
    assert (await services.quotas.usage(GUILD, ALICE)).used == 0
    assert await services.jobs.active() == []
    # Without ``with`` the same render is fine.
    await services.renders.request(ALICE, GUILD, CHANNEL, "Mia", "on a beach")


async def test_each_subject_is_checked(two_subject_services: Services) -> None:
    services = two_subject_services
    await _avatar(services, ALICE, "Mia", 1)
    await _avatar(services, ALICE, "Rex", 2, "pet")
    await _avatar(services, BOB, "Dog", 3)
    await services.quotas.set(GUILD, actor_is_admin=True, avatars_per_member=5)
    await create_now(services, ALICE, GUILD, "Me", "person", [("me.jpg", face_photo())])
    # A creation still being checked (its encode job not run).
    await services.avatars.create(
        ALICE, GUILD, "Later", "object", [("l.png", make_photo(99, size=256))], consent=True
    )

    async def request(with_avatar: str, prompt: str = "on a beach", **kw: object) -> None:
        await services.renders.request(
            ALICE,
            GUILD,
            CHANNEL,
            "Rex",
            prompt,
            with_avatar=with_avatar,
            **kw,  # type: ignore[arg-type]
        )

    with pytest.raises(NotFound, match="no avatar named “Dog” to render with"):
        await request("Dog")  # another member's avatar is never found
    with pytest.raises(InvalidInput, match="two different avatars"):
        await request(" rEX ")
    with pytest.raises(InvalidInput, match="“Later” is still being checked"):
        await request("Later")
    # A person in the picture: never a sexual prompt, even with a pet first and in an
    # age-restricted channel (where the pet alone may be).
    with pytest.raises(PromptRefused):
        await request("Me", "a nude scene", age_restricted=True)
    alone = await services.renders.request(
        ALICE, GUILD, CHANNEL, "Rex", "a nude statue", age_restricted=True
    )
    await services.renders.cancel(ALICE, alone.job_id)  # refunded: still queued
    # The guild's avatar limits hold for the second avatar too.
    await services.quotas.set(GUILD, actor_is_admin=True, photos_per_avatar=1)
    with pytest.raises(InvalidInput, match="“Mia” has 2 photos"):
        await services.renders.request(ALICE, GUILD, CHANNEL, "Me", "a walk", with_avatar="Mia")
    assert (await services.quotas.usage(GUILD, ALICE)).used == 0


async def test_both_subjects_render_in_order_and_stay_through_reroll_and_variations(
    two_subject_services: Services,
) -> None:
    services = two_subject_services
    engine: RecordingRenders = services.engine  # type: ignore[assignment]
    mia = await _avatar(services, ALICE, "Mia", 1)
    rex = await _avatar(services, ALICE, "Rex", 2, "pet")
    ticket = await services.renders.request(
        ALICE, GUILD, CHANNEL, "mia", "the object from image 1 and the dog from image 2",
        RenderOptions(seed=3), with_avatar="rex",
    )  # fmt: skip
    view = await services.jobs.view(ticket.job_id)
    assert (view.avatar_id, view.with_avatar_id) == (mia.id, rex.id)
    assert view.avatar_names == ("Mia", "Rex")
    assert (await services.quotas.usage(GUILD, ALICE)).used == 1  # one render, one unit

    assert await services.dispatcher.run_once() == ticket.job_id
    assert (await services.jobs.view(ticket.job_id)).status == "done"
    first, extra = engine.renders[-1]
    assert same_features(first, await _features(services, mia.id))  # "image 1"
    [second] = extra
    assert same_features(second, await _features(services, rex.id))  # "image 2"

    for again in (services.renders.reroll, services.renders.variations):
        job_id = (await again(ALICE, ticket.job_id)).job_id
        redo = await services.jobs.view(job_id)
        assert (redo.avatar_id, redo.with_avatar_id, redo.parent_job_id) == (
            mia.id,
            rex.id,
            ticket.job_id,
        )
        assert await services.dispatcher.run_once() == job_id
        assert len(engine.renders[-1][1]) == 1

    # A one-subject render on the same engine passes no extra subject.
    single = await services.renders.request(ALICE, GUILD, CHANNEL, "Mia", "alone")
    assert (await services.jobs.view(single.job_id)).with_avatar_id is None
    assert await services.dispatcher.run_once() == single.job_id
    assert engine.renders[-1][1] == ()


async def test_stale_features_of_the_second_avatar_are_reencoded(
    two_subject_services: Services,
) -> None:
    services = two_subject_services
    engine: RecordingRenders = services.engine  # type: ignore[assignment]
    await _avatar(services, ALICE, "Mia", 1)
    rex = await _avatar(services, ALICE, "Rex", 2, "pet")
    facts = engine.facts()
    current = facts.encoder_id(facts.default_personalizer)
    async with services.database.begin() as session:  # as if made by an older encoder
        await session.execute(
            update(Feature).where(Feature.avatar_id == rex.id).values(encoder_id="old-encoder")
        )
    ticket = await services.renders.request(
        ALICE, GUILD, CHANNEL, "Mia", "the two of them", with_avatar="Rex"
    )
    assert await services.dispatcher.run_once() == ticket.job_id
    assert (await services.jobs.view(ticket.job_id)).status == "done"
    async with services.database.begin(readonly=True) as session:
        encoders = set(
            await session.scalars(select(Feature.encoder_id).where(Feature.avatar_id == rex.id))
        )
    assert encoders == {"old-encoder", current}
    [second] = engine.renders[-1][1]
    assert same_features(second, await _features(services, rex.id))


async def test_deleting_the_second_avatar_never_leaves_a_one_subject_render(
    two_subject_services: Services,
) -> None:
    services = two_subject_services
    await _avatar(services, ALICE, "Mia", 1)
    await _avatar(services, ALICE, "Rex", 2, "pet")
    done = await services.renders.request(
        ALICE, GUILD, CHANNEL, "Mia", "the two of them", with_avatar="Rex"
    )
    assert await services.dispatcher.run_once() == done.job_id
    queued = await services.renders.request(
        ALICE, GUILD, CHANNEL, "Mia", "the two of them again", with_avatar="Rex"
    )
    assert (await services.quotas.usage(GUILD, ALICE)).used == 2

    await services.avatars.delete(ALICE, "Rex")
    async with services.database.begin(readonly=True) as session:
        rows = (await session.execute(select(RenderJob.id, RenderJob.with_avatar_id))).all()
        avatars = set(await session.scalars(select(Avatar.name)))
    assert avatars == {"Mia"}
    # No job points at the deleted avatar; each still says it had one (by its name then).
    assert all(with_id is None for _, with_id in rows)
    view = await services.jobs.view(done.job_id)
    assert view.avatar_names == ("Mia", "Rex") and view.output_count == 1
    with pytest.raises(NotFound, match="second avatar of this render was deleted"):
        await services.renders.reroll(ALICE, done.job_id)
    with pytest.raises(NotFound, match="second avatar of this render was deleted"):
        await services.renders.variations(ALICE, done.job_id)
    # The queued one fails (refunded) rather than render Mia alone.
    assert await services.dispatcher.run_once() == queued.job_id
    failed = await services.jobs.view(queued.job_id)
    assert failed.status == "failed"
    assert "second avatar of this render was deleted" in (failed.error or "")
    assert (await services.quotas.usage(GUILD, ALICE)).used == 1


class _Guidance:
    """The tiny engine publishing another default guidance (or none, as old workers did)."""

    def __init__(self, inner: EnginePort, guidance: float | None) -> None:
        self.inner = inner
        self.guidance = guidance

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def facts(self) -> EngineFacts:
        return replace(self.inner.facts(), default_guidance=self.guidance)


@pytest.mark.parametrize(
    ("published", "configured", "expected"),
    [
        (1.0, None, 1.0),  # the engine's profile decides (FLUX.2 [klein])
        (1.0, 4.5, 4.5),  # an operator's explicit setting wins
        (None, None, 6.0),  # facts of an older worker: the settings' default
        (None, 4.5, 4.5),
    ],
)
async def test_default_guidance_comes_from_the_engine_unless_set(
    database: Database,
    tmp_path,  # type: ignore[no-untyped-def]
    tiny_engine_port: EnginePort,
    published: float | None,
    configured: float | None,
    expected: float,
) -> None:
    engine = (
        TINY if configured is None else TINY.model_copy(update={"default_guidance": configured})
    )
    services = await build_services(
        service_settings(tmp_path, engine=engine),
        database,
        _Guidance(tiny_engine_port, published),  # type: ignore[arg-type]
    )
    await _avatar(services, ALICE, "Mia", 1)
    ticket = await services.renders.request(ALICE, GUILD, CHANNEL, "Mia", "on a beach")
    assert (await services.jobs.view(ticket.job_id)).settings.guidance == expected
    chosen = await services.renders.request(
        ALICE, GUILD, CHANNEL, "Mia", "on a beach", RenderOptions(guidance=2.0)
    )
    assert (await services.jobs.view(chosen.job_id)).settings.guidance == 2.0
