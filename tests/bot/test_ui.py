"""The bot's shared helpers, without Discord: images, progress bars, transient errors, error
messages."""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime

import discord
import pytest
from discord import app_commands
from PIL import Image

from bot.cogs.render.delivery import only_member
from bot.cogs.render.progress import progress_bar
from bot.errors import InternalError, QuotaExceeded
from bot.ui.errors import user_message
from bot.ui.images import contact_sheet, fit_all, fit_to_filesize
from bot.ui.jobs import PollBackoff
from bot.ui.sync import tree_hash
from bot.ui.webhooks import is_transient
from tests.fixtures.discord import object_photo


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def test_contact_sheet_lays_photos_out_in_a_grid() -> None:
    photos = [object_photo(i, size=300) for i in range(7)]
    sheet = contact_sheet(photos, [f"photo-{i}.png" for i in range(7)])
    width, height = size_of(sheet)
    assert width > height  # 5 columns, 2 rows
    assert size_of(contact_sheet(photos[:1]))[0] < width


def test_contact_sheet_draws_an_undecodable_photo_as_an_empty_cell() -> None:
    sheet = contact_sheet([object_photo(1), b"garbage"], ["ok", "broken"])
    assert size_of(sheet)[0] > 0
    with pytest.raises(ValueError):
        contact_sheet([object_photo(1)], ["a", "b"])
    with pytest.raises(ValueError):
        contact_sheet([])


def test_fit_to_filesize_keeps_small_files_and_shrinks_big_ones() -> None:
    photo = object_photo(3, size=512)
    kept = fit_to_filesize(photo, len(photo))
    assert kept.original and kept.data == photo and kept.extension == "png"

    small = fit_to_filesize(photo, 20_000)
    assert not small.original and len(small.data) <= 20_000
    assert small.extension == "webp"
    assert size_of(small.data) == (small.width, small.height)

    tiny = fit_to_filesize(photo, 600)
    assert len(tiny.data) <= 600 or max(tiny.width, tiny.height) <= 16


def test_fit_all_shares_the_limit_between_files() -> None:
    photos = [object_photo(i, size=512) for i in range(4)]
    fitted = fit_all(photos, 80_000)
    assert sum(len(f.data) for f in fitted) <= 80_000
    assert fit_all([], 10) == []


def test_progress_bar() -> None:
    assert progress_bar(0.5, width=4) == "▰▰▱▱ 50%"
    assert progress_bar(1.7, width=4) == "▰▰▰▰ 100%"


def test_poll_backoff_doubles_while_idle_and_resets_on_activity() -> None:
    poll = PollBackoff(5.0, cap=60.0)
    assert [poll.next() for _ in range(6)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    poll.reset()
    assert poll.next() == 5.0


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "test"
        self.headers: dict[str, str] = {}


def http_error(status: int) -> discord.HTTPException:
    return discord.HTTPException(_Response(status), {"code": 0, "message": "x"})  # type: ignore[arg-type]


def test_transient_errors_are_rate_limits_and_server_errors() -> None:
    assert is_transient(http_error(502)) and is_transient(http_error(429))
    assert not is_transient(http_error(404)) and not is_transient(http_error(403))


def test_results_may_ping_only_their_member() -> None:
    mentions = only_member(42).to_dict()
    assert mentions["users"] == ["42"] or mentions["users"] == [42]
    assert "everyone" not in mentions.get("parse", []) and "roles" not in mentions.get("parse", [])
    assert not mentions.get("roles")


def test_user_messages(caplog: pytest.LogCaptureFixture) -> None:
    resets = datetime(2026, 1, 2, tzinfo=UTC)
    quota = user_message(QuotaExceeded("No renders left today.", resets_at=resets))
    assert quota == f"No renders left today. It resets <t:{int(resets.timestamp())}:R>."
    assert "server" in user_message(app_commands.NoPrivateMessage())
    assert "Manage Guild" in user_message(app_commands.MissingPermissions(["manage_guild"]))

    with caplog.at_level(logging.ERROR, logger="bot.ui.errors"):
        text = user_message(RuntimeError("boom"), context="user=1")
    reference = text.split("`")[1]
    assert len(reference) == 8 and "boom" not in text
    assert reference in caplog.text and "user=1" in caplog.text
    assert user_message(InternalError("abcd1234")).count("abcd1234") == 1


def test_tree_hash_follows_the_commands() -> None:
    client = discord.Client(intents=discord.Intents.none())
    tree = app_commands.CommandTree(client)

    @tree.command(name="ping", description="Ping")
    async def ping(interaction: discord.Interaction) -> None: ...

    first = tree_hash(tree)
    assert tree_hash(tree) == first

    @tree.command(name="pong", description="Pong")
    async def pong(interaction: discord.Interaction) -> None: ...

    assert tree_hash(tree) != first
