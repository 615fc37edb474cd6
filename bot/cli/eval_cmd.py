"""`avatarbot eval`: compare personalizers and identity strengths on fixed seeds.

    avatarbot eval --photos refs/ --kind person --prompt "a portrait in a forest" \\
        --prompts prompts.txt --personalizer ip-adapter --strength 0.3 --strength 0.7 \\
        --strength 1.0 --seeds 4 --baseline --clip clip-vit-large-patch14/ --out eval/

Only the arguments live here; the command's body is research code
(avatarbot_research.cli.eval_cmd, installed with ``pip install . ./research``), see
docs/evaluation.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.cli.research import INSTALL, research_command


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "eval",
        help="compare personalizers and identity strengths on fixed seeds",
        description="Render every personalizer x strength x prompt x seed from a set of "
        "reference photos, score identity (and CLIP with --clip), and write results.json, "
        "results.md, contact_sheet.png and the renders to --out. Research code: needs the "
        f"avatarbot-research package ({INSTALL}).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--photos", type=Path, metavar="DIR", help="a folder of reference photos")
    source.add_argument("--avatar", metavar="NAME", help="a stored avatar (with --user)")
    parser.add_argument("--user", type=int, metavar="ID", help="the avatar's owner (Discord id)")
    parser.add_argument(
        "--kind",
        choices=["person", "pet", "object"],
        help="the subject (default: the avatar's; person for a folder)",
    )
    parser.add_argument("--prompt", action="append", default=[], help="repeatable")
    parser.add_argument("--prompts", type=Path, metavar="FILE", help="one prompt a line")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument(
        "--personalizer",
        action="append",
        default=[],
        help="repeatable (default: the profile's); `none` is the baseline",
    )
    parser.add_argument(
        "--strength", type=float, action="append", default=[], help="repeatable (default 0.7)"
    )
    parser.add_argument("--seeds", type=int, default=2, metavar="N", help="seeds 0..N-1 (2)")
    parser.add_argument(
        "--baseline", action="store_true", help="also render each prompt without personalization"
    )
    parser.add_argument("--size", metavar="WxH", help="e.g. 512 or 512x768 (the profile's)")
    parser.add_argument("--steps", type=int, help="default: the profile's")
    parser.add_argument("--guidance", type=float, help="default: the profile's")
    parser.add_argument(
        "--metric",
        choices=["face", "toy", "none"],
        help="identity metric (default: face for a person, none otherwise; toy: the toy "
        "world's, from avatarbot_research.toyworld)",
    )
    parser.add_argument("--clip", type=Path, metavar="DIR", help="a local CLIP model folder")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--profile", help="engine profile (default: from settings)")
    parser.add_argument("--device", help="cuda, mps, cpu (default: from settings)")
    parser.add_argument("--offline", action="store_true", help="never download weights")
    parser.set_defaults(handler=research_command("eval_cmd", "eval"))
