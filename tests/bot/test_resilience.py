"""What members see when things go wrong between request and result: a restart mid-render,
a result that lands after the interaction token died, Discord answering 5xx or 429."""

from __future__ import annotations

import discord

from bot.cogs.render.progress import REQUEUED_TEXT
from bot.services.container import build_services
from bot.services.jobs import MAX_ATTEMPTS
from bot.ui.jobs import MAX_POLL
from db import queue
from db.session import Database
from db.types import utcnow
from tests.fixtures.discord import (
    SIMCORD,
    World,
    button_ids,
    create_avatar,
    edits,
    expect_errors,
    result_card,
)

pytestmark = SIMCORD


async def queued_render(world: World, prompt: str = "as a knight") -> tuple[object, int]:
    """Render with the job loop paused: the job stays queued. Returns the result and job id."""
    world.bot.services.dispatcher.pause()
    result = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt=prompt)
    assert result.response.content.startswith("Queued")
    [cancel_id] = button_ids(result.response)
    return result, int(cancel_id.rsplit(":", 1)[1])


async def crash_mid_render(world: World, job_id: int, *, attempts: int | None = None) -> None:
    """Leave what a worker that died mid-render leaves: the job running under its lease."""
    async with world.bot.database.begin() as session:
        job = await queue.claim_next(
            session, worker_id="dead-host:4242:deadbeef", lease_seconds=30, now=utcnow()
        )
        assert job is not None and job.id == job_id
        if attempts is not None:
            job.attempts = attempts


async def restart(world: World, bots, **overrides) -> None:
    old = world.bot
    await world.env.restart_bot(bots(**overrides))
    await old.close()


async def test_restart_mid_render_requeues_the_job_and_delivers_it(world: World, bots) -> None:
    await create_avatar(world, world.alice)
    result, job_id = await queued_render(world)
    await crash_mid_render(world, job_id)

    await restart(world, bots)

    assert REQUEUED_TEXT in edits(world.env)
    assert result.response.content == "Done — your images are posted below."
    [posted] = result.followups
    assert len(posted.attachments) == 1
    job = await world.bot.services.jobs.view(job_id)
    assert job.status == "done" and job.attempts == 2 and job.delivered_at is not None


async def test_restart_mid_render_out_of_attempts_is_refunded_and_told(world: World, bots) -> None:
    await create_avatar(world, world.alice)
    result, job_id = await queued_render(world)
    await crash_mid_render(world, job_id, attempts=MAX_ATTEMPTS)

    await restart(world, bots)

    job = await world.bot.services.jobs.view(job_id)
    assert job.status == "failed" and job.delivered_at is not None
    [notice] = result.followups
    assert notice.ephemeral
    assert "failed" in notice.content and "refunded" in notice.content
    assert result.response.content == "This render failed; see the message below."
    usage = await world.bot.services.quotas.usage(world.guild.id, world.alice.id)
    assert usage.used == 0


async def test_result_after_the_token_expired_mentions_only_the_member(
    world: World, tiny_engine_port
) -> None:
    await create_avatar(world, world.alice)
    role = world.guild.create_role("Everyone-ish")
    result, job_id = await queued_render(world, prompt=f"@everyone and <@&{role.id}> look")
    await world.env.advance_time(16 * 60)  # the interaction token is dead now

    # Another worker process renders it (the scale-out setup): same database, own services.
    database = Database.from_url(world.bot.settings.effective_database_url)
    try:
        worker = await build_services(world.bot.settings, database, tiny_engine_port)
        assert await worker.dispatcher.run_once() == job_id
        await worker.aclose()
    finally:
        await database.dispose()

    # The bot's sweeper (idle: polling once a minute) finds the result and posts it.
    await world.env.advance_time(MAX_POLL)
    message = world.channel.last_message
    assert message.author.id == world.bot.user.id
    card = result_card(message)
    assert card.mention == world.alice.mention
    assert [u.id for u in message.mentions] == [world.alice.id]
    assert not message.mention_everyone and not message.role_mentions
    assert len(message.attachments) == 1
    assert "@\u200beveryone" in card.prompt  # shown (escaped), never pinged
    assert result.followups == []  # not through the dead token
    assert (await world.bot.services.jobs.view(job_id)).delivered_at is not None


async def test_server_errors_and_rate_limits_postpone_delivery_to_the_next_sweeps(
    world: World,
) -> None:
    """discord.py retries 5xx and 429 inside each request (SimCord's injected errors skip
    that); what still fails leaves the job undelivered for the next sweep, without retries
    of our own stacked on top."""
    await create_avatar(world, world.alice)
    world.env.inject_error("POST", "/webhooks/*", status=500, times=1)
    world.env.inject_error("POST", "/webhooks/*", status=429, code=0, message="rate limited")
    result = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="a hat")
    assert result.followups == []
    [pending] = await world.bot.services.jobs.undelivered()
    assert pending.status == "done"

    poll = world.bot.settings.jobs.poll_seconds
    for _ in range(4):  # the sweep backs off while nothing gets through
        if result.followups:
            break
        await world.env.advance_time(poll * 4)
    [posted] = result.followups
    assert len(posted.attachments) == 1
    posts = [
        e for e in world.env.http_requests if e.method == "POST" and e.path.startswith("/webhooks/")
    ]
    assert len(posts) == 3  # two refused, then delivered once
    assert result.response.content.startswith("Done")
    assert await world.bot.services.jobs.undelivered() == []


async def test_delivery_during_an_outage_waits_for_the_next_sweep(world: World) -> None:
    await create_avatar(world, world.alice)
    world.env.inject_error("POST", "/webhooks/*", status=503, times=1)
    result = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="a hat")

    assert result.followups == []
    [pending] = await world.bot.services.jobs.undelivered()
    assert pending.status == "done"

    await world.env.advance_time(world.bot.settings.jobs.poll_seconds)
    [posted] = result.followups
    assert len(posted.attachments) == 1
    assert await world.bot.services.jobs.undelivered() == []


async def test_a_failed_acknowledgement_is_reported_and_nothing_is_queued(world: World) -> None:
    await create_avatar(world, world.alice)
    world.env.inject_error("POST", "/interactions/*/callback", status=500, times=1)
    result = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="a hat")

    expect_errors(world.env, discord.HTTPException)
    assert result.ephemeral
    assert "reference" in result.response.content
    assert await world.bot.services.jobs.active() == []
