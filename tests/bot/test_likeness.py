"""Likeness under every person render and best of k, end to end through real discord.py on
SimCord. The renders are real tiny-profile renders whose pixels are replaced by real face
photos (tests/fixtures/likeness.py: someone else, the avatar's person, no face, her mirrored);
the scorer, best of k, storage, delivery, restarts and forget-me are the product's."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from bot.app import AvatarBot
from bot.config import Settings
from bot.engine_adapter import EngineAdapter
from db.models import Feature, JobOutput
from tests.fixtures.discord import (
    SIMCORD,
    BotFactory,
    World,
    button_ids,
    create_avatar,
    result_card,
)
from tests.fixtures.likeness import FacesForRenders, candidates, eileen_photos, png

pytestmark = [SIMCORD, pytest.mark.usefixtures("faces_extra")]

PROMPT = "a portrait in a garden"
PERCENT = r"(\d{1,3}) %"


@pytest.fixture
def faces_extra() -> None:
    pytest.importorskip("dlib", reason="likeness of a face needs the `faces` extra")


@pytest.fixture
async def face_bots(
    bot_settings: Settings, tiny_engine_port: EngineAdapter
) -> AsyncIterator[BotFactory]:
    factory = BotFactory(bot_settings, FacesForRenders(tiny_engine_port))  # type: ignore[arg-type]
    try:
        yield factory
    finally:
        await factory.close()


@pytest.fixture
def simcord_bot(face_bots: BotFactory) -> AvatarBot:
    return face_bots()


def likeness_field(message) -> str:  # type: ignore[no-untyped-def]
    return result_card(message).facts["Likeness"]


def job_id_of(message) -> int:  # type: ignore[no-untyped-def]
    reroll = next(i for i in button_ids(message) if i.startswith("avatarbot:reroll:"))
    return int(reroll.rsplit(":", 1)[1])


async def test_likeness_per_image_best_of_restart_and_forget_me(
    world: World, face_bots: BotFactory
) -> None:
    services = world.bot.services
    await create_avatar(world, world.alice, "Eileen", kind="person", photos=eileen_photos())

    # Every image gets its figure: someone else below 50 %, her above, no face said so.
    result = await world.alice.slash(
        world.channel, "avatar render", avatar="Eileen", prompt=PROMPT, count=4
    )
    [posted] = result.followups
    field = likeness_field(posted)
    match = re.fullmatch(rf"1: {PERCENT} · 2: {PERCENT} · 3: no face found · 4: {PERCENT}", field)
    assert match is not None, field
    other, her, mirrored = (int(g) for g in match.groups())
    assert other < 50 < min(her, mirrored)

    # Best of 4: one image posted, hers, charged as the four it rendered.
    best = await world.alice.slash(
        world.channel, "avatar render", avatar="Eileen", prompt=PROMPT, best_of=4
    )
    [chosen] = best.followups
    assert len(chosen.attachments) == 1
    stand_ins = [png(i) for i in candidates()]
    job_id = job_id_of(chosen)
    [stored] = await services.jobs.outputs(job_id)
    assert stored in (stand_ins[1], stand_ins[3])
    assert int(re.fullmatch(PERCENT, likeness_field(chosen)).group(1)) > 50  # type: ignore[union-attr]
    assert (await services.quotas.usage(world.guild.id, world.alice.id)).used == 1 + 4
    before = (await services.jobs.view(job_id)).likeness

    # A restart: the scores are the stored ones, and a reroll scores again.
    old_bot = world.bot
    await world.env.restart_bot(face_bots())
    await old_bot.close()
    assert (await world.bot.services.jobs.view(job_id)).likeness == before
    rerolled = await world.alice.click(chosen, label="Reroll")
    [again] = rerolled.followups
    assert re.fullmatch(PERCENT, likeness_field(again))
    assert (await world.bot.services.jobs.view(job_id_of(again))).settings.best_of == 4

    # Forget-me: the renders, their scores and the enrolled faces are gone.
    asked = await world.alice.slash(world.channel, "avatar forget-me")
    await world.alice.click(asked.response, label="Erase everything")
    assert asked.response.content.startswith("Done. Erased 1 avatar(s)")
    async with world.bot.services.database.begin(readonly=True) as session:
        assert (await session.scalars(select(JobOutput.likeness))).all() == []
        assert (await session.scalars(select(Feature.encoder_id))).all() == []
