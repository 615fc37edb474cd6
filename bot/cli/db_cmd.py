"""`avatarbot db upgrade|current|downgrade`: schema migrations of the configured database."""

from __future__ import annotations

import argparse
import asyncio

from bot.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="database schema migrations")
    db_sub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    up = db_sub.add_parser("upgrade", help="upgrade the schema (default: to the newest)")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(handler=run_upgrade)

    cur = db_sub.add_parser("current", help="print the revision the database is at")
    cur.set_defaults(handler=run_current)

    down = db_sub.add_parser("downgrade", help="downgrade the schema ('base' drops every table)")
    down.add_argument("revision", help="target revision, e.g. -1, 0001 or base")
    down.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    down.set_defaults(handler=run_downgrade)


async def db_migrate(url: str, action: str, revision: str | None) -> str | None:
    """Run ``action`` (upgrade, downgrade or current) on the database; its revision after."""
    # db.migrate pulls in alembic: imported here so `avatarbot --help` stays instant.
    from db import migrate
    from db.session import Database

    database = Database.from_url(url)
    try:
        if action == "upgrade":
            await migrate.upgrade(database, revision or "head")
        elif action == "downgrade":
            assert revision is not None
            await migrate.downgrade(database, revision)
        return await migrate.current_revision(database)
    finally:
        await database.dispose()


def _describe(revision: str | None) -> str:
    from db.migrate import head_revision

    if revision is None:
        return "base (empty: run `avatarbot db upgrade`)"
    return f"{revision} (head)" if revision == head_revision() else revision


def run_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    revision = asyncio.run(db_migrate(settings.effective_database_url, "upgrade", args.revision))
    print(f"database at {_describe(revision)}")
    return 0


def run_current(args: argparse.Namespace, settings: Settings) -> int:
    print(_describe(asyncio.run(db_migrate(settings.effective_database_url, "current", None))))
    return 0


def run_downgrade(args: argparse.Namespace, settings: Settings) -> int:
    from bot.cli.avatar_cmd import confirm

    status = confirm(
        args,
        f"Downgrade the database to {args.revision}? Tables and columns past it are dropped, "
        "with their data.",
        command="db downgrade",
    )
    if status is not None:
        return status
    revision = asyncio.run(db_migrate(settings.effective_database_url, "downgrade", args.revision))
    print(f"database at {_describe(revision)}")
    return 0
