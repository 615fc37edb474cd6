"""`avatarbot run` when Discord cannot be reached at start, or refuses the token.

Unreachable (here a loopback port nobody listens on yet), the bot keeps trying with backoff, one
log line per try, and connects once Discord (tests/fixtures/fake_discord.py, started later on
that port) answers; no traceback. A rejected token is one line on stderr and exit 2.
The bot runs without an engine (``AVATARBOT_RUN_WORKER=false``) on SQLite: nothing here renders.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from tests.fixtures.cli_process import clean_env, start_cli
from tests.fixtures.fake_discord import serve_fake_discord

# Generous bounds on the waits (the subprocess imports discord.py and migrates a database
# first); a hang fails the test at the bound.
START_TIMEOUT = 120.0


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(tmp_path: Path, port: int, token: str) -> dict[str, str]:
    return clean_env(
        AVATARBOT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        AVATARBOT_DATA_DIR=str(tmp_path / "data"),
        AVATARBOT_RUN_WORKER="false",
        AVATARBOT_ENGINE__PROFILE="tiny",
        AVATARBOT_OPS__LISTEN="127.0.0.1:0",
        AVATARBOT_DISCORD_TOKEN=token,
        AVATARBOT_DISCORD_API_BASE=f"http://127.0.0.1:{port}/api/v10",
        AVATARBOT_DISCORD_GATEWAY_URL=f"ws://127.0.0.1:{port}/gateway",
    )


async def test_the_bot_waits_for_discord_and_connects_when_it_answers(tmp_path: Path) -> None:
    port = _free_port()
    tries: list[str] = []
    second_try = asyncio.Event()

    def on_line(line: str) -> None:
        if "Discord unreachable" in line:
            tries.append(line)
            if len(tries) == 2:
                second_try.set()

    bot = await start_cli(["run"], _env(tmp_path, port, "the.token"), on_line)
    try:
        await bot.until(second_try, "second try", START_TIMEOUT)
        assert "(try 1)" in tries[0] and "(try 2)" in tries[1]
        async with serve_fake_discord(port=port, token="the.token") as fake:
            await bot.until(fake.identified, "gateway connection", START_TIMEOUT)
            status = await bot.stop()
    finally:
        await bot.stop()
    assert status == 0, bot.stderr()
    assert "Traceback" not in bot.stderr()
    assert any("Discord reachable" in line for line in bot.lines), bot.stderr()
    # One line per try, nothing else about it.
    assert all(line in tries for line in bot.lines if "unreachable" in line.lower())


async def test_a_stop_while_waiting_for_discord_exits_0(tmp_path: Path) -> None:
    waiting = asyncio.Event()

    def on_line(line: str) -> None:
        if "Discord unreachable" in line:
            waiting.set()

    bot = await start_cli(["run"], _env(tmp_path, _free_port(), "the.token"), on_line)
    try:
        await bot.until(waiting, "first try", START_TIMEOUT)
    finally:
        status = await bot.stop()
    assert status == 0, bot.stderr()
    assert "SIGTERM received: stopping" in bot.stderr() and "Traceback" not in bot.stderr()


async def test_a_rejected_token_is_one_line_and_exit_2(tmp_path: Path) -> None:
    async with serve_fake_discord(token="the.token") as fake:
        bot = await start_cli(["run"], _env(tmp_path, fake.port, "another.token"))
        status = await bot.exit_status(START_TIMEOUT)
        assert fake.sessions == []  # never reached the gateway
    assert status == 2
    [line] = bot.lines
    assert line.startswith("avatarbot run: Discord rejected") and "AVATARBOT_DISCORD_TOKEN" in line
    assert not (tmp_path / "bot.db").exists()  # refused before anything else started
