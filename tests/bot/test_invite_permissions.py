"""The invite's permissions (bot/ui/permissions.py) are what the bot's channel messages need.

The one message the bot posts in a channel is a render's result once the interaction token
has expired. In a channel where the bot has exactly the invite's permissions (everything else
denied) that result is posted there, its gallery card included; where it lacks one the invite
asks for (send messages), the channel refuses it and the member gets it by direct message.
"""

from __future__ import annotations

from typing import Any

import discord
from simcord.builders import ChannelHandle

from bot.ui.jobs import MAX_POLL
from bot.ui.permissions import bot_permissions
from tests.fixtures.discord import SIMCORD, World, button_ids, create_avatar, result_card

pytestmark = SIMCORD


def channel_where_the_bot_has(world: World, allowed: discord.Permissions) -> Any:
    """A new channel where the bot has ``allowed`` and nothing else."""
    denied = discord.Permissions(discord.Permissions.all().value & ~allowed.value)
    overwrite = discord.PermissionOverwrite.from_pair(allowed, denied)
    assert world.bot.user is not None
    return world.guild.create_text_channel("invited", overwrites={world.bot.user: overwrite})


async def late_result(world: World, channel: Any) -> int:
    """Render in ``channel``, then let the token expire before the job runs; its id."""
    await create_avatar(world, world.alice)
    world.bot.services.dispatcher.pause()
    result = await world.alice.slash(channel, "avatar render", avatar="Mug", prompt="a hat")
    [cancel_id] = button_ids(result.response)
    await world.env.advance_time(16 * 60)  # the interaction token is dead now
    world.bot.services.dispatcher.resume()
    await world.env.advance_time(MAX_POLL)
    assert result.followups == []  # not through the dead token
    return int(cancel_id.rsplit(":", 1)[1])


def bot_messages(world: World, channel: Any) -> list[discord.Message]:
    assert world.bot.user is not None
    return [m for m in channel.history() if m.author.id == world.bot.user.id]


def direct_messages(world: World, member: Any) -> list[discord.Message]:
    dm = ChannelHandle(world.env, None, world.env.backend.get_dm_channel(member.id))
    return list(dm.history())


async def test_with_the_invites_permissions_a_late_result_is_posted_in_the_channel(
    world: World,
) -> None:
    channel = channel_where_the_bot_has(world, bot_permissions())
    job_id = await late_result(world, channel)

    [message] = bot_messages(world, channel)
    assert result_card(message).mention == world.alice.mention
    assert len(message.attachments) == 1 and message.flags.components_v2
    assert direct_messages(world, world.alice) == []
    assert (await world.bot.services.jobs.view(job_id)).delivered_at is not None


async def test_without_send_messages_the_channel_refuses_it_and_it_goes_by_dm(
    world: World,
) -> None:
    allowed = bot_permissions()
    allowed.send_messages = False
    channel = channel_where_the_bot_has(world, allowed)
    job_id = await late_result(world, channel)

    assert bot_messages(world, channel) == []
    [message] = direct_messages(world, world.alice)
    assert len(message.attachments) == 1
    assert (await world.bot.services.jobs.view(job_id)).delivered_at is not None
