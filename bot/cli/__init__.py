"""The `avatarbot` command line.

Each feature adds its subcommands from its own module (``register(subparsers)``), so this file
stays a table of contents. Handlers take ``(args, settings)`` and return an exit status; heavy
imports (torch, discord) happen inside handlers so `avatarbot --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from bot.config import Settings
from bot.errors import AvatarbotError
from bot.services.crypto import KeyConfigError

Handler = Callable[[argparse.Namespace, Settings], int]

# Modules under bot.cli that contribute subcommands, in help order.
COMMAND_MODULES = (
    "config_cmd",
    "db_cmd",
    "photo_cmd",
    "train_cmd",
    "engine_cmd",
    "avatar_cmd",
    "job_cmd",
    "worker_cmd",
    "run_cmd",
    "demo_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatarbot",
        description="Personalized image generation for Discord, without per-user fine-tuning.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings file")
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override log level"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = import_module(f"bot.cli.{name}")
        except ModuleNotFoundError as exc:  # a feature whose module is absent in this build
            if exc.name != f"bot.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        overrides = {"log_level": args.log_level} if args.log_level else {}
        settings = Settings.load(args.config, **overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"avatarbot: invalid settings: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except AvatarbotError as exc:
        print(f"avatarbot: {exc.message}", file=sys.stderr)
        return 1
    except KeyConfigError as exc:  # an operator's mistake: one line, never a traceback
        print(f"avatarbot: invalid data key settings: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
