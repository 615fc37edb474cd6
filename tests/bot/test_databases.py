"""The bot end to end on each database: SQLite (embedded) and PostgreSQL (scale-out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import Settings
from tests.fixtures.discord import SIMCORD, World, bot_test_settings, button_ids, create_avatar

pytestmark = SIMCORD


@pytest.fixture
def bot_settings(tmp_path: Path, db_url: str) -> Settings:
    """This module's bots run on ``db_url``: a fresh SQLite file or PostgreSQL database."""
    return bot_test_settings(tmp_path, database_url=db_url)


async def test_render_reroll_and_forget_me(world: World, bots) -> None:
    await create_avatar(world, world.alice)
    first = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="hat")
    [posted] = first.followups
    assert len(posted.attachments) == 1

    rerolled = await world.alice.click(posted, label="Reroll")
    assert len(rerolled.followups) == 1

    # A restart on the same database: no second command sync, buttons still work.
    old = world.bot
    await world.env.restart_bot(bots())
    await old.close()
    syncs = [e for e in world.env.http_requests if e.method == "PUT"]
    assert len(syncs) == 1
    again = await world.alice.click(posted, label="Variations")
    assert again.followups and any(
        i.startswith("avatarbot:reroll:") for i in button_ids(again.followups[0])
    )

    asked = await world.alice.slash(world.channel, "avatar forget-me")
    await world.alice.click(asked.response, label="Erase everything")
    assert asked.response.content.startswith("Done. Erased 1 avatar(s)")
    assert await world.bot.services.avatars.list(world.alice.id) == []
