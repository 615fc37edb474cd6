"""The semantic prompt screen through the real bot on SimCord, with the real tiny text encoder:
thresholds from settings make it decide (random weights mean nothing, so the sexual threshold
is the lowest margin: every prompt scores above it). A render it refuses fails before any
image exists, is refunded, and the member is told privately; the same avatar in an
age-restricted channel renders, as the rules say for objects."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from bot.config import SafetySettings, SemanticScreenSettings
from db.models import JobOutput, RenderJob
from tests.fixtures.discord import SIMCORD, World, age_restricted, create_avatar

pytestmark = [
    SIMCORD,
    pytest.mark.bot_settings(
        safety=SafetySettings(semantic=SemanticScreenSettings(sexual=-2.0, minors=2.0, always=2.0))
    ),
]


async def _jobs(world: World) -> list[tuple[RenderJob, int]]:
    async with world.bot.services.database.begin(readonly=True) as session:
        jobs = await session.scalars(
            select(RenderJob).where(RenderJob.kind == "render").order_by(RenderJob.id)
        )
        out = []
        for job in jobs:
            outputs = await session.scalars(select(JobOutput).where(JobOutput.job_id == job.id))
            out.append((job, len(outputs.all())))
        return out


async def test_a_screened_render_is_refused_refunded_and_the_member_told(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_avatar(world, world.alice)
    usage = world.bot.services.quotas.usage
    result: Any = await world.alice.slash(
        world.channel, "avatar render", avatar="Mug", prompt="a mug on a wooden table"
    )
    [notice] = result.followups
    assert notice.ephemeral and not notice.attachments
    assert "refused by the safety screen" in notice.message.content
    assert "age-restricted" in notice.message.content
    assert [a for m in world.channel.history(viewer=world.bob) for a in m.attachments] == []
    [(job, outputs)] = await _jobs(world)
    assert (job.status, job.error_code, outputs) == ("failed", "prompt_screened", 0)
    assert (await usage(world.guild.id, world.alice.id)).used == 0  # refunded

    # An object avatar in an age-restricted channel: the sexual rule does not apply.
    after_dark = age_restricted(monkeypatch, world)
    await world.alice.slash(
        after_dark, "avatar render", avatar="Mug", prompt="a mug on a wooden table"
    )
    jobs = await _jobs(world)
    assert (jobs[-1][0].status, jobs[-1][1]) == ("done", 1)
