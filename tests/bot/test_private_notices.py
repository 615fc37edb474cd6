"""Notices meant for the member alone never become public messages (audit finding 2).

Once the interaction token has expired (15 minutes), a failed render's notice (it quotes the
prompt) and a requeue notice go to the member's DMs; only the result itself, mentioning only
that member, may go to the channel.
"""

from __future__ import annotations

from typing import Any

import pytest
from simcord.builders import ChannelHandle

from bot.cogs.render.progress import REQUEUED_TEXT
from bot.ui.jobs import MAX_POLL
from db import queue
from db.types import utcnow
from tests.fixtures.discord import SIMCORD, World, button_ids, create_avatar, result_card

pytestmark = SIMCORD

SECRET_PROMPT = "as a knight at my secret hideout"


async def queued_render(world: World) -> tuple[Any, int]:
    """Render with the job loop paused: the job stays queued. Returns the result and job id."""
    world.bot.services.dispatcher.pause()
    result = await world.alice.slash(
        world.channel, "avatar render", avatar="Mug", prompt=SECRET_PROMPT
    )
    assert result.response.content.startswith("Queued")
    [cancel_id] = button_ids(result.response)
    return result, int(cancel_id.rsplit(":", 1)[1])


def bot_messages_in_channel(world: World) -> list[Any]:
    me = world.bot.user
    assert me is not None
    return [m for m in world.channel.history() if m.author.id == me.id]


def direct_messages(world: World, member: Any) -> list[Any]:
    dm = ChannelHandle(world.env, None, world.env.backend.get_dm_channel(member.id))
    return list(dm.history())


async def test_a_failed_render_after_the_token_expired_is_a_dm_never_a_channel_message(
    world: World, tiny_engine_port: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_avatar(world, world.alice)
    result, job_id = await queued_render(world)
    await world.env.advance_time(16 * 60)  # the interaction token is dead now

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the GPU fell off the bus")

    monkeypatch.setattr(tiny_engine_port, "render", broken)
    world.bot.services.dispatcher.resume()
    await world.env.advance_time(MAX_POLL)

    job = await world.bot.services.jobs.view(job_id)
    assert job.status == "failed" and job.delivered_at is not None
    assert bot_messages_in_channel(world) == []  # the prompt is never quoted in public
    [notice] = direct_messages(world, world.alice)
    assert "failed" in notice.content and "secret hideout" in notice.content
    assert direct_messages(world, world.bob) == []
    assert result.followups == []  # not through the dead token


async def test_a_requeue_after_the_token_expired_is_a_dm_and_only_the_result_is_public(
    world: World, bots: Any
) -> None:
    await create_avatar(world, world.alice)
    result, job_id = await queued_render(world)
    await world.env.advance_time(16 * 60)
    # A worker died mid-render: the job is running under its lease when the bot restarts.
    async with world.bot.database.begin() as session:
        claimed = await queue.claim_next(
            session, worker_id="dead-host:4242:deadbeef", lease_seconds=30, now=utcnow()
        )
        assert claimed is not None and claimed.id == job_id
    old = world.bot
    await world.env.restart_bot(bots())
    await old.close()
    await world.env.advance_time(MAX_POLL)

    job = await world.bot.services.jobs.view(job_id)
    assert job.status == "done" and job.delivered_at is not None
    dms = direct_messages(world, world.alice)
    assert [m.content for m in dms] == [REQUEUED_TEXT]
    [posted] = bot_messages_in_channel(world)  # the result, and nothing else
    card = result_card(posted)
    assert card.mention == world.alice.mention and not posted.content
    assert len(posted.attachments) == 1
    assert REQUEUED_TEXT not in f"{card.prompt} {card.facts}"
    assert result.followups == []
