"""Output safety on SimCord with the real nudenet check: flagged renders are never posted in a
normal channel (the member is told privately and refunded); in an age-restricted channel the
server's choice applies (block, or spoilers); verdicts are kept with the job; the admin
commands set and show the policy. Flagging uses the real detector with threshold 0 (every
image), as docs/architecture.md#conventions asks: the code path is real, only the threshold is
extreme."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from bot.config import SafetySettings
from db.models import AuditEntry, JobOutput, RenderJob
from tests.fixtures.discord import SIMCORD, World, age_restricted, create_avatar, result_card

pytestmark = SIMCORD

FLAG_ALL = pytest.mark.bot_settings(safety=SafetySettings(threshold=0.0))


async def render(world: World, member: Any, channel: Any = None, **options: Any) -> Any:
    options.setdefault("avatar", "Mug")
    options.setdefault("prompt", "a mug on a wooden table")
    return await member.slash(channel or world.channel, "avatar render", **options)


def public_attachments(world: World, channel: Any) -> list[str]:
    """Filenames of the attachments another member (bob) sees in the channel."""
    return [a.filename for m in channel.history(viewer=world.bob) for a in m.attachments]


async def last_job(world: World) -> tuple[RenderJob, list[JobOutput]]:
    async with world.bot.services.database.begin(readonly=True) as session:
        job = (
            await session.scalars(
                select(RenderJob).where(RenderJob.kind == "render").order_by(RenderJob.id.desc())
            )
        ).first()
        assert job is not None
        outputs = list(
            await session.scalars(
                select(JobOutput).where(JobOutput.job_id == job.id).order_by(JobOutput.index)
            )
        )
        return job, outputs


async def used(world: World, member: Any) -> int:
    return (await world.bot.services.quotas.usage(world.guild.id, member.id)).used


@FLAG_ALL
async def test_flagged_render_in_a_normal_channel_is_withheld_and_refunded(
    world: World,
) -> None:
    await create_avatar(world, world.alice)
    result = await render(world, world.alice, count=2)

    assert public_attachments(world, world.channel) == []
    assert all(f.ephemeral for f in result.followups)
    assert all(not f.attachments for f in result.followups)
    [notice] = result.followups
    assert "withheld" in notice.message.content
    assert "not age-restricted" in notice.message.content
    assert "refunded" in notice.message.content
    assert result.response.content.startswith("Finished — nothing was posted")
    # Nothing public about it at all: bob sees no message from the bot in the channel.
    assert [m for m in world.channel.history(viewer=world.bob) if m.author.bot] == []

    job, outputs = await last_job(world)
    assert job.status == "done" and job.delivered_at is not None
    assert [o.flagged for o in outputs] == [True, True]
    safety = job.result["safety"]
    assert safety["flagged_as"] == "block" and safety["withheld"] == [0, 1]
    assert safety["refunded"] is True
    assert [i["flagged"] for i in safety["images"]] == [True, True]
    assert all(i["checkers"] == ["nudenet"] for i in safety["images"])
    assert all(isinstance(i["scores"], dict) for i in safety["images"])
    assert await used(world, world.alice) == 0  # every image withheld: refunded


@FLAG_ALL
async def test_age_restricted_channel_blocks_by_default(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    after_dark = age_restricted(monkeypatch, world)
    await create_avatar(world, world.alice)
    result = await render(world, world.alice, after_dark)

    assert public_attachments(world, after_dark) == []
    [notice] = result.followups
    assert notice.ephemeral and "withheld" in notice.message.content
    job, _ = await last_job(world)
    assert job.settings["age_restricted"] is True
    assert job.result["safety"]["flagged_as"] == "block"
    assert await used(world, world.alice) == 0


@FLAG_ALL
async def test_age_restricted_channel_with_spoilers_posts_spoilers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    after_dark = age_restricted(monkeypatch, world)
    chosen = await world.admin.slash(world.channel, "avatar-admin safety policy", policy="spoiler")
    assert chosen.ephemeral and "Spoiler" in chosen.response.content
    await create_avatar(world, world.alice)

    # In a normal channel the server's choice does not apply: still withheld.
    await render(world, world.alice)
    assert public_attachments(world, world.channel) == []

    result = await render(world, world.alice, after_dark, count=2)
    [posted] = result.followups
    assert not posted.ephemeral
    names = [a.filename for a in posted.attachments]
    assert len(names) == 2 and all(n.startswith("SPOILER_render-") for n in names)
    assert public_attachments(world, after_dark) == names
    # The gallery shows both as spoilers too (clients show a gallery's items, not the files).
    assert [item["spoiler"] for item in result_card(posted).gallery] == [True, True]
    job, outputs = await last_job(world)
    assert [o.flagged for o in outputs] == [True, True]
    assert job.result["safety"]["flagged_as"] == "spoiler"
    assert job.result["safety"]["withheld"] == []
    assert await used(world, world.alice) == 1  # the withheld one refunded, this one counts

    async with world.bot.services.database.begin(readonly=True) as session:
        [entry] = list(
            await session.scalars(select(AuditEntry).where(AuditEntry.action == "safety_policy"))
        )
    assert entry.actor_id == world.admin.id
    assert entry.detail == {"nsfw_policy": "spoiler", "before": "block"}


async def test_default_policy_posts_tiny_renders_as_before(world: World) -> None:
    await create_avatar(world, world.alice)
    result = await render(world, world.alice, count=2)
    [posted] = result.followups
    assert not posted.ephemeral
    assert [a.filename.startswith("render-") for a in posted.attachments] == [True, True]
    job, outputs = await last_job(world)
    assert [o.flagged for o in outputs] == [False, False]
    assert job.result["safety"]["withheld"] == []
    assert await used(world, world.alice) == 1


@FLAG_ALL
async def test_safety_show_reports_policy_threshold_and_counts(world: World) -> None:
    await create_avatar(world, world.alice)
    await render(world, world.alice, count=2)
    shown = await world.admin.slash(world.channel, "avatar-admin safety show")
    text = shown.response.content
    assert shown.ephemeral
    assert "Block" in text and "**0**" in text  # the policy and the threshold
    assert "2 image(s) checked in 1 render(s), 2 flagged, 2 withheld, 1 render(s) refunded" in text


@FLAG_ALL
async def test_after_the_token_expired_the_member_is_told_by_dm_never_in_the_channel(
    world: World,
) -> None:
    from simcord.builders import ChannelHandle

    from bot.ui.jobs import MAX_POLL

    await create_avatar(world, world.alice)
    world.bot.services.dispatcher.pause()  # the render waits in line past the token's life
    result = await render(world, world.alice)
    assert result.response.content.startswith("Queued")
    await world.env.advance_time(16 * 60)
    world.bot.services.dispatcher.resume()
    await world.env.advance_time(MAX_POLL)

    job, _ = await last_job(world)
    assert job.status == "done" and job.delivered_at is not None
    assert [m for m in world.channel.history() if m.author.bot] == []
    dm = ChannelHandle(world.env, None, world.env.backend.get_dm_channel(world.alice.id))
    [notice] = dm.history()
    assert "withheld" in notice.content and not notice.attachments
    assert result.followups == []  # not through the dead token


@FLAG_ALL
async def test_a_person_render_posts_no_flagged_image_even_where_spoilers_are_chosen(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21, finding 3: real people are never sexualised. An age-restricted channel of a
    guild that chose spoilers: a person's flagged images are withheld, a pet's are spoilered."""
    from tests.fixtures.services import face_photo

    after_dark = age_restricted(monkeypatch, world)
    await world.admin.slash(world.channel, "avatar-admin safety policy", policy="spoiler")
    await create_avatar(world, world.alice, "Me", kind="person", photos=[("me.jpg", face_photo())])
    await create_avatar(world, world.alice, "Rex", kind="pet")

    result = await render(world, world.alice, after_dark, avatar="Me", prompt="a portrait")
    assert public_attachments(world, after_dark) == []
    assert [m for m in after_dark.history(viewer=world.bob) if m.author.bot] == []
    [notice] = result.followups
    assert notice.ephemeral and not notice.attachments and "withheld" in notice.message.content
    job, outputs = await last_job(world)
    assert [o.flagged for o in outputs] == [True]
    safety = job.result["safety"]
    assert (safety["flagged_as"], safety["person"], safety["withheld"]) == ("block", True, [0])
    assert await used(world, world.alice) == 0  # withheld: refunded (and counted as withheld)

    result = await render(world, world.alice, after_dark, avatar="Rex", prompt="a dog")
    [posted] = result.followups
    assert not posted.ephemeral
    names = [a.filename for a in posted.attachments]
    assert len(names) == 1 and names[0].startswith("SPOILER_render-")
    assert public_attachments(world, after_dark) == names
    job, _ = await last_job(world)
    assert (job.result["safety"]["flagged_as"], job.result["safety"]["person"]) == (
        "spoiler",
        False,
    )
    # The admins see the withheld render per member (issue 21, finding 4).
    report = await world.admin.slash(world.channel, "avatar-admin usage", days=1)
    table = report.response.content.split("```")[1].splitlines()
    header = table[1].split()
    assert header[2:6] == ["used", "refunded", "granted", "withheld"]
    [row] = [line for line in table if str(world.alice.id) in line]
    assert row.split()[2:6] == ["2", "1", "0", "1"]
