"""``/avatar render`` with ``with`` (a second avatar in the same picture), end to end through
real discord.py on SimCord: refused on the ``tiny`` profile (IP-Adapter shows one subject)
before anything is queued or counted; rendered, rerolled and cancelled on ``tiny-flux2``
(FLUX.2 [klein] with random weights: two reference images, "image 1" and "image 2")."""

from __future__ import annotations

import pytest

from bot.app import AvatarBot
from bot.config import Settings
from bot.errors import InvalidInput, NotFound
from bot.services.ports import EnginePort
from tests.fixtures.discord import (
    SIMCORD,
    BotFactory,
    World,
    button_ids,
    create_avatar,
    edits,
    expect_errors,
    result_card,
)
from tests.fixtures.services import TINY_FLUX2

pytestmark = SIMCORD

PROMPT = "the mug from image 1 and the cat from image 2 on a beach"


def job_id_of(message) -> int:  # type: ignore[no-untyped-def]
    reroll = next(i for i in button_ids(message) if i.startswith("avatarbot:reroll:"))
    return int(reroll.rsplit(":", 1)[1])


async def render_with(world: World, member, **options):  # type: ignore[no-untyped-def]
    options.setdefault("avatar", "Mug")
    options.setdefault("prompt", PROMPT)
    options.setdefault("with", "Cat")
    return await member.slash(world.channel, "avatar render", **options)


async def test_with_is_refused_where_the_personalizer_shows_one_avatar(world: World) -> None:
    await create_avatar(world, world.alice, "Mug")
    await create_avatar(world, world.alice, "Cat", kind="pet")
    result = await render_with(world, world.alice)
    expect_errors(world.env, InvalidInput)
    assert result.ephemeral
    assert result.response.content == (
        "This server renders with ip-adapter, which shows one avatar per picture, so “with” "
        "cannot be used here. Render each avatar on its own."
    )
    assert result.followups == []
    services = world.bot.services
    assert [j for j in await services.jobs.active() if j.kind == "render"] == []
    assert (await services.quotas.usage(world.guild.id, world.alice.id)).used == 0


async def test_with_autocompletes_the_members_own_avatars(world: World) -> None:
    await create_avatar(world, world.alice, "Mug")
    await create_avatar(world, world.alice, "Cat", kind="pet")
    await create_avatar(world, world.bob, "Dog", kind="pet")
    choices = await world.alice.autocomplete(world.channel, "avatar render", "with", "")
    assert [c["value"] for c in choices] == ["Cat", "Mug"]
    choices = await world.bob.autocomplete(world.channel, "avatar render", "with", "")
    assert [c["value"] for c in choices] == ["Dog"]


async def test_help_explains_two_avatar_renders(world: World) -> None:
    result = await world.alice.slash(world.channel, "avatar help")
    assert "the person from image 1 and the dog from image 2" in result.response.content


# -- a personalizer that shows two avatars ---------------------------------------------------


@pytest.fixture
def flux2_bots(bot_settings: Settings, tiny_flux2_port: EnginePort) -> BotFactory:
    """Bots on the session's ``tiny-flux2`` engine (tests/fixtures/services.py)."""
    return BotFactory(bot_settings.model_copy(update={"engine": TINY_FLUX2}), tiny_flux2_port)


class TestTinyFlux2:
    @pytest.fixture
    def simcord_bot(self, flux2_bots: BotFactory) -> AvatarBot:
        return flux2_bots()

    async def test_two_avatars_render_reroll_and_cancel(self, world: World) -> None:
        services = world.bot.services
        facts = await services.workers.current_facts()
        assert facts.subjects_for(facts.default_personalizer) == 2
        await create_avatar(world, world.alice, "Mug")
        await create_avatar(world, world.alice, "Cat", kind="pet")
        avatars = {a.name: a for a in await services.avatars.list(world.alice.id)}
        mug, cat = avatars["Mug"], avatars["Cat"]

        before = len(edits(world.env))
        result = await render_with(world, world.alice, seed=5)
        assert result.response.content.startswith("Done"), result.response.content
        assert any(e.startswith("Rendering **Mug** and **Cat**") for e in edits(world.env)[before:])
        [posted] = result.followups
        assert len(posted.attachments) == 1
        assert result_card(posted).subjects == "Avatars: Mug + Cat"
        job = await services.jobs.view(job_id_of(posted))
        assert (job.status, job.avatar_id, job.with_avatar_id) == ("done", mug.id, cat.id)
        assert job.settings.personalizer == facts.default_personalizer
        # The profile's guidance (FLUX.2 [klein]: distilled), not SD1.5's.
        assert job.settings.guidance == facts.default_guidance
        [png] = await services.jobs.outputs(job.id)
        assert png.startswith(b"\x89PNG")

        rerolled = await world.alice.click(posted, label="Reroll")
        assert rerolled.response.content.startswith("Done"), rerolled.response.content
        [again] = rerolled.followups
        redo = await services.jobs.view(job_id_of(again))
        assert (redo.parent_job_id, redo.avatar_id, redo.with_avatar_id) == (job.id, mug.id, cat.id)
        assert result_card(again).subjects == "Avatars: Mug + Cat"

        # The same avatar twice is refused; so is another member's.
        same = await render_with(world, world.alice, **{"with": "mug"})
        assert "two different avatars" in same.response.content
        await create_avatar(world, world.bob, "Dog", kind="pet")
        theirs = await render_with(world, world.alice, **{"with": "Dog"})
        assert theirs.response.content.startswith("You have no avatar named “Dog”")
        expect_errors(world.env, InvalidInput, NotFound)

        # Cancelled while it waits: refunded, like any render.
        used = (await services.quotas.usage(world.guild.id, world.alice.id)).used
        services.dispatcher.pause()
        queued = await render_with(world, world.alice)
        assert queued.response.content.startswith("Queued")
        await world.alice.click(queued.response, label="Cancel")
        assert queued.response.content == "Cancelled. Your render was refunded."
        services.dispatcher.resume()
        assert (await services.quotas.usage(world.guild.id, world.alice.id)).used == used
