"""Old buttons never act on another member's job (audit finding 3), end to end on SimCord.

Job ids travel in the custom_ids of buttons on messages that stay posted after their jobs are
gone. If a deleted job's id were handed out again (SQLite's plain ``INTEGER PRIMARY KEY`` reuses
the largest deleted one), the new job's owner could press Delete under someone else's result.
"""

from __future__ import annotations

from tests.fixtures.discord import SIMCORD, World, button_ids, create_avatar

pytestmark = SIMCORD


def job_id_of(message) -> int:  # type: ignore[no-untyped-def]
    delete = next(i for i in button_ids(message) if i.startswith("avatarbot:delete:"))
    return int(delete.rsplit(":", 1)[1])


async def test_after_forget_me_old_buttons_never_reach_another_members_job(world: World) -> None:
    await create_avatar(world, world.alice, "Mug")
    await create_avatar(world, world.bob, "Dog")
    alices = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="a hat")
    [posted] = alices.followups
    alices_job = job_id_of(posted)

    asked = await world.alice.slash(world.channel, "avatar forget-me")
    await world.alice.click(asked.response, label="Erase everything")
    assert asked.response.content.startswith("Done. Erased 1 avatar(s)")

    bobs = await world.bob.slash(world.channel, "avatar render", avatar="Dog", prompt="a scarf")
    [bobs_posted] = bobs.followups

    # Alice's result is still in the channel; bob presses its Delete, then its Reroll.
    for label in ("Delete", "Reroll"):
        clicked = await world.bob.click(posted, label=label)
        [notice] = clicked.followups or [clicked.response]
        assert notice.ephemeral
        assert notice.content == "This render no longer exists."
    history = [m.id for m in world.channel.history()]
    assert posted.id in history and bobs_posted.id in history
    assert job_id_of(bobs_posted) > alices_job  # never alice's old id
    view = await world.bot.services.jobs.view(job_id_of(bobs_posted))
    assert view.user_id == world.bob.id and view.status == "done"
    assert len(await world.bot.services.jobs.undelivered()) == 0
