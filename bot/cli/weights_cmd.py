"""`avatarbot weights download [PROFILE]`: fetch exactly the files a profile loads.

    avatarbot weights download sd15-ip-adapter-plus-face     # into HF_HOME's cache
    avatarbot weights download flux2-klein-4b --local-dir /srv/models

The files come from the Hugging Face hub through huggingface_hub (a dropped connection resumes
from the bytes received, a rerun skips complete files, a progress bar on a terminal) into the
cache the engine reads (``HF_HOME``, or ``AVATARBOT_ENGINE__CACHE_DIR``), or with
``--local-dir`` into ``DIR/<owner>/<name>`` (then point the printed settings at them). Which files:
``engine.weights``. Random-weight profiles need nothing; offline mode is refused (exit 2). Run
it as the user, and with the ``HF_HOME``, that the bot's processes have (deploy/systemd:
``avatarbot``, ``/var/lib/avatarbot/hf``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bot.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("weights", help="download the model weights a profile loads")
    actions = parser.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    download = actions.add_parser(
        "download",
        help="fetch exactly the files a profile loads from the Hugging Face hub",
        description="Fetch exactly the files PROFILE loads (resumable) into the Hugging Face "
        "cache (HF_HOME) or --local-dir. Exit 2 when offline.",
    )
    download.add_argument(
        "profile", nargs="?", metavar="PROFILE", help="default: AVATARBOT_ENGINE__PROFILE"
    )
    download.add_argument(
        "--local-dir",
        metavar="DIR",
        type=Path,
        help="put each repository in DIR/<owner>/<name> instead of the cache",
    )
    download.set_defaults(handler=run_download)


def run_download(args: argparse.Namespace, settings: Settings) -> int:
    from engine.errors import UnknownProfile, first_line
    from engine.loading import is_offline
    from engine.profiles import known_profiles, resolve_profile
    from engine.weights import download, weights_plan

    name = args.profile or settings.engine.profile
    try:
        profile = resolve_profile(settings.engine.model_copy(update={"profile": name}))
    except UnknownProfile:
        print(
            f"avatarbot: unknown engine profile {name!r}; known profiles: "
            f"{', '.join(known_profiles())}",
            file=sys.stderr,
        )
        return 2
    plan = weights_plan(profile, preview_decoder=settings.engine.preview_decoder)
    for note in plan.notes:
        print(note)
    if not plan.sources:
        kind = "random weights" if profile.is_noise else "no hub weights"
        print(f"profile {name}: {kind}, nothing to download")
        return 0
    if is_offline(settings.engine.offline):
        print(
            "avatarbot: weights download needs the network and offline mode is on "
            "(AVATARBOT_ENGINE__OFFLINE or HF_HUB_OFFLINE): run it without them",
            file=sys.stderr,
        )
        return 2
    if os.name == "posix" and os.geteuid() == 0:
        print(
            "note: running as root: the services read their own HF_HOME as their own user "
            "(deploy/systemd: sudo -u avatarbot HF_HOME=/var/lib/avatarbot/hf avatarbot weights "
            f"download {name})"
        )
    cache_dir = str(settings.engine.cache_dir) if settings.engine.cache_dir else None
    settings_lines = []
    for source in plan.sources:
        local_dir = str(args.local_dir / source.repo) if args.local_dir else None
        started = time.monotonic()
        try:
            got = download(source, cache_dir=cache_dir, local_dir=local_dir)
        except Exception as exc:  # network, auth, a gated or missing repo: one line, no traceback
            print(
                f"avatarbot: downloading {source.what} {source.repo} failed: {first_line(exc)}",
                file=sys.stderr,
            )
            return 1
        seconds = time.monotonic() - started
        print(
            f"{source.what}: {source.repo}: {len(got.files)} files, {_size(got.bytes)} in "
            f"{seconds:.1f} s -> {got.folder}",
            flush=True,
        )
        if local_dir is not None:
            settings_lines.append(_point_at(source.setting, got.folder))
    for line in settings_lines:
        print(line)
    print(f"profile {name}: weights ready (`avatarbot doctor` checks them)")
    return 0


def _point_at(setting: str, folder: Path) -> str:
    if setting.startswith("engine."):
        env = "AVATARBOT_ENGINE__" + setting.removeprefix("engine.").upper()
        return f"set {env}={folder}"
    return f"point {setting} at {folder}"


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
