"""The `avatarbot` command line.

Each feature adds its subcommands from its own module (``register(subparsers)``), so this file
stays a table of contents. Handlers take ``(args, settings)`` and return an exit status; heavy
imports (torch, discord) happen inside handlers so `avatarbot --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib import import_module, metadata
from typing import Any

from pydantic import ValidationError

from bot.config import Settings, unknown_env_vars
from bot.errors import AvatarbotError
from bot.services.crypto import KeyConfigError
from db.errors import DatabaseConfigError, DatabaseError
from engine.errors import EngineError, MissingWeights, UnknownProfile
from kinds import UnknownPersonalizer

Handler = Callable[[argparse.Namespace, Settings], int]

# Modules under bot.cli that contribute subcommands, in help order.
COMMAND_MODULES = (
    "config_cmd",
    "invite_cmd",
    "db_cmd",
    "photo_cmd",
    "train_cmd",
    "avatar_cmd",
    "eval_cmd",
    "safety_cmd",
    "job_cmd",
    "worker_cmd",
    "run_cmd",
    "demo_cmd",
    "weights_cmd",
    "doctor_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatarbot",
        description="Personalized image generation for Discord, without per-user fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"avatarbot {_version()}")
    parser.add_argument("--config", metavar="FILE", help="TOML settings file")
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override log level"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, including the libraries' (migrations, model loading)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text or one JSON object each (default: AVATARBOT_LOG_FORMAT, text)",
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
    """Run one command. Every operator mistake (settings, database URL, engine profile or
    weights) ends here as one line on stderr and a non-zero status, never a traceback."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # `avatarbot config | head`: the reader went away. Point stdout at /dev/null so the
        # interpreter's final flush does not complain, and exit like a command killed by
        # SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = unknown_env_vars()
    if unknown:
        for message in unknown:
            print(f"avatarbot: {message}", file=sys.stderr)
        return 2
    try:
        overrides: dict[str, Any] = {"log_level": args.log_level} if args.log_level else {}
        if args.verbose and not args.log_level:
            overrides["log_level"] = "DEBUG"
        if args.log_format:
            overrides["log_format"] = args.log_format
        settings = Settings.load(args.config, **overrides)
    except ValidationError as exc:
        print(f"avatarbot: invalid settings: {_describe_validation(exc)}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"avatarbot: invalid settings: {exc}", file=sys.stderr)
        return 2
    from bot.ops.logs import configure

    configure(settings.log_level, settings.log_format)
    _quiet_libraries(settings.log_level, verbose=args.verbose)
    if args.command not in PROFILE_UNCHECKED:
        status = _check_profile(settings)
        # ``run`` and ``avatar`` with separate workers (run_worker=false) load no engine, nor
        # does a job queued with ``--no-wait``.
        needs_engine = (
            getattr(args, "needs_engine", False)
            and not (args.command in ("run", "avatar") and not settings.run_worker)
            and not getattr(args, "no_wait", False)
        )
        if status is None and needs_engine:
            status = _check_weights_offline(settings)
        if status is not None:
            return status
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except AvatarbotError as exc:
        print(f"avatarbot: {exc.message}", file=sys.stderr)
        return 1
    except KeyConfigError as exc:  # an operator's mistake: one line, never a traceback
        print(f"avatarbot: invalid data key settings: {exc}", file=sys.stderr)
        return 2
    except DatabaseConfigError as exc:
        print(f"avatarbot: invalid database URL: {exc}", file=sys.stderr)
        return 2
    except DatabaseError as exc:
        print(f"avatarbot: {exc}", file=sys.stderr)
        return 1
    except MissingWeights as exc:
        from engine.weights import missing_line

        print(f"avatarbot: engine: {missing_line(exc, settings.engine.profile)}", file=sys.stderr)
        return 1
    except (EngineError, UnknownPersonalizer) as exc:  # a personalizer typo
        print(f"avatarbot: engine: {exc}", file=sys.stderr)
        return 1


# Commands that run without a valid engine profile (doctor reports it as one of its checks).
PROFILE_UNCHECKED = frozenset({"doctor"})

# Loggers whose INFO lines are chatter for an operator (Alembic's "Running upgrade ...",
# "setup plugin ..."; HTTP clients; model hubs). Shown with --verbose or a DEBUG log level.
CHATTY_LOGGERS = (
    "alembic",
    "httpx",
    "httpx2",
    "httpcore",
    "urllib3",
    "huggingface_hub",
    "filelock",
)


def _quiet_libraries(level: str, *, verbose: bool) -> None:
    if verbose or level == "DEBUG":
        return
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # The model stack's own loggers (configured by the libraries at import, from these) and
    # their deprecation notices.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for module in ("diffusers", "transformers", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)


def _check_profile(settings: Settings) -> int | None:
    """The engine profile is a validated choice: an unknown one is refused before anything
    loads, naming the known ones."""
    from engine.profiles import get_profile, known_profiles

    try:
        get_profile(settings.engine.profile)
    except UnknownProfile:
        print(
            f"avatarbot: unknown engine profile {settings.engine.profile!r}; set "
            f"AVATARBOT_ENGINE__PROFILE to one of: {', '.join(known_profiles())}",
            file=sys.stderr,
        )
        return 2
    return None


def _check_weights_offline(settings: Settings) -> int | None:
    """Offline, a real profile's missing weights are refused before anything loads (the
    engine would find out only after importing the model stack and migrating, seconds later).
    Online they may still be downloaded, so the engine's own error stands."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if not (settings.engine.offline or env in {"1", "true", "yes", "on"}):
        return None
    try:
        from bot.cli.doctor_cmd import check_weights
    except ImportError:  # pragma: no cover - the doctor ships with the CLI
        return None
    for check in check_weights(settings):
        if check.status == "fail":
            fix = f"; {check.fix}" if check.fix else ""
            print(f"avatarbot: engine: missing {check.detail}{fix}", file=sys.stderr)
            return 1
    return None


def _describe_validation(exc: ValidationError) -> str:
    """pydantic's multi-line report as one line: ``AVATARBOT_X__Y: message; ...``."""
    parts = []
    for error in exc.errors():
        loc = "__".join(str(part) for part in error["loc"]).upper()
        name = f"AVATARBOT_{loc}" if loc else "settings"
        parts.append(f"{name}: {error['msg']}")
    return "; ".join(parts)


def _version() -> str:
    try:
        return metadata.version("avatarbot")
    except metadata.PackageNotFoundError:  # a checkout that was never installed
        return "unknown (not installed)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
