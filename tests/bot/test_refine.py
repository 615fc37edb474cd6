"""Upscale and Vary buttons on SimCord (issue 25): one row per posted image, the refined
images posted like a render's, the buttons still work after a restart, the classic layout,
forget-me of the refinements, and FLUX.2 [klein] (tiny-flux2): Upscale works, Vary says why
not."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from sqlalchemy import select

from bot.app import AvatarBot
from bot.config import Settings
from bot.errors import NotFound
from bot.services.ports import EnginePort
from db.models import JobOutput, RenderJob
from tests.fixtures.discord import (
    SIMCORD,
    BotFactory,
    World,
    button_ids,
    components,
    create_avatar,
    result_card,
)
from tests.fixtures.services import TINY_FLUX2

pytestmark = SIMCORD


def job_id_of(message) -> int:
    reroll = next(i for i in button_ids(message) if i.startswith("avatarbot:reroll:"))
    return int(reroll.rsplit(":", 1)[1])


async def rendered(world: World, count: int = 2):
    await create_avatar(world, world.alice)
    result = await world.alice.slash(
        world.channel, "avatar render", avatar="Mug", prompt="a mug on a desk", count=count
    )
    [posted] = result.followups
    return posted


async def sizes(world: World, job_id: int) -> list[tuple[int, int]]:
    out = []
    for png in await world.bot.services.jobs.outputs(job_id):
        with Image.open(io.BytesIO(png)) as image:
            out.append(image.size)
    return out


async def test_upscale_2_posts_an_image_of_twice_the_side(world: World) -> None:
    posted = await rendered(world)
    source = job_id_of(posted)
    clicked = await world.alice.click(posted, label="Upscale 2")
    [upscaled] = clicked.followups
    assert len(upscaled.attachments) == 1
    job = job_id_of(upscaled)
    [(width, height)] = await sizes(world, job)
    (w, h), _ = await sizes(world, source)
    assert (width, height) == (2 * w, 2 * h)
    view = await world.bot.services.jobs.view(job)
    assert view.parent_job_id == source and view.settings.refine is not None
    assert (await world.bot.services.quotas.usage(world.guild.id, world.alice.id)).used == 2


async def test_vary_buttons_post_new_images_of_the_same_size(world: World) -> None:
    posted = await rendered(world)
    source = job_id_of(posted)
    for label, kind in (("Vary 1 (subtle)", "vary_subtle"), ("Vary 2 (strong)", "vary_strong")):
        [varied] = (await world.alice.click(posted, label=label)).followups
        assert len(varied.attachments) == 2
        view = await world.bot.services.jobs.view(job_id_of(varied))
        assert view.settings.refine is not None and view.settings.refine.kind == kind
        assert await sizes(world, view.id) == await sizes(world, source)


async def test_image_buttons_work_after_a_restart(world: World, bots) -> None:
    posted = await rendered(world, count=1)
    old_bot = world.bot
    await world.env.restart_bot(bots())
    await old_bot.close()
    assert world.bot is not old_bot

    # Every button of the gallery card posted before the restart, the image's and the job's.
    for label, images in (
        ("Upscale 1", 1),
        ("Vary 1 (subtle)", 1),
        ("Vary 1 (strong)", 1),
        ("Reroll", 1),
        ("Variations", 4),
    ):
        [new] = (await world.alice.click(posted, label=label)).followups
        assert job_id_of(new) != job_id_of(posted), label
        assert len(new.attachments) == len(result_card(new).gallery) == images, label
    deleted = await world.alice.click(posted, label="Delete")
    assert deleted.followups[-1].content == "Deleted: the images and the prompt."
    with pytest.raises(NotFound):
        await world.bot.services.jobs.view(job_id_of(posted))


async def test_four_images_get_a_row_of_buttons_each(world: World) -> None:
    posted = await rendered(world, count=4)
    assert len(result_card(posted).gallery) == 4
    rows = [c for c in components(posted) if c["type"] == 1]
    assert len(rows) == 5  # the job's buttons, then one row per image
    assert len(components(posted)) <= 40  # Discord's most per components V2 message
    job = job_id_of(posted)
    assert button_ids(posted)[3:6] == [
        f"avatarbot:{a}:{job}:1" for a in ("upscale", "subtle", "strong")
    ]


@pytest.mark.bot_settings(result_layout="classic")
async def test_the_classic_layout_posts_an_embed_and_rows_of_buttons(world: World) -> None:
    """The operator's fallback for clients without components V2: same buttons, same jobs."""
    posted = await rendered(world, count=2)
    assert not posted.flags.components_v2
    assert posted.content == world.alice.mention
    [embed] = posted.embeds
    assert embed.author.name == "Avatar: Mug" and embed.description == "a mug on a desk"
    assert len(posted.attachments) == 2 and len(posted.components) == 3  # rows: job, 1, 2
    [upscaled] = (await world.alice.click(posted, label="Upscale 2")).followups
    assert not upscaled.flags.components_v2 and len(upscaled.attachments) == 1
    view = await world.bot.services.jobs.view(job_id_of(upscaled))
    assert view.parent_job_id == job_id_of(posted)


