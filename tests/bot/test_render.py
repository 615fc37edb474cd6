"""``/avatar render`` end to end through real discord.py on SimCord, with the tiny engine:
queue position, progress, the result (a gallery card: images, facts, buttons), refusals, and
the buttons."""

from __future__ import annotations

import pytest

from bot.errors import NotFound, PromptRefused, QuotaExceeded
from tests.fixtures.discord import (
    BLOCKED_WORD,
    SIMCORD,
    World,
    button_ids,
    create_avatar,
    edits,
    expect_errors,
    result_card,
)

pytestmark = SIMCORD


async def render(world: World, member, **options):
    options.setdefault("avatar", "Mug")
    options.setdefault("prompt", "as an astronaut on the moon")
    return await member.slash(world.channel, "avatar render", **options)


def job_id_of(result_message) -> int:
    reroll = next(i for i in button_ids(result_message) if i.startswith("avatarbot:reroll:"))
    return int(reroll.rsplit(":", 1)[1])


async def test_render_posts_a_gallery_with_its_facts_and_buttons(world: World) -> None:
    await create_avatar(world, world.alice)
    before = len(edits(world.env))  # the creation's own messages
    result = await render(
        world,
        world.alice,
        prompt="as an astronaut, @everyone look",
        negative_prompt="blurry",
        count=2,
        seed=7,
        style="photo",
        aspect="portrait",
    )

    # The member's private progress message: queued, rendering, done.
    assert result.deferred or result.acknowledged
    assert result.ephemeral
    assert result.response.content == "Done — your images are posted below."
    shown = edits(world.env)[before:]
    assert shown[0].startswith("Queued")
    assert any(c.startswith("Rendering **Mug**") for c in shown)
    assert shown.index(next(c for c in shown if c.startswith("Rendering"))) < len(shown) - 1

    # The result, public in the channel: one card, the images as its media gallery.
    [posted] = result.followups
    assert not posted.ephemeral
    message = posted.message
    card = result_card(posted)
    assert card.mention == world.alice.mention and not message.content
    assert [u.id for u in message.mentions] == [world.alice.id]
    assert not message.mention_everyone and not message.role_mentions
    assert len(posted.attachments) == 2
    assert all(a.filename.startswith("render-") for a in posted.attachments)
    # Discord resolves each ``attachment://`` reference to its upload.
    assert [item["media"]["url"] for item in card.gallery] == [a.url for a in posted.attachments]
    assert not any(item.get("spoiler") for item in card.gallery)
    assert not posted.embeds
    assert card.prompt.startswith("as an astronaut")
    assert "@\u200beveryone" in card.prompt  # shown escaped (and never pinged, above)
    assert card.subjects == "Avatar: Mug"
    assert card.facts["Seeds"].split(", ")[0] == "7"
    assert card.facts["Style"] == "Photo"
    assert card.facts["Negative prompt"] == "blurry"
    assert card.facts["Time"].endswith(" s")
    width, height = (int(v) for v in card.facts["Size"].split("×"))
    assert height > width  # portrait
    ids = button_ids(posted)
    job = job_id_of(posted)
    assert ids == [
        f"avatarbot:reroll:{job}",
        f"avatarbot:vary:{job}",
        f"avatarbot:delete:{job}",
        *(f"avatarbot:{a}:{job}:{i}" for i in (1, 2) for a in ("upscale", "subtle", "strong")),
    ]
    view = await world.bot.services.jobs.view(job)
    assert view.status == "done" and view.delivered_at is not None


async def test_autocomplete_offers_only_the_members_own_avatars(world: World) -> None:
    await create_avatar(world, world.alice, "Mug")
    await create_avatar(world, world.alice, "Cat")
    await create_avatar(world, world.bob, "Dog")

    def names(choices):
        return [c["value"] for c in choices]

    channel = world.channel
    assert names(await world.alice.autocomplete(channel, "avatar render", "avatar", "")) == [
        "Cat",
        "Mug",
    ]
    assert names(await world.alice.autocomplete(channel, "avatar render", "avatar", "m")) == ["Mug"]
    assert names(await world.bob.autocomplete(channel, "avatar render", "avatar", "")) == ["Dog"]


async def test_someone_elses_avatar_cannot_be_rendered(world: World) -> None:
    await create_avatar(world, world.alice)
    result = await render(world, world.bob)
    expect_errors(world.env, NotFound)
    assert result.ephemeral
    assert result.response.content == "You have no avatar by that name. See /avatar list."
    assert result.followups == []
    assert await world.bot.services.jobs.active() == []


