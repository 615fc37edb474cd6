"""`avatarbot config`: print the effective settings with secrets masked."""

from __future__ import annotations

import argparse
import json

from bot.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="print the effective settings (secrets masked)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.masked_dump(), indent=2, sort_keys=True))
    return 0