async def test_forget_me_erases_the_refinements_and_their_buttons_stop(world: World) -> None:
    """A member's upscales and varies are renders of theirs: forget-me erases them with the
    source, and the buttons left on the posted messages find nothing to refine."""
    posted = await rendered(world, count=1)
    [upscaled] = (await world.alice.click(posted, label="Upscale 1")).followups
    [varied] = (await world.alice.click(posted, label="Vary 1 (subtle)")).followups
    services = world.bot.services
    refined = [job_id_of(upscaled), job_id_of(varied)]
    for job in refined:
        assert (await services.jobs.view(job)).parent_job_id == job_id_of(posted)

    asked = await world.alice.slash(world.channel, "avatar forget-me")
    await world.alice.click(asked.response, label="Erase everything")
    assert asked.response.content.startswith("Done. Erased 1 avatar(s), 2 photo(s), 3 render(s)")
    async with services.database.begin(readonly=True) as session:
        assert (await session.scalars(select(RenderJob.id))).all() == []
        assert (await session.scalars(select(JobOutput.job_id))).all() == []
    for message, label in ((posted, "Upscale 1"), (upscaled, "Vary 1 (strong)")):
        pressed = await world.alice.click(message, label=label)
        assert pressed.followups == []
        assert pressed.response.content == "This render no longer exists."


@pytest.fixture
def flux2_bots(bot_settings: Settings, tiny_flux2_port: EnginePort) -> BotFactory:
    """Bots on the session's ``tiny-flux2`` engine (tests/fixtures/services.py)."""
    return BotFactory(bot_settings.model_copy(update={"engine": TINY_FLUX2}), tiny_flux2_port)


class TestTinyFlux2:
    @pytest.fixture
    def simcord_bot(self, flux2_bots: BotFactory) -> AvatarBot:
        return flux2_bots()

    async def test_upscale_posts_twice_the_side_and_vary_says_why_not(self, world: World) -> None:
        posted = await rendered(world, count=1)
        source = job_id_of(posted)
        [upscaled] = (await world.alice.click(posted, label="Upscale 1")).followups
        assert len(upscaled.attachments) == 1
        [(w, h)] = await sizes(world, source)
        assert await sizes(world, job_id_of(upscaled)) == [(2 * w, 2 * h)]
        view = await world.bot.services.jobs.view(job_id_of(upscaled))
        assert view.parent_job_id == source and view.settings.refine is not None

        refused = await world.alice.click(posted, label="Vary 1 (subtle)")
        assert refused.followups == []
        assert "cannot vary an image: it reads images only as references" in (
            refused.response.content
        )
        assert "Upscale works" in refused.response.content
