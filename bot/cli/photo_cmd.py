"""`avatarbot photo check FILE... [--kind person|pet|object] [--json]`: check photos as avatar
creation would, one verdict per file.

The files are checked as one avatar's photo set (`check_batch`), so a repeated photo is refused
as ``duplicate``, as the bot would. With ``--kind``, the photos intake keeps then go through the
same subject checks as creation on a worker (bot/services/screening.py ``inspect_photos``:
faces, sharpness, exposure, and for a person one person across the files); the face models are
loaded only then, and no diffusion model is. Without ``--kind`` only intake runs, and a person's
photo that passes it can still be refused at creation. Exit status 0 when every file is
accepted, 1 otherwise. A file that cannot be read at all gets the CLI-only reason
``unreadable``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL.Image import Image

from bot.config import PhotoLimits, Settings
from bot.errors import InvalidPhoto
from bot.services.photo_intake import NormalizedPhoto, check_batch, check_size, display_name
from bot.services.ports import SubjectReport
from kinds import SUBJECT_KINDS, SubjectKind

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
    check.add_argument(
        "--kind",
        choices=[k.value for k in SUBJECT_KINDS],
        help="also run avatar creation's subject checks for this kind of avatar (faces and one "
        "person across the files for a person)",
    )
    check.add_argument("--json", action="store_true", help="print a JSON list, one object a file")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    paths: list[Path] = args.files
    kind = SubjectKind(args.kind) if args.kind else None
    verdicts = check_paths(paths, settings.photos, kind)
    if kind is None and not args.json:
        print(
            "note: intake only; pass --kind person|pet|object for creation's subject checks",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(verdicts, indent=2))
    else:
        for verdict in verdicts:
            print(_text_line(verdict))
    return 0 if all(v["ok"] for v in verdicts) else 1


def check_paths(
    paths: list[Path], limits: PhotoLimits, kind: SubjectKind | None = None
) -> list[dict[str, Any]]:
    """One JSON-ready verdict per path, in order; with a ``kind``, after the subject checks."""
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
    outcomes = [unreadable.get(index) or next(results) for index in range(len(paths))]
    verdicts = [_verdict(path, result) for path, result in zip(paths, outcomes, strict=True)]
    if kind is not None:
        _subject_checks(paths, outcomes, verdicts, kind)
    return verdicts


class _SubjectChecks:
    """The engine's subject checks (``DiffusionEngine.inspect``: the same detector, embedder
    and thresholds) without loading a diffusion model."""

    def __init__(self) -> None:
        from engine.subject_checks import FaceDetector, FaceEmbedder

        self._detector = FaceDetector.load()
        self._embedder = FaceEmbedder.load() if self._detector is not None else None

    async def inspect(self, images: Sequence[Image], kind: SubjectKind) -> list[SubjectReport]:
        from bot.engine_adapter import subject_report
        from engine.subject_checks import inspect_photos

        embedder = self._embedder if kind == SubjectKind.PERSON else None
        reports = await asyncio.to_thread(
            inspect_photos, list(images), kind.value, detector=self._detector, embedder=embedder
        )
        return [subject_report(r) for r in reports]


def _subject_checks(
    paths: list[Path],
    outcomes: list[NormalizedPhoto | InvalidPhoto],
    verdicts: list[dict[str, Any]],
    kind: SubjectKind,
) -> None:
    """Run creation's worker-side checks on the photos intake kept; update their verdicts."""
    from bot.services.screening import inspect_photos

    kept = [i for i, o in enumerate(outcomes) if isinstance(o, NormalizedPhoto)]
    photos = []
    for i in kept:
        outcome = outcomes[i]
        assert isinstance(outcome, NormalizedPhoto)
        photos.append((str(paths[i]), outcome.data))
    for verdict in verdicts:
        verdict["kind"] = kind.value
        verdict["warnings"] = []
    if not photos:
        return
    checked = asyncio.run(inspect_photos(_SubjectChecks(), photos, kind))
    for position, refusal in checked.refused:
        verdict = verdicts[kept[position]]
        verdict |= {"ok": False, "reason": refusal.reason, "message": refusal.message}
    by_name: dict[str, list[dict[str, str]]] = {}
    for warning in checked.warnings:
        by_name.setdefault(warning.filename, []).append(
            {"code": warning.code, "message": warning.message}
        )
    for i in kept:
        verdicts[i]["warnings"] = by_name.get(display_name(str(paths[i])), [])


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
        line = (
            f"{name}: ok {verdict['width']}x{verdict['height']} {verdict['format']} "
            f"{verdict['bytes']} bytes sha256={verdict['sha256']}"
        )
        if verdict.get("kind"):
            line += f" ({verdict['kind']})"
        warnings = verdict.get("warnings") or []
        if warnings:
            line += "; warnings: " + ", ".join(w["code"] for w in warnings)
        return line
    return f"{name}: {verdict['reason']}: {verdict['message']}"
