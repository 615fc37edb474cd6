"""Live previews on SimCord (issue 25): while a render denoises, its private progress message
gets the preview as an attachment; the final "Done" edit leaves none; a guild that turned
previews off (``/avatar-admin safety previews``) gets progress text only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.discord import SIMCORD, World, create_avatar
from tests.fixtures.previews import previewing_engine
from tests.fixtures.services import TINY

# Enough denoising steps (the default of the guild's renders) that the tiny render previews
# several of them (every step but the last).
STEPS = 8
pytestmark = [
    SIMCORD,
    pytest.mark.bot_settings(engine=TINY.model_copy(update={"default_steps": STEPS})),
]


# The bots' engine, previewing every step (the bot still shows at most one per
# ``progress_seconds`` per job).
tiny_engine_port = pytest.fixture(scope="module", name="tiny_engine_port")(previewing_engine)


def preview_edits(world: World, message_id: int) -> list[list[Any] | None]:
    """The attachments of each webhook edit of the message, in order (None: left as they were)."""
    out = []
    for entry in world.env.http_requests:
        webhook_edit = entry.method == "PATCH" and entry.path.startswith("/webhooks/")
        if webhook_edit and entry.path.endswith(f"/messages/{message_id}"):
            out.append((entry.json or {}).get("attachments"))
    return out


async def render(world: World) -> Any:
    return await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="a cat")


async def test_previews_show_while_rendering_and_go_at_the_result(world: World) -> None:
    await create_avatar(world, world.alice)
    result = await render(world)

    assert result.response.content == "Done — your images are posted below."
    [posted] = result.followups
    assert posted.attachments  # the images themselves, public
    edits = preview_edits(world, result.response.id)
    with_preview = [a for a in edits if a]
    assert with_preview, "no progress edit carried a preview"
    assert all(len(a) == 1 and a[0]["filename"].startswith("preview-") for a in with_preview)
    assert edits[-1] == []  # the final edit removes it
    assert result.response.attachments == []


async def test_a_guild_can_turn_previews_off(world: World) -> None:
    shown = await world.admin.slash(world.channel, "avatar-admin safety show")
    assert "Live previews while rendering: **on**" in str(shown.response.content)
    chosen = await world.admin.slash(world.channel, "avatar-admin safety previews", on=False)
    assert chosen.ephemeral and "off" in chosen.response.content
    shown = await world.admin.slash(world.channel, "avatar-admin safety show")
    assert "Live previews while rendering: **off**" in str(shown.response.content)
    await create_avatar(world, world.alice)
    result = await render(world)

    assert result.response.content == "Done — your images are posted below."
    assert not any(preview_edits(world, result.response.id))
    assert result.response.attachments == []