async def test_blocked_prompt_is_refused_before_any_work(world: World) -> None:
    await create_avatar(world, world.alice)
    result = await render(world, world.alice, prompt=f"a {BLOCKED_WORD} scene")
    expect_errors(world.env, PromptRefused)
    assert result.ephemeral
    assert "does not allow" in result.response.content
    assert await world.bot.services.jobs.active() == []
    usage = await world.bot.services.quotas.usage(world.guild.id, world.alice.id)
    assert usage.used == 0


async def test_over_quota_is_refused_with_the_reset_time(world: World) -> None:
    await create_avatar(world, world.alice)
    await world.admin.slash(
        world.channel, "avatar-admin quota set", setting="renders_per_day", value=1
    )
    first = await render(world, world.alice)
    assert first.response.content.startswith("Done")
    second = await render(world, world.alice)
    expect_errors(world.env, QuotaExceeded)
    assert second.ephemeral
    assert "<t:" in second.response.content  # when it resets, in the member's time zone
    assert second.followups == []


async def test_cancel_while_queued_refunds(world: World) -> None:
    await create_avatar(world, world.alice)
    world.bot.services.dispatcher.pause()  # the render stays in line
    result = await render(world, world.alice)
    assert result.response.content.startswith("Queued")
    [cancel_id] = button_ids(result.response)
    assert cancel_id.startswith("avatarbot:cancel:")

    # Only alice sees this (ephemeral) message, so only she can press its Cancel button.
    clicked = await world.alice.click(result.response, label="Cancel")
    assert clicked.acknowledged
    assert result.response.content == "Cancelled. Your render was refunded."
    job = int(cancel_id.rsplit(":", 1)[1])
    assert (await world.bot.services.jobs.view(job)).status == "cancelled"
    usage = await world.bot.services.quotas.usage(world.guild.id, world.alice.id)
    assert usage.used == 0


async def test_reroll_and_variations_render_again(world: World) -> None:
    await create_avatar(world, world.alice)
    first = await render(world, world.alice, seed=11)
    [posted] = first.followups
    old_job = job_id_of(posted)

    rerolled = await world.alice.click(posted, label="Reroll")
    assert rerolled.ephemeral and rerolled.response.content.startswith("Done")
    [again] = rerolled.followups
    new_job = job_id_of(again)
    assert new_job != old_job
    new_view = await world.bot.services.jobs.view(new_job)
    assert new_view.parent_job_id == old_job
    assert new_view.settings.seed != 11

    varied = await world.alice.click(posted, label="Variations")
    [more] = varied.followups
    view = await world.bot.services.jobs.view(job_id_of(more))
    assert view.parent_job_id == old_job
    assert len(more.attachments) == view.settings.count >= 1


async def test_only_the_owner_may_use_result_buttons(world: World) -> None:
    await create_avatar(world, world.alice)
    [posted] = (await render(world, world.alice)).followups
    job = job_id_of(posted)
    for label in ("Reroll", "Delete"):
        clicked = await world.bob.click(posted, label=label)
        [notice] = clicked.followups or [clicked.response]
        assert notice.ephemeral
        assert notice.content == "Only the member who asked for this render can do that."
    assert (await world.bot.services.jobs.view(job)).status == "done"
    assert world.channel.last_message.id == posted.id


async def test_owner_deletes_a_result(world: World) -> None:
    await create_avatar(world, world.alice)
    [posted] = (await render(world, world.alice)).followups
    job = job_id_of(posted)
    clicked = await world.alice.click(posted, label="Delete")
    assert clicked.followups[0].content.startswith("Deleted")
    assert all(m.id != posted.id for m in world.channel.history())
    with pytest.raises(NotFound):
        await world.bot.services.jobs.view(job)


async def test_buttons_work_after_a_restart(world: World, bots) -> None:
    await create_avatar(world, world.alice)
    [posted] = (await render(world, world.alice)).followups
    old_bot = world.bot
    await world.env.restart_bot(bots())
    await old_bot.close()
    assert world.bot is not old_bot

    rerolled = await world.alice.click(posted, label="Reroll")
    [again] = rerolled.followups
    assert job_id_of(again) != job_id_of(posted)
    assert len(again.attachments) == 1
