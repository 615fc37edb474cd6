"""Screening photos for an avatar, in two halves: intake on the bot (``screen_uploads``:
format, size, duplicates; Pillow only), then on the worker that claims the avatar's encode job
the engine's subject checks and near-duplicates (``inspect_photos``). Every file ends kept
(maybe with warnings) or refused with a stable reason code and a user-safe message naming it;
nothing raises for a bad file."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from bot.config import PhotoLimits
from bot.errors import InvalidPhoto
from bot.services import photo_intake
from bot.services.identity import (
    DIFFERENT_PERSON,
    different_person_message,
    no_majority_message,
    odd_ones_out,
)
from bot.services.photo_intake import NormalizedPhoto, display_name
from bot.services.ports import EnginePort, SubjectReport
from bot.services.results import PhotoRefusal, PhotoWarning
from bot.services.similarity import near_duplicates
from bot.services.subject_messages import problem_message, warning_message
from kinds import SubjectKind


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
    """Intake's verdict on uploads: ``kept`` pairs the user's filename with its normalised
    photo, in upload order."""

    kept: list[tuple[str, NormalizedPhoto]]
    refused: list[PhotoRefusal]


async def screen_uploads(
    limits: PhotoLimits,
    files: Sequence[tuple[str, bytes]],
    existing: Sequence[str] = (),
) -> Screened:
    """Intake on ``(filename, bytes)`` uploads (format, size, duplicates; no engine): what the
    bot checks before storing photos. ``existing`` are the sha256 of stored photos."""
    results = await asyncio.to_thread(
        photo_intake.check_batch, list(files), limits, existing_sha256=existing
    )
    refused: list[PhotoRefusal] = []
    kept: list[tuple[str, NormalizedPhoto]] = []
    for (filename, _), result in zip(files, results, strict=True):
        if isinstance(result, InvalidPhoto):
            refused.append(PhotoRefusal(display_name(filename), result.reason, result.message))
        else:
            kept.append((filename, result))
    return Screened(kept, refused)


@dataclass(frozen=True)
class Inspected:
    """The engine's verdict on stored photos: indices kept, refusals by index, remarks."""

    kept: list[int]
    refused: list[tuple[int, PhotoRefusal]]
    warnings: list[PhotoWarning]
    # The face embeddings of the kept photos that have one (a person's): the avatar's
    # enrolled faces, which its renders' likeness is measured against.
    face_embeddings: tuple[tuple[float, ...], ...] = ()


class Inspector(Protocol):
    """The part of ``EnginePort`` screening needs (``avatarbot photo check`` runs the engine's
    subject checks without loading a diffusion model)."""

    async def inspect(
        self, images: Sequence[Image.Image], kind: SubjectKind
    ) -> list[SubjectReport]: ...


async def inspect_photos(
    engine: Inspector | EnginePort, photos: Sequence[tuple[str, bytes]], kind: SubjectKind
) -> Inspected:
    """The subject checks (a face for a person, sharpness, exposure), one person across a
    person's photos, and near-duplicates, on ``(filename, normalised bytes)``: the worker's
    half of screening."""
    if not photos:
        return Inspected([], [], [])
    reports = await engine.inspect(await decode_all([d for _, d in photos]), kind)
    kept: list[int] = []
    refused: list[tuple[int, PhotoRefusal]] = []
    warnings: list[PhotoWarning] = []
    for index, ((filename, _), report) in enumerate(zip(photos, reports, strict=True)):
        shown = display_name(filename)
        if report.problems:
            code = report.problems[0]
            refused.append((index, PhotoRefusal(shown, code, problem_message(code, shown, kind))))
            continue
        kept.append(index)
        warnings.extend(
            PhotoWarning(shown, code, warning_message(code, shown)) for code in report.warnings
        )
    if kind == SubjectKind.PERSON:
        kept, strangers = _one_person(
            kept, [(display_name(n), r) for (n, _), r in zip(photos, reports, strict=True)]
        )
        refused = sorted([*refused, *strangers], key=lambda item: item[0])
    duplicates = await asyncio.to_thread(near_duplicates, [photos[i][1] for i in kept])
    for i, j in duplicates:
        first, repeat = display_name(photos[kept[i]][0]), display_name(photos[kept[j]][0])
        warnings.append(
            PhotoWarning(
                repeat,
                "near_duplicate",
                f"`{repeat}` looks almost the same as `{first}`; varied photos give better "
                "results.",
            )
        )
    faces = tuple(e for e in (reports[i].embedding for i in kept) if e is not None)
    return Inspected(kept, refused, warnings, faces)


def _one_person(
    kept: list[int], named: Sequence[tuple[str, SubjectReport]]
) -> tuple[list[int], list[tuple[int, PhotoRefusal]]]:
    """Of the kept person photos, refuse those showing someone else than the majority (all of
    them when there is no majority); see bot/services/identity.py. Photos without an
    embedding (no face model on the worker) are not compared."""
    compared = [i for i in kept if named[i][1].embedding is not None]
    outliers, majority = odd_ones_out([named[i][1].embedding or () for i in compared])
    message = different_person_message if majority else no_majority_message
    dropped = {compared[k] for k in outliers}
    refusals = [
        (i, PhotoRefusal(named[i][0], DIFFERENT_PERSON, message(named[i][0])))
        for i in sorted(dropped)
    ]
    return [i for i in kept if i not in dropped], refusals


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


async def decode_all(blobs: Sequence[bytes]) -> list[Image.Image]:
    """Decode stored (normalised) photos for the engine, off the event loop."""
    return await asyncio.to_thread(lambda: [_decode(b) for b in blobs])
