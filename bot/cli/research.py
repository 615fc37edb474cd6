"""`avatarbot eval` and `avatarbot train` run code from the research distribution
(avatarbot-research, the ``research/`` folder of the checkout), which a member's server does
not install. Their arguments are registered here, in the runtime, so ``--help`` works
everywhere; their bodies are imported only when one runs, and without the research package the
command says how to install it (one line on stderr, exit status 2) instead of a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

from bot.config import Settings

PACKAGE = "avatarbot_research"
# Both from the checkout in one command: pip then takes `avatarbot` from here, never from an
# index (research/pyproject.toml depends on it by name).
INSTALL = "pip install . ./research (from the avatarbot checkout)"

Handler = Callable[[argparse.Namespace, Settings], int]


def research_command(module: str, command: str) -> Handler:
    """The handler of ``avatarbot COMMAND``: ``avatarbot_research.cli.MODULE.run``."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            body = import_module(f"{PACKAGE}.cli.{module}")
        except ModuleNotFoundError as exc:
            # Only the research package's own absence; a module missing inside it is a bug.
            if exc.name is None or exc.name.split(".")[0] != PACKAGE:
                raise
            print(
                f"avatarbot {command}: needs the research package, which is not installed: "
                f"{INSTALL}",
                file=sys.stderr,
            )
            return 2
        handler: Handler = body.run
        return handler(args, settings)

    return run
