"""Issue 21, finding 8: uploaded file names (phones and cameras name files after people) are
never logged at INFO or above, over the real ``/avatar create`` on SimCord: a file too large
to download, a corrupt one and a good one, each named after a person."""

from __future__ import annotations

import logging

import pytest

from bot.config import PhotoLimits
from tests.fixtures.discord import SIMCORD, World, create_avatar, object_photo

pytestmark = [SIMCORD, pytest.mark.bot_settings(photos=PhotoLimits(max_bytes=1_000_000))]

PERSON = "Jane-Doe-Smithson"


async def test_no_file_name_is_logged_at_info(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    photos = [
        (f"{PERSON}-at-the-beach.png", object_photo(1)),
        (f"{PERSON}-passport.jpg", b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(4000)),
        (f"{PERSON}-wedding.png", b"\x89PNG\r\n\x1a\n" + bytes(1_200_000)),
    ]
    result = await create_avatar(world, world.alice, "Mug", photos=photos)
    # The member is told, by name, which files were not kept and why.
    content = result.response.content
    assert content.startswith("**Mug** is ready (object, 1 photo kept)"), content
    assert f"{PERSON}-passport.jpg" in content and f"{PERSON}-wedding.png" in content

    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert loud, "nothing was logged at INFO: the test would prove nothing"
    leaked = [r.getMessage() for r in loud if PERSON in r.getMessage()]
    assert leaked == []
    # The refusals were logged, and at DEBUG the names are there for troubleshooting: both
    # paths that used to log them were taken.
    messages = [r.getMessage() for r in caplog.records]
    assert any("refused as corrupt" in m for m in messages)
    assert any("not downloading" in m for m in messages)
    quiet = [r.getMessage() for r in caplog.records if r.levelno < logging.INFO]
    assert sum(PERSON in m for m in quiet) >= 2
