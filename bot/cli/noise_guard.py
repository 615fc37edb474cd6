"""The one check `avatarbot run` and `avatarbot worker` make before they serve renders.

A random-weights profile (``tiny``, ``sd15-shaped``, ...) renders noise by construction: a
process that serves members refuses it unless the operator says ``--allow-noise``, so nobody
serves noise without a word. The demo, the tests and the benchmarks name such a profile
explicitly and pass the flag. A real profile without a data key is allowed, with a warning.
"""

from __future__ import annotations

import argparse
import logging
import sys

from bot.config import Settings

logger = logging.getLogger(__name__)

# What `doctor` and the refusals tell the operator to do about a random-weights profile.
REAL_PROFILE_FIX = (
    "set AVATARBOT_ENGINE__PROFILE to a real profile (e.g. sd15-ip-adapter-plus-face, the default)"
)


def add_allow_noise_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-noise",
        action="store_true",
        help="serve a random-weights profile (tiny, sd15-shaped, ...): every render is noise",
    )


def refuse_noise(settings: Settings, command: str, *, allow_noise: bool) -> int | None:
    """Exit status 2 with one line on stderr when ``settings`` name a random-weights profile
    and ``allow_noise`` is off; None to go on (warning when a real profile has no data key)."""
    from engine.profiles import resolve_profile

    profile = resolve_profile(settings.engine)
    if profile.is_noise and not allow_noise:
        print(
            f"avatarbot {command}: profile {profile.name} has random weights and renders "
            f"noise; {REAL_PROFILE_FIX}, or pass --allow-noise to serve it anyway",
            file=sys.stderr,
        )
        return 2
    if not profile.is_noise and settings.data_key is None:
        logger.warning(
            "AVATARBOT_DATA_KEY is not set: members' photos, features and renders are stored "
            "unencrypted in the database; set a key (see README) to encrypt them at rest"
        )
    return None
