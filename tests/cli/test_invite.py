"""`avatarbot invite`: the OAuth2 link with the bot's scopes and exactly the permissions it uses.

The link's id comes from ``--application-id`` or, with a token, from Discord (a fake Discord on
127.0.0.1 here); without either, or with Discord unreachable or the token rejected, one line on
stderr and exit 2. That the permissions are what the bot's channel messages need is checked on
SimCord in tests/bot/test_invite_permissions.py; here, that the link carries them and nothing
else, and that the bot needs no privileged intent.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import discord
import pytest

from bot.app import bot_intents
from bot.cli import main
from bot.ui.permissions import CHANNEL_PERMISSIONS, bot_permissions
from tests.fixtures.fake_discord import BOT_ID, serve_fake_discord

# What the bot does in a channel, from reading bot/cogs and bot/ui (see bot/ui/permissions.py):
# the late-result fallback posts text, an embed, images and buttons, in a channel or a thread.
USED = {"view_channel", "send_messages", "send_messages_in_threads", "embed_links", "attach_files"}


def _query(url: str) -> dict[str, list[str]]:
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "discord.com", "/oauth2/authorize")
    return parse_qs(parts.query)


def test_the_link_has_both_scopes_and_exactly_the_permissions_used(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["invite", "--application-id", "1"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    [url] = out.splitlines()
    query = _query(url)
    assert query["client_id"] == ["1"]
    assert query["scope"] == ["bot applications.commands"]
    granted = discord.Permissions(int(query["permissions"][0]))
    assert granted == discord.Permissions(**dict.fromkeys(USED, True)) == bot_permissions()
    assert set(CHANNEL_PERMISSIONS) == USED
    assert not granted.administrator and not granted.mention_everyone


def test_the_bot_needs_no_privileged_intent() -> None:
    intents = bot_intents()
    privileged = discord.Intents.none()
    privileged.members = privileged.presences = privileged.message_content = True
    assert intents.value & privileged.value == 0


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARBOT_")}
    env.update(AVATARBOT_DATA_DIR=str(tmp_path / "data"), AVATARBOT_ENGINE__PROFILE="tiny")
    env.update(extra)
    return env


async def _invite(env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "invite",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_id_is_the_tokens_application(tmp_path: Path) -> None:
    async with serve_fake_discord(token="good-token") as fake:
        env = _env(
            tmp_path,
            AVATARBOT_DISCORD_TOKEN="good-token",
            AVATARBOT_DISCORD_API_BASE=fake.api_base,
        )
        status, out, err = await _invite(env)
        assert status == 0, err
        assert _query(out.strip())["client_id"] == [str(BOT_ID)]
        assert ("GET", "/api/v10/oauth2/applications/@me") in fake.requests
        assert fake.sessions == []  # a lookup, not a gateway connection


async def test_a_rejected_token_is_one_line_and_exit_2(tmp_path: Path) -> None:
    async with serve_fake_discord(token="good-token") as fake:
        env = _env(
            tmp_path, AVATARBOT_DISCORD_TOKEN="bad-token", AVATARBOT_DISCORD_API_BASE=fake.api_base
        )
        status, out, err = await _invite(env)
    assert (status, out) == (2, "")
    [line] = err.splitlines()
    assert "rejected" in line and "--application-id" in line


def _refused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_offline_without_the_id_is_one_line_and_exit_2(tmp_path: Path) -> None:
    unreachable = f"http://127.0.0.1:{_refused_port()}/api/v10"
    env = _env(tmp_path, AVATARBOT_DISCORD_TOKEN="t", AVATARBOT_DISCORD_API_BASE=unreachable)
    status, out, err = await _invite(env)
    assert (status, out) == (2, "")
    [line] = err.splitlines()
    assert "unreachable" in line and "--application-id" in line

    status, out, err = await _invite(_env(tmp_path))  # no token at all
    assert (status, out) == (2, "")
    [line] = err.splitlines()
    assert "--application-id" in line and "AVATARBOT_DISCORD_TOKEN" in line
