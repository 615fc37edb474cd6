"""`avatarbot demo`: the bot on SimCord (an in-memory Discord) with a tiny engine, offline."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bot.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo", help="run the offline demo (no token, no GPU): images + an HTML transcript"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("demo-output"), help="output folder (./demo-output)"
    )
    parser.add_argument(
        "--interactive",
        action="store_true",
        help="then open SimCord's browser preview of the channel to click through by hand",
    )
    parser.add_argument(
        "--minutes", type=float, default=30.0, help="how long the preview stays open (30)"
    )
    parser.add_argument("--port", type=int, help="the preview's port on 127.0.0.1 (any free)")
    parser.add_argument(
        "--profile",
        choices=("tiny", "tiny-flux2"),  # bot.demo.DEMO_PROFILES (it imports discord)
        default="tiny",
        help="the engine profile (tiny; tiny-flux2 also renders two avatars in one picture)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from bot.demo import run_demo
    from engine.profiles import known_profiles

    def say(text: str) -> None:
        print(text, flush=True)

    if args.profile not in known_profiles():
        print(f"avatarbot demo: this installation has no {args.profile} engine profile")
        return 1
    try:
        report = asyncio.run(
            run_demo(
                settings,
                args.out.resolve(),
                interactive=args.interactive,
                minutes=args.minutes,
                port=args.port,
                say=say,
                profile=args.profile,
            )
        )
    except RuntimeError as exc:
        print(f"avatarbot demo: {exc}")
        return 1
    print(f"\nDemo output: {report.out_dir}")
    print(f"  transcript: {report.transcript}")
    print(f"  images:     {len(report.images)} in {report.out_dir / 'images'}")
    return 0
