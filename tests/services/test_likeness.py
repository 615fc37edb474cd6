"""Likeness on every render and best of k, through the services on the real tiny engine.

Person renders are real renders whose pixels are replaced by real face photos
(tests/fixtures/likeness.py): someone else, the avatar's person, no face, her mirrored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from bot.engine_adapter import EngineAdapter
from bot.errors import InvalidInput, QuotaExceeded
from bot.services.container import Services, build_services
from bot.services.dispatcher import DispatcherConfig
from bot.services.likeness import keep_best, label
from bot.services.ports import OutputVerdict, RenderOutput
from bot.services.results import RenderOptions
from db.models import Feature, JobOutput
from db.session import Database
from kinds import LikenessKind, LikenessScore
from tests.fixtures.likeness import FacesForRenders, candidates, eileen_photos, png
from tests.fixtures.services import (
    CHANNEL,
    GUILD,
    create_now,
    make_avatar,
    service_settings,
)

pytest.importorskip("dlib", reason="likeness of a face needs the `faces` extra")


def score(value: float | None) -> LikenessScore:
    kind = LikenessKind.NO_FACE if value is None else LikenessKind.FACE
    return LikenessScore(kind, value)


def test_best_of_keeps_the_most_alike_unflagged_images() -> None:
    clean, flagged = OutputVerdict(False), OutputVerdict(True)
    output = RenderOutput(
        pngs=(b"a", b"b", b"c", b"d"),
        seeds=(1, 2, 3, 4),
        verdicts=(clean, flagged, clean, clean),
        likeness=(score(0.4), score(0.99), score(None), score(0.7)),
    )
    best = keep_best(output, 2)
    # The flagged 99 % ranks after every unflagged image; no face ranks after any score.
    assert (best.pngs, best.seeds) == ((b"d", b"a"), (4, 1))
    assert [s.value for s in best.likeness] == [0.7, 0.4]
    assert keep_best(output, 4) is output
    unscored = RenderOutput(pngs=(b"a", b"b"), seeds=(1, 2), verdicts=(clean, clean))
    assert keep_best(unscored, 1) is unscored


def test_labels() -> None:
    assert [label(s) for s in (score(0.824), score(None), None)] == [
        "82 %",
        "no face found",
        "not measured",
    ]


@pytest.fixture
async def faces(
    database: Database, tmp_path: Path, tiny_engine_port: EngineAdapter
) -> AsyncIterator[Services]:
    built = await build_services(
        service_settings(tmp_path),
        database,
        FacesForRenders(tiny_engine_port),  # type: ignore[arg-type]
        dispatcher_config=DispatcherConfig(concurrency=1, lease_seconds=5, poll_seconds=0.2),
    )
    try:
        yield built
    finally:
        await built.aclose()


async def render(
    services: Services,
    avatar: str,
    *,
    count: int = 1,
    best_of: int | None = None,
    seed: int | None = None,
) -> int:
    options = RenderOptions(count=count, best_of=best_of, seed=seed)
    ticket = await services.renders.request(7, GUILD, CHANNEL, avatar, "a portrait", options)
    assert await services.dispatcher.run_once() == ticket.job_id
    return ticket.job_id


async def test_each_image_of_a_person_render_gets_its_likeness(faces: Services) -> None:
    await create_now(faces, 7, GUILD, "Eileen", "person", eileen_photos())
    job = await faces.jobs.view(await render(faces, "Eileen", count=4))
    other, her, nobody, mirrored = job.likeness
    assert other is not None and her is not None and mirrored is not None
    assert (other.kind, her.kind, mirrored.kind) == (LikenessKind.FACE,) * 3
    assert nobody == LikenessScore(LikenessKind.NO_FACE, None)
    # Her face passes the same-person line (50 %), someone else's does not.
    assert her.rank > 0.5 > other.rank
    assert mirrored.rank > 0.5


async def test_best_of_4_posts_the_most_alike_and_charges_the_candidates(
    faces: Services,
) -> None:
    await create_now(faces, 7, GUILD, "Eileen", "person", eileen_photos())
    job_id = await render(faces, "Eileen", count=1, best_of=4, seed=10)
    job = await faces.jobs.view(job_id)
    assert job.settings.best_of == 4
    [posted] = await faces.jobs.outputs(job_id)
    stand_ins = [png(i) for i in candidates()]
    assert posted in (stand_ins[1], stand_ins[3])  # her, never someone else or no face
    [kept] = job.likeness
    assert kept is not None and kept.rank > 0.5
    assert job.seeds[0] in (11, 13)  # the candidate's own seed: seed + its index
    usage = await faces.quotas.usage(GUILD, 7)
    assert usage.used == 4  # each image rendered counts ("candidates", the default)


async def test_best_of_is_refused_past_the_quota_left(faces: Services) -> None:
    await create_now(faces, 7, GUILD, "Eileen", "person", eileen_photos())
    await faces.quotas.set(GUILD, actor_is_admin=True, renders_per_day=3)
    with pytest.raises(QuotaExceeded, match="counts as 4 renders"):
        await faces.renders.request(
            7, GUILD, CHANNEL, "Eileen", "a portrait", RenderOptions(best_of=4)
        )
    with pytest.raises(InvalidInput, match="between 1 and 4"):
        await faces.renders.request(
            7, GUILD, CHANNEL, "Eileen", "a portrait", RenderOptions(best_of=5)
        )


async def test_posted_charge_and_the_guild_default(
    database: Database, tmp_path: Path, tiny_engine_port: EngineAdapter
) -> None:
    built = await build_services(
        service_settings(tmp_path, best_of_charge="posted"),
        database,
        FacesForRenders(tiny_engine_port),  # type: ignore[arg-type]
    )
    try:
        await create_now(built, 7, GUILD, "Eileen", "person", eileen_photos())
        await built.quotas.set(GUILD, actor_is_admin=True, best_of=3)
        job = await built.jobs.view(await render(built, "Eileen", count=1))
        assert job.settings.best_of == 3  # the guild's default
        assert len(job.likeness) == 1
        assert (await built.quotas.usage(GUILD, 7)).used == 1  # "posted": one render
    finally:
        await built.aclose()


async def test_an_avatar_enrolled_before_likeness_is_enrolled_on_its_first_render(
    faces: Services,
) -> None:
    await create_now(faces, 7, GUILD, "Eileen", "person", eileen_photos())
    async with faces.database.begin() as session:
        await session.execute(delete(Feature).where(Feature.encoder_id.like("likeness:%")))
    job = await faces.jobs.view(await render(faces, "Eileen", count=2))
    assert [s.rank > 0.5 if s else None for s in job.likeness] == [False, True]
    async with faces.database.begin(readonly=True) as session:
        stored = (await session.scalars(select(Feature.encoder_id))).all()
    assert len([s for s in stored if s.startswith("likeness:face/")]) == 1


async def test_pets_and_objects_get_image_similarity(faces: Services) -> None:
    """The tiny profile has a CLIP image encoder (random weights): a score, not a face."""
    await make_avatar(faces, 7, "Mug")
    job = await faces.jobs.view(await render(faces, "Mug", count=2))
    assert [s.kind if s else None for s in job.likeness] == [LikenessKind.IMAGE] * 2
    assert all(s is not None and 0.0 <= (s.value or 0) <= 1.0 for s in job.likeness)


async def test_scores_are_stored_with_the_outputs_and_erased_with_them(faces: Services) -> None:
    await create_now(faces, 7, GUILD, "Eileen", "person", eileen_photos())
    job_id = await render(faces, "Eileen", count=2)
    async with faces.database.begin(readonly=True) as session:
        rows = (
            await session.execute(
                select(JobOutput.likeness_kind, JobOutput.likeness).where(
                    JobOutput.job_id == job_id
                )
            )
        ).all()
    assert [kind for kind, _ in rows] == ["face", "face"]
    await faces.privacy.forget_me(7)
    async with faces.database.begin(readonly=True) as session:
        assert (await session.scalars(select(JobOutput.id))).all() == []
        assert (await session.scalars(select(Feature.id))).all() == []


async def test_best_of_is_refused_for_two_avatars_in_one_picture(
    two_subject_services: Services,
) -> None:
    services = two_subject_services
    await create_now(services, 7, GUILD, "Eileen", "person", eileen_photos())
    await make_avatar(services, 7, "Cat", kind="pet")
    with pytest.raises(InvalidInput, match="two avatars in one picture"):
        await services.renders.request(
            7,
            GUILD,
            CHANNEL,
            "Eileen",
            "the person from image 1 and the cat from image 2",
            RenderOptions(best_of=2),
            with_avatar="Cat",
        )
    # The guild's default applies where it can, and is left out where it cannot.
    await services.quotas.set(GUILD, actor_is_admin=True, best_of=2)
    ticket = await services.renders.request(
        7,
        GUILD,
        CHANNEL,
        "Eileen",
        "the person from image 1 and the cat from image 2",
        with_avatar="Cat",
    )
    assert (await services.jobs.view(ticket.job_id)).settings.best_of == 1


async def test_admins_see_the_likeness_in_the_usage_report(faces: Services) -> None:
    from bot.cogs.admin.cog import usage_table

    await create_now(faces, 7, GUILD, "Eileen", "person", eileen_photos())
    job = await faces.jobs.view(await render(faces, "Eileen", count=4))
    found = [s.value for s in job.likeness if s is not None and s.value is not None]
    [row] = (await faces.quotas.report(GUILD, 1, actor_is_admin=True)).rows
    assert row.likeness == pytest.approx(sum(found) / len(found))
    assert row.lost_faces == 1  # the candidate with no face
    table = usage_table(await faces.quotas.report(GUILD, 1, actor_is_admin=True))
    assert f"{round(row.likeness * 100)} %     1" in table
