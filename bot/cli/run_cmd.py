"""`avatarbot run`: the Discord bot (token from AVATARBOT_DISCORD_TOKEN).

SIGTERM (``docker stop``, ``systemctl stop``) and SIGINT stop it cleanly: the job loop stops
claiming and hands running jobs back to the queue without counting an attempt, the bot closes
its Discord connection and the database, and the process exits 0. (discord.py's
``Client.run`` only handles Ctrl-C, so the loop and the signals are ours.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from bot.config import Settings

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run the Discord bot (needs AVATARBOT_DISCORD_TOKEN)")
    parser.add_argument(
        "--allow-noise",
        action="store_true",
        help="serve a random-weights profile (tiny, sd15-shaped): every render is noise",
    )
    parser.set_defaults(handler=run, needs_engine=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from engine.profiles import resolve_profile

    if settings.discord_token is None:
        print(
            "avatarbot run: set AVATARBOT_DISCORD_TOKEN to the bot's token "
            "(Discord developer portal → your application → Bot → Reset Token)",
            file=sys.stderr,
        )
        return 2
    profile = resolve_profile(settings.engine)
    if settings.run_worker and profile.is_noise and not args.allow_noise:
        print(
            f"avatarbot run: profile {profile.name} has random weights and renders noise; set "
            "AVATARBOT_ENGINE__PROFILE to a real profile (e.g. sd15-ip-adapter-plus-face), "
            "or pass --allow-noise to serve it anyway",
            file=sys.stderr,
        )
        return 2
    if settings.run_worker and not profile.is_noise and settings.data_key is None:
        logger.warning(
            "AVATARBOT_DATA_KEY is not set: members' photos, features and renders are stored "
            "unencrypted in the database; set a key (see README) to encrypt them at rest"
        )
    return asyncio.run(_main(settings))


async def _main(settings: Settings) -> int:
    from bot.app import configure_discord_endpoints, create_bot

    assert settings.discord_token is not None
    configure_discord_endpoints(settings)
    bot = create_bot(settings, freeze_gc=True, serve_ops=True)
    loop = asyncio.get_running_loop()
    runner = loop.create_task(bot.start(settings.discord_token.get_secret_value()))

    closing: list[asyncio.Task[None]] = []

    def stop(signum: int) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        # ``close`` hands running jobs back, then closes Discord and the database; ``start``
        # returns once the connection is closed.
        if not closing:
            closing.append(loop.create_task(bot.close()))

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    try:
        await runner
    finally:
        if closing:
            await closing[0]
        elif not bot.is_closed():
            await bot.close()
    return 0
