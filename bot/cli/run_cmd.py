"""`avatarbot run`: the Discord bot (token from AVATARBOT_DISCORD_TOKEN).

SIGTERM (``docker stop``, ``systemctl stop``) and SIGINT stop it cleanly: the job loop stops
claiming and hands running jobs back to the queue without counting an attempt, the bot closes
its Discord connection and the database, and the process exits 0. (discord.py's
``Client.run`` only handles Ctrl-C, so the loop and the signals are ours.)

Started while Discord cannot be reached (no network, an outage), it keeps trying with backoff,
one log line per try, before anything else starts (bot/app.py ``wait_for_discord``); a token
Discord rejects is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from bot.cli.noise_guard import add_allow_noise_flag, refuse_noise
from bot.config import Settings

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run the Discord bot (needs AVATARBOT_DISCORD_TOKEN)")
    add_allow_noise_flag(parser)
    parser.set_defaults(handler=run, needs_engine=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.discord_token is None:
        print(
            "avatarbot run: set AVATARBOT_DISCORD_TOKEN to the bot's token "
            "(Discord developer portal → your application → Bot → Reset Token)",
            file=sys.stderr,
        )
        return 2
    # Only a bot that renders (embedded mode) serves its profile's images.
    if settings.run_worker:
        refused = refuse_noise(settings, "run", allow_noise=args.allow_noise)
        if refused is not None:
            return refused
    return asyncio.run(_main(settings))


async def _main(settings: Settings) -> int:
    import discord

    from bot.app import configure_discord_endpoints, create_bot, wait_for_discord

    assert settings.discord_token is not None
    token = settings.discord_token.get_secret_value()
    configure_discord_endpoints(settings)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def stop(signum: int) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)

    # Discord first: while it is unreachable nothing else starts, and a signal ends the wait.
    waiting = loop.create_task(wait_for_discord(token))
    if not await _before_stop(waiting, stopping):
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        return 0
    try:
        waiting.result()
    except discord.LoginFailure:
        print(
            "avatarbot run: Discord rejected the token; set AVATARBOT_DISCORD_TOKEN to the "
            "bot's token (Discord developer portal → your application → Bot → Reset Token)",
            file=sys.stderr,
        )
        return 2

    bot = create_bot(settings, freeze_gc=True, serve_ops=True)
    runner = loop.create_task(bot.start(token))
    try:
        if not await _before_stop(runner, stopping):
            # ``close`` hands running jobs back, then closes Discord and the database;
            # ``start`` returns once the connection is closed.
            await bot.close()
        await runner
    finally:
        if not bot.is_closed():
            await bot.close()
    return 0


async def _before_stop(task: asyncio.Task[None], stopping: asyncio.Event) -> bool:
    """Wait until ``task`` ends or a stop is asked for; whether the task ended first."""
    stop_asked = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop_asked}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_asked.cancel()
    return task.done()
