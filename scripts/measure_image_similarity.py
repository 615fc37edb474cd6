#!/usr/bin/env python3
"""Calibrate pets' and objects' likeness (engine/image_similarity.py) on a profile's own image
encoder: how alike its embeddings find photos of one subject, and photos of different ones.

Photos: ``--photos DIR``, one folder per subject (a pet, an object) with two photos or more,
as members upload them. Without it, a smoke set made from scikit-image's pictures (Chelsea the
cat, coffee, a rocket, the astronaut, ...), each subject's "photos" being edits of one picture
(mirrored, cropped, re-lit, rotated): far easier than real second photos, so its numbers say
that the tool runs, not where the constant belongs.

For every photo: *same* is its cosine to the reference of its subject's other photos (leave
one out: the scorer's own computation, ``image_cosines``); *different* is its cosine to each
other subject's whole reference. Prints both distributions, the ``IMAGE_ZERO`` they imply (the
median *different* cosine: a photo of another subject reads 0 %) and the figures the
*same* photos then read, next to those under the shipped constant.

Run: ``python scripts/measure_image_similarity.py [--profile P] [--photos DIR]``; the engine
settings are the bot's (``AVATARBOT_ENGINE__...``), so real weights load as a worker loads them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.config import Settings  # noqa: E402
from engine import DiffusionEngine, create_engine  # noqa: E402
from engine.image_similarity import (  # noqa: E402
    IMAGE_ZERO,
    image_cosines,
    image_method,
    image_reference,
)

SMOKE_PICTURES = ("chelsea", "coffee", "rocket", "astronaut", "camera", "clock", "coins", "horse")
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def smoke_subjects() -> dict[str, list[Image.Image]]:
    from skimage import data

    subjects = {}
    for name in SMOKE_PICTURES:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        w, h = image.size
        subjects[name] = [
            image,
            ImageOps.mirror(image),
            image.crop((w // 8, h // 8, w - w // 8, h - h // 8)),
            ImageEnhance.Brightness(image).enhance(1.3),
            image.rotate(6, resample=Image.Resampling.BICUBIC),
        ]
    return subjects


def folder_subjects(root: Path) -> dict[str, list[Image.Image]]:
    subjects = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        if len(files) >= 2:
            subjects[folder.name] = [Image.open(p).convert("RGB") for p in files]
    if len(subjects) < 2:
        raise SystemExit(f"{root}: needs two subject folders or more, with two photos each")
    return subjects


async def measure(
    engine: DiffusionEngine, subjects: dict[str, list[Image.Image]]
) -> tuple[list[float], list[float]]:
    model = engine.model

    def run() -> tuple[list[float], list[float]]:
        whole = {name: image_reference(model, photos) for name, photos in subjects.items()}
        same: list[float] = []
        different: list[float] = []
        for name, photos in subjects.items():
            for i, photo in enumerate(photos):
                others = image_reference(model, photos[:i] + photos[i + 1 :])
                assert others is not None  # an encoder (main checked) and one photo or more
                same += image_cosines(model, [photo], others)
            for other, reference in whole.items():
                if other != name and reference is not None:
                    different += image_cosines(model, photos, reference)
        return same, different

    result: tuple[list[float], list[float]] = await engine.call(run)
    return result


def summary(name: str, values: Sequence[float]) -> str:
    v = np.asarray(values)
    q = np.percentile(v, [0, 10, 50, 90, 100])
    return f"{name}: n={len(v)} min={q[0]:.3f} p10={q[1]:.3f} median={q[2]:.3f} " + (
        f"p90={q[3]:.3f} max={q[4]:.3f}"
    )


def figures(values: Sequence[float], zero: float) -> str:
    read = np.clip((np.asarray(values) - zero) / (1.0 - zero), 0.0, 1.0)
    return f"median {np.median(read):.0%}, above 50 %: {np.mean(read > 0.5):.0%}"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", help="the engine profile (default: the bot's settings')")
    parser.add_argument("--photos", type=Path, help="one folder per subject (default: smoke set)")
    args = parser.parse_args()
    settings = Settings().engine
    if args.profile:
        settings = settings.model_copy(update={"profile": args.profile})
    subjects = folder_subjects(args.photos) if args.photos else smoke_subjects()
    engine = await create_engine(settings)
    try:
        model = engine.model
        if await engine.call(lambda: image_method(model)) is None:
            print(f"profile {settings.profile} has no image encoder: nothing to calibrate")
            return 1
        same, different = await measure(engine, subjects)
    finally:
        await engine.aclose()
    implied = float(np.median(different))
    print(f"profile {settings.profile}, {len(subjects)} subjects")
    print(summary("same subject (leave one out)", same))
    print(summary("different subjects", different))
    print(f"IMAGE_ZERO implied: {implied:.3f} (shipped: {IMAGE_ZERO})")
    print(f"same-subject photos read, shipped zero: {figures(same, IMAGE_ZERO)}")
    print(f"same-subject photos read, implied zero: {figures(same, implied)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
