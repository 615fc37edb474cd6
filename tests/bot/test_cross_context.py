"""Audit finding 5 end to end on SimCord: a result delivered to a DM keeps its Reroll and
Variations buttons, which stop spending the guild's quota once the member has left it."""

from __future__ import annotations

import io

import discord

from bot.cogs.render.views import PostedImage, result_layout
from tests.fixtures.discord import SIMCORD, World, button_ids, create_avatar

pytestmark = SIMCORD


async def test_dm_buttons_of_a_member_who_left_the_guild_are_refused(world: World) -> None:
    await create_avatar(world, world.alice)
    first = await world.alice.slash(
        world.channel, "avatar render", avatar="Mug", prompt="as an astronaut"
    )
    [posted] = first.followups
    job = int(button_ids(posted)[0].rsplit(":", 1)[1])
    # The delivery fell back to a DM (as when the channel is gone): the same buttons there.
    view = await world.bot.services.jobs.view(job)
    dm = await (await world.bot.fetch_user(world.alice.id)).create_dm()
    [png] = await world.bot.services.jobs.outputs(job)
    image = discord.File(io.BytesIO(png), filename="render.png")
    await dm.send(file=image, view=result_layout(view, [PostedImage(1, "render.png")]))
    [delivered] = [m for m in world.alice.user.dm_channel.history() if m.components]

    # Still a member: Reroll from the DM works and spends the guild's quota.
    rerolled = await world.alice.user.click(delivered, label="Reroll")
    assert rerolled.response.content.startswith("Done"), rerolled.response.content
    used = (await world.bot.services.quotas.usage(world.guild.id, world.alice.id)).used

    world.guild.remove_member(world.alice)
    for label in ("Reroll", "Variations"):
        refused = await world.alice.user.click(delivered, label=label)
        assert "no longer a member" in str(refused.response.content), refused.response.content
    after = (await world.bot.services.quotas.usage(world.guild.id, world.alice.id)).used
    assert after == used
