"""`avatarbot config`: print the effective settings with secrets masked."""

from __future__ import annotations

import argparse
import json

from bot.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="print the effective settings (secrets masked)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    data = settings.masked_dump()
    data["engine"].update(_profile_defaults(settings))
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0


def _profile_defaults(settings: Settings) -> dict[str, float | int]:
    """Guidance and steps as renders use them: the setting when it is set, else the profile's
    (issue 24: ``default_guidance`` showed the setting's 6.0 where tiny-flux2 renders at 1.0)."""
    from engine.profiles import default_guidance, get_profile

    # The settings accept known profiles only.
    profile = get_profile(settings.engine.profile)
    return {
        "default_guidance": default_guidance(settings.engine, profile),
        "default_steps": settings.engine.default_steps or profile.default_steps,
    }
