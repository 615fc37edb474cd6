"""The prompt policy through ``/avatar render`` on SimCord: a sexual prompt with a person
avatar is refused in every channel, blocked prompts never create a job, and admins edit the
blocklist (each change audited)."""

from __future__ import annotations

import pytest

from bot.errors import InvalidInput, PromptRefused
from tests.fixtures.discord import SIMCORD, World, age_restricted, create_avatar, expect_errors
from tests.fixtures.services import face_photo
from tests.services.test_pattern_stall import MAX_LAG_S, LagMeter, alarm, no_gc_pauses

pytestmark = SIMCORD


async def nothing_queued(world: World) -> None:
    assert await world.bot.services.jobs.active() == []
    usage = await world.bot.services.quotas.usage(world.guild.id, world.alice.id)
    assert usage.used == 0


async def test_sexual_prompt_with_a_person_is_refused_in_every_channel(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    after_dark = age_restricted(monkeypatch, world)
    await create_avatar(world, world.alice, "Me", kind="person", photos=[("me.jpg", face_photo())])
    for channel in (world.channel, after_dark):
        result = await world.alice.slash(
            channel, "avatar render", avatar="Me", prompt="naked on a beach"
        )
        expect_errors(world.env, PromptRefused)
        assert result.ephemeral
        assert "never rendered in sexual content" in result.response.content
        assert "naked" not in result.response.content
        assert result.followups == []
    await nothing_queued(world)


async def test_sexual_prompt_for_an_object_needs_an_age_restricted_channel(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    after_dark = age_restricted(monkeypatch, world)
    await create_avatar(world, world.alice)
    result = await world.alice.slash(
        world.channel, "avatar render", avatar="Mug", prompt="a nude mug"
    )
    expect_errors(world.env, PromptRefused)
    assert "age-restricted" in result.response.content
    for prompt in ("a mug with a loli sticker", "a sexy kid"):
        result = await world.alice.slash(after_dark, "avatar render", avatar="Mug", prompt=prompt)
        expect_errors(world.env, PromptRefused)
    await nothing_queued(world)


async def test_admin_blocklist_commands(world: World) -> None:
    await create_avatar(world, world.alice)
    added = await world.admin.slash(world.channel, "avatar-admin blocklist add", term="clown")
    assert added.ephemeral and "Blocked `clown`" in added.response.content
    result = await world.alice.slash(
        world.channel, "avatar render", avatar="Mug", prompt="a CL0WN mug"
    )
    expect_errors(world.env, PromptRefused)
    assert "does not allow" in result.response.content
    await nothing_queued(world)

    refused = await world.admin.slash(world.channel, "avatar-admin blocklist remove", term="child")
    assert "cannot be lifted" in refused.response.content
    expect_errors(world.env, InvalidInput)
    shown = await world.admin.slash(world.channel, "avatar-admin blocklist show")
    assert "`clown`" in shown.response.content
    removed = await world.admin.slash(world.channel, "avatar-admin blocklist remove", term="clown")
    assert "no longer" in removed.response.content
    entries = await world.bot.services.audit.recent(world.guild.id, actor_is_admin=True)
    assert [e.action for e in entries] == ["blocklist.remove", "blocklist.add"]


async def test_a_hostile_pattern_through_the_admin_command_cannot_stall_the_bot(
    world: World,
) -> None:
    """Issue 21, finding 1, on SimCord: the real ``/avatar-admin blocklist add`` and
    ``/avatar render``; a pattern RE2 refuses is refused with a clear message, a catastrophic
    one it accepts meets a 1,000-character prompt without the loop running 50 ms late."""
    await create_avatar(world, world.alice)
    with no_gc_pauses():
        meter = LagMeter()
        try:
            with alarm(20):
                added = await world.admin.slash(
                    world.channel, "avatar-admin blocklist add", term="/(a+)+$/"
                )
                assert "Blocked" in added.response.content
                result = await world.alice.slash(
                    world.channel, "avatar render", avatar="Mug", prompt="a" * 999 + "!"
                )
        finally:
            meter.stop()
    # Past the policy the prompt is refused for its length in tokens (the tiny model's 75).
    expect_errors(world.env, InvalidInput)
    assert result.ephemeral and "too long" in result.response.content
    assert meter.worst < MAX_LAG_S, f"the event loop was held {meter.worst * 1000:.0f} ms"
    refused = await world.admin.slash(
        world.channel, "avatar-admin blocklist add", term="/(a+)+(?=!)/"
    )
    expect_errors(world.env, InvalidInput)
    assert "RE2" in refused.response.content
