"""`avatarbot photo check FILE... [--json]`: run photo intake on files, one verdict per file.

The files are checked as one avatar's photo set (`check_batch`), so a repeated photo is refused
as ``duplicate``, as the bot would. Exit status 0 when every file is accepted, 1 otherwise.
A file that cannot be read at all gets the CLI-only reason ``unreadable``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bot.config import PhotoLimits, Settings
from bot.errors import InvalidPhoto
from bot.services.photo_intake import NormalizedPhoto, check_batch, check_size, display_name

UNREADABLE = "unreadable"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    photo = sub.add_parser("photo", help="photo intake tools")
    photo_sub = photo.add_subparsers(dest="photo_command", metavar="SUBCOMMAND", required=True)
    check = photo_sub.add_parser(
        "check",
        help="check photos as the bot would and print one verdict per file",
        description=(
            "Run photo intake on each FILE (format sniffed from the bytes, size and pixel "
            "limits, animation, duplicates within the set) and print ok with the normalised "
            "size, format and sha256, or the reason code and message. Exit status 1 when any "
            "file is refused."
        ),
    )
    check.add_argument("files", nargs="+", metavar="FILE", type=Path)
    check.add_argument("--json", action="store_true", help="print a JSON list, one object a file")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    paths: list[Path] = args.files
    verdicts = check_paths(paths, settings.photos)
    if args.json:
        print(json.dumps(verdicts, indent=2))
    else:
        for verdict in verdicts:
            print(_text_line(verdict))
    return 0 if all(v["ok"] for v in verdicts) else 1


def check_paths(paths: list[Path], limits: PhotoLimits) -> list[dict[str, Any]]:
    """One JSON-ready verdict per path, in order."""
    unreadable: dict[int, InvalidPhoto] = {}

    def readable() -> Iterator[tuple[str, bytes]]:
        # A generator: check_batch holds one input file in memory at a time.
        for index, path in enumerate(paths):
            try:
                yield str(path), _read(path, limits)
            except InvalidPhoto as exc:
                unreadable[index] = exc
            except OSError as exc:
                message = f"`{display_name(str(path))}` could not be read: {exc.strerror or exc}."
                unreadable[index] = InvalidPhoto(UNREADABLE, message, filename=str(path))

    results = iter(check_batch(readable(), limits))
    verdicts = []
    for index, path in enumerate(paths):
        result = unreadable.get(index) or next(results)
        verdicts.append(_verdict(path, result))
    return verdicts


def _read(path: Path, limits: PhotoLimits) -> bytes:
    size = path.stat().st_size
    if size > limits.max_bytes:  # refused from its size, without reading it into memory
        check_size(size, str(path), limits)
    with path.open("rb") as handle:
        # Never more than one byte over the limit, even if the file grew since stat().
        return handle.read(limits.max_bytes + 1)


def _verdict(path: Path, result: NormalizedPhoto | InvalidPhoto) -> dict[str, Any]:
    # The path as given (JSON escapes whatever it contains); undecodable bytes as \udcXX.
    verdict: dict[str, Any] = {"file": os.fsdecode(path), "ok": isinstance(result, NormalizedPhoto)}
    if isinstance(result, InvalidPhoto):
        verdict |= {"reason": result.reason, "message": result.message}
    else:
        verdict |= {
            "reason": None,
            "message": None,
            "format": result.format,
            "source_format": result.source_format,
            "width": result.width,
            "height": result.height,
            "bytes": len(result.data),
            "sha256": result.sha256,
            "original_width": result.original_width,
            "original_height": result.original_height,
        }
    return verdict


def _text_line(verdict: dict[str, Any]) -> str:
    # Non-printable characters (controls, bidi overrides) become "?": a hostile filename
    # cannot drive the terminal. The intake's messages already quote a sanitised name.
    name = "".join(ch if ch.isprintable() else "?" for ch in verdict["file"])
    if verdict["ok"]:
        return (
            f"{name}: ok {verdict['width']}x{verdict['height']} {verdict['format']} "
            f"{verdict['bytes']} bytes sha256={verdict['sha256']}"
        )
    return f"{name}: {verdict['reason']}: {verdict['message']}"
