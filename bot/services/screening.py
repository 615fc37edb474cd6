"""Screening a batch of uploaded photos for an avatar: intake, then the engine's subject
checks, then near-duplicates. Every file ends kept (maybe with warnings) or refused with a
stable reason code and a user-safe message naming it; nothing raises for a bad file."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from bot.config import PhotoLimits
from bot.errors import InvalidPhoto
from bot.services import photo_intake
from bot.services.photo_intake import NormalizedPhoto, display_name
from bot.services.ports import EnginePort, SubjectKind
from bot.services.results import PhotoRefusal, PhotoWarning
from bot.services.similarity import near_duplicates
from bot.services.subject_messages import problem_message, warning_message


class NoUsablePhotos(InvalidPhoto):
    """Every photo was refused; ``refused`` says why, per file."""

    def __init__(self, refused: Sequence[PhotoRefusal]) -> None:
        reasons = "\n".join(f"- {r.message}" for r in refused[:10])
        super().__init__(
            "no_usable_photos", f"None of the photos can be used for this avatar:\n{reasons}"
        )
        self.refused = tuple(refused)


@dataclass(frozen=True)
class Screened:
    """``kept`` pairs the user's filename with its normalised photo, in upload order."""

    kept: list[tuple[str, NormalizedPhoto]]
    refused: list[PhotoRefusal]
    warnings: list[PhotoWarning]


async def screen_photos(
    engine: EnginePort,
    limits: PhotoLimits,
    files: Sequence[tuple[str, bytes]],
    kind: SubjectKind,
    existing: Sequence[str] = (),
) -> Screened:
    """Screen ``(filename, bytes)`` uploads; ``existing`` are the sha256 of stored photos
    (a repeat of one is refused as a duplicate). CPU work runs in threads."""
    results = await asyncio.to_thread(
        photo_intake.check_batch, list(files), limits, existing_sha256=existing
    )
    refused: list[PhotoRefusal] = []
    candidates: list[tuple[str, NormalizedPhoto]] = []
    for (filename, _), result in zip(files, results, strict=True):
        if isinstance(result, InvalidPhoto):
            refused.append(PhotoRefusal(display_name(filename), result.reason, result.message))
        else:
            candidates.append((filename, result))
    if not candidates:
        return Screened([], refused, [])
    reports = await engine.inspect(await decode_all([p.data for _, p in candidates]), kind)
    kept: list[tuple[str, NormalizedPhoto]] = []
    warnings: list[PhotoWarning] = []
    for (filename, photo), report in zip(candidates, reports, strict=True):
        shown = display_name(filename)
        if report.problems:
            code = report.problems[0]
            refused.append(PhotoRefusal(shown, code, problem_message(code, shown, kind)))
            continue
        kept.append((filename, photo))
        warnings.extend(
            PhotoWarning(shown, code, warning_message(code, shown)) for code in report.warnings
        )
    for i, j in await asyncio.to_thread(near_duplicates, [p.data for _, p in kept]):
        first, repeat = display_name(kept[i][0]), display_name(kept[j][0])
        warnings.append(
            PhotoWarning(
                repeat,
                "near_duplicate",
                f"`{repeat}` looks almost the same as `{first}`; varied photos give better "
                "results.",
            )
        )
    return Screened(kept, refused, warnings)


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


async def decode_all(blobs: Sequence[bytes]) -> list[Image.Image]:
    """Decode stored (normalised) photos for the engine, off the event loop."""
    return await asyncio.to_thread(lambda: [_decode(b) for b in blobs])
