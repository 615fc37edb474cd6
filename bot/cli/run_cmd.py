"""`avatarbot run`: the Discord bot (token from AVATARBOT_DISCORD_TOKEN)."""

from __future__ import annotations

import argparse
import sys

from bot.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run the Discord bot (needs AVATARBOT_DISCORD_TOKEN)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.discord_token is None:
        print(
            "avatarbot run: set AVATARBOT_DISCORD_TOKEN to the bot's token "
            "(Discord developer portal → your application → Bot → Reset Token)",
            file=sys.stderr,
        )
        return 2
    from bot.app import configure_discord_endpoints, create_bot

    configure_discord_endpoints(settings)
    bot = create_bot(settings, freeze_gc=True)
    # discord.py runs the loop, closes the bot on Ctrl-C/SIGTERM (``close`` puts running jobs
    # back in the queue); logging is already configured by the CLI.
    bot.run(settings.discord_token.get_secret_value(), log_handler=None)
    return 0
