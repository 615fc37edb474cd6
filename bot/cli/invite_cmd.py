"""`avatarbot invite`: the OAuth2 link that adds the bot to a server.

Scopes ``bot`` and ``applications.commands`` (its slash commands) and exactly the channel
permissions the bot uses (``bot/ui/permissions.py``). The link names the application: its id
comes from ``--application-id`` or, when a token is configured and Discord answers, from the
token's application. Offline without the id it says so in one line and exits 2.

``--user``: the link that installs the app to a member's own account instead (a user install:
scope ``applications.commands`` only, ``integration_type=1``), so ``/avatar`` follows them
into DMs and servers without the bot. The application must allow user installs (developer
portal → Installation → Installation Contexts → User Install).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bot.config import Settings
from engine.errors import first_line

SCOPES = ("bot", "applications.commands")
# A user install has commands only: no bot joins anything (Discord's integration type 1).
USER_INSTALL = "&integration_type=1"
WHERE_THE_ID_IS = "developer portal → your application → General Information → Application ID"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "invite", help="print the link that adds the bot to a server, with its permissions"
    )
    parser.add_argument(
        "--application-id",
        type=int,
        metavar="ID",
        help="the application's id (default: looked up with AVATARBOT_DISCORD_TOKEN)",
    )
    parser.add_argument(
        "--user",
        action="store_true",
        help="the link that installs the app to your own account (DMs, servers without it)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import discord

    from bot.app import DISCORD_UNREACHABLE
    from bot.ui.permissions import bot_permissions

    application_id: int | None = args.application_id
    if application_id is None:
        if settings.discord_token is None:
            print(
                "avatarbot invite: needs the application's id: pass --application-id ID "
                f"({WHERE_THE_ID_IS}), or set AVATARBOT_DISCORD_TOKEN to look it up",
                file=sys.stderr,
            )
            return 2
        try:
            application_id = asyncio.run(
                _application_id(settings, settings.discord_token.get_secret_value())
            )
        except discord.LoginFailure:
            print(
                "avatarbot invite: Discord rejected AVATARBOT_DISCORD_TOKEN; pass "
                f"--application-id ID ({WHERE_THE_ID_IS}) or fix the token",
                file=sys.stderr,
            )
            return 2
        except DISCORD_UNREACHABLE as exc:
            print(
                f"avatarbot invite: Discord unreachable ({first_line(exc)}); pass "
                f"--application-id ID ({WHERE_THE_ID_IS})",
                file=sys.stderr,
            )
            return 2
    if args.user:
        print(discord.utils.oauth_url(application_id, scopes=SCOPES[1:]) + USER_INSTALL)
    else:
        print(discord.utils.oauth_url(application_id, permissions=bot_permissions(), scopes=SCOPES))
    return 0


async def _application_id(settings: Settings, token: str) -> int:
    """The token's application id, asked of Discord (a login, no gateway connection)."""
    import discord

    from bot.app import configure_discord_endpoints

    configure_discord_endpoints(settings)
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        await http.static_login(token)
        application = await http.application_info()
    finally:
        await http.close()
    return int(application["id"])
