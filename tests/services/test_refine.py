"""Upscale and Vary as jobs (issue 25): ownership, the chosen image, the charge, the workers'
ability, the source gone, forget-me; rendered on the real tiny engine."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select, update

from bot.errors import InvalidInput, NotOwner
from bot.services.container import Services, build_services
from bot.services.dispatcher import DispatcherConfig
from bot.services.job_settings import StoredRender, read_render, render_column
from bot.services.ports import EnginePort
from bot.services.results import Refine, RenderOptions, RenderSettings
from db.models import JobOutput, RenderJob
from db.session import Database
from tests.fixtures.services import CHANNEL, GUILD, make_avatar, service_settings


def size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        return image.size


async def rendered(services: Services, count: int = 2) -> int:
    await make_avatar(services, 7, "Mia")
    options = RenderOptions(count=count, seed=5)
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a portrait", options)
    assert await services.dispatcher.run_once() == ticket.job_id
    return ticket.job_id


async def test_upscale_of_image_2_is_one_image_of_twice_the_side(
    database: Database, tmp_path: Path, tiny_engine_port: EnginePort
) -> None:
    services = await build_services(
        service_settings(tmp_path, upscale_units=3),
        database,
        tiny_engine_port,
        dispatcher_config=DispatcherConfig(concurrency=1),
    )
    try:
        source = await rendered(services)
        ticket = await services.renders.upscale(7, source, 2)
        assert (await services.quotas.usage(GUILD, 7)).used == 1 + 3
        assert await services.dispatcher.run_once() == ticket.job_id
        job = await services.jobs.view(ticket.job_id)
        assert job.status == "done" and job.parent_job_id == source
        refine = job.settings.refine
        assert refine is not None
        assert (refine.kind, refine.source_job_id, refine.source_index) == ("upscale", source, 2)
        [png] = await services.jobs.outputs(ticket.job_id)
        [_, chosen] = await services.jobs.outputs(source)
        assert size(png) == (2 * size(chosen)[0], 2 * size(chosen)[1])
        assert job.seeds[0] not in (await services.jobs.view(source)).seeds
    finally:
        await services.aclose()


@pytest.mark.parametrize("variation", ["subtle", "strong"])
async def test_vary_makes_new_images_of_the_same_size(services: Services, variation: str) -> None:
    source = await rendered(services)
    ticket = await services.renders.vary(7, source, 1, variation)  # type: ignore[arg-type]
    assert await services.dispatcher.run_once() == ticket.job_id
    job = await services.jobs.view(ticket.job_id)
    assert job.status == "done"
    assert job.settings.refine is not None and job.settings.refine.kind == f"vary_{variation}"
    pngs = await services.jobs.outputs(ticket.job_id)
    originals = await services.jobs.outputs(source)
    assert len(pngs) == 2
    assert {size(p) for p in pngs} == {size(originals[0])}
    assert not set(job.seeds) & set((await services.jobs.view(source)).seeds)
    assert (await services.quotas.usage(GUILD, 7)).used == 2  # one render each


async def test_another_members_render_is_refused(services: Services) -> None:
    source = await rendered(services)
    with pytest.raises(NotOwner):
        await services.renders.upscale(8, source, 1)
    with pytest.raises(NotOwner):
        await services.renders.vary(8, source, 1, "subtle")


async def test_a_missing_or_withheld_image_is_refused(
    services: Services, database: Database
) -> None:
    source = await rendered(services)
    with pytest.raises(InvalidInput, match="no image 3"):
        await services.renders.upscale(7, source, 3)
    with pytest.raises(InvalidInput, match="no image 0"):
        await services.renders.vary(7, source, 0, "strong")
    async with database.begin() as session:
        await session.execute(
            update(JobOutput)
            .where(JobOutput.job_id == source, JobOutput.index == 1)
            .values(flagged=True)
        )
    with pytest.raises(InvalidInput, match="withheld"):
        await services.renders.upscale(7, source, 2)
    assert (await services.quotas.usage(GUILD, 7)).used == 1


async def test_the_source_deleted_meanwhile_fails_and_refunds(services: Services) -> None:
    source = await rendered(services)
    ticket = await services.renders.upscale(7, source, 1)
    await services.renders.delete(7, source)
    assert await services.dispatcher.run_once() == ticket.job_id
    job = await services.jobs.view(ticket.job_id)
    assert job.status == "failed"
    assert job.error is not None and "deleted" in job.error
    assert (await services.quotas.usage(GUILD, 7)).used == 1  # the first render only


async def test_flux2_klein_upscales_but_cannot_vary(two_subject_services: Services) -> None:
    services = two_subject_services
    source = await rendered(services, count=1)
    with pytest.raises(InvalidInput, match="cannot vary an image: it reads images only as"):
        await services.renders.vary(7, source, 1, "subtle")
    ticket = await services.renders.upscale(7, source, 1)
    assert await services.dispatcher.run_once() == ticket.job_id
    job = await services.jobs.view(ticket.job_id)
    assert job.status == "done" and job.parent_job_id == source
    [png] = await services.jobs.outputs(ticket.job_id)
    [chosen] = await services.jobs.outputs(source)
    assert size(png) == (2 * size(chosen)[0], 2 * size(chosen)[1])


async def test_workers_without_the_refinement_refuse_it(services: Services) -> None:
    source = await rendered(services, count=1)
    facts = await services.workers.current_facts()
    personalizer = facts.default_personalizer
    # Workers that upscale only (as on FLUX.2 [klein]), then workers that refine nothing.
    services.workers.local = replace(facts, refines={personalizer: frozenset({"upscale"})})
    with pytest.raises(InvalidInput, match="cannot vary an image"):
        await services.renders.vary(7, source, 1, "strong")
    services.workers.local = replace(facts, refines={personalizer: frozenset()})
    with pytest.raises(InvalidInput, match="cannot re-render an image"):
        await services.renders.upscale(7, source, 1)
    assert (await services.quotas.usage(GUILD, 7)).used == 1  # nothing charged


async def test_forget_me_removes_the_refinements(services: Services, database: Database) -> None:
    source = await rendered(services)
    ticket = await services.renders.vary(7, source, 2, "subtle")
    assert await services.dispatcher.run_once() == ticket.job_id
    await services.privacy.forget_me(7)
    async with database.begin(readonly=True) as session:
        jobs = await session.scalar(select(func.count()).select_from(RenderJob))
        outputs = await session.scalar(select(func.count()).select_from(JobOutput))
    assert (jobs, outputs) == (0, 0)


def test_the_refinement_is_stored_with_the_settings_and_old_rows_have_none() -> None:
    plain = RenderSettings("", "none", "square", 64, 64, 2, 6.0, 1, 5, 0.7, "ip-adapter")
    refined = replace(plain, refine=Refine("vary_strong", 12, 3))
    column = render_column(StoredRender(refined, avatar_name="Mia"))
    assert read_render(column, "", 5).settings == refined
    del column["refine"]
    assert read_render(column, "", 5).settings.refine is None
