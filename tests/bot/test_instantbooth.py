"""The bot end to end with the ``instantbooth`` personalizer (``tiny-instantbooth`` profile):
an admin picks it for the server, a member creates an avatar and renders it, on SimCord."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bot.app import AvatarBot
from bot.config import Settings
from bot.services.ports import EnginePort
from engine.config import EngineSettings
from tests.fixtures.discord import SIMCORD, BotFactory, World, button_ids, create_avatar

pytestmark = SIMCORD

TINY_INSTANTBOOTH = EngineSettings(
    profile="tiny-instantbooth", default_steps=2, offline=True, max_batch=2
)


@pytest.fixture(scope="module")
def instantbooth_port() -> Iterator[EnginePort]:
    from bot.engine_adapter import EngineAdapter

    adapter = asyncio.run(EngineAdapter.create(TINY_INSTANTBOOTH))
    try:
        yield adapter
    finally:
        asyncio.run(adapter.aclose())


@pytest.fixture
def simcord_bot(bot_settings: Settings, instantbooth_port: EnginePort) -> AvatarBot:
    settings = bot_settings.model_copy(update={"engine": TINY_INSTANTBOOTH})
    return BotFactory(settings, instantbooth_port)()


async def test_a_server_renders_avatars_with_instantbooth(world: World) -> None:
    chosen = await world.admin.slash(
        world.channel, "avatar-admin quota personalizer", personalizer="instantbooth"
    )
    assert "instantbooth" in chosen.response.content

    created = await create_avatar(world, world.alice, "Mug")
    assert "Mug" in (created.response.content or "")
    services = world.bot.services
    [avatar] = await services.avatars.list(world.alice.id)
    assert avatar.features_ready

    result = await world.alice.slash(
        world.channel, "avatar render", avatar="Mug", prompt="on a table in a cafe", seed=5
    )
    [posted] = result.followups
    assert len(posted.attachments) == 1
    job_id = int(next(i for i in button_ids(posted) if "reroll" in i).rsplit(":", 1)[1])
    view = await services.jobs.view(job_id)
    assert view.status == "done"
    assert view.settings.personalizer == "instantbooth"
    [png] = await services.jobs.outputs(job_id)
    assert png.startswith(b"\x89PNG")
