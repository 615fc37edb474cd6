"""Training data for InstantBooth: ordinary image–caption pairs with optional subject masks.

Sources: a folder (``x.jpg`` + ``x.txt`` caption + optional ``x.mask.png``) or a JSONL manifest
(``{"image": ..., "caption": ..., "mask": ..., "kind": ...}``, paths relative to the manifest).

The paper's filters, applied once when the dataset is indexed: a subject covering less than 0.1
or more than 0.7 of the frame is dropped, and so is an image whose mask has several subjects
(connected components, ignoring specks under 1 % of the frame). Without a mask the filters
cannot run: the whole image is the subject (the encoders then see the whole augmented image).

Per item, the encoders see the subject cropped to its mask's bounding box, the background
blanked to white, heavily augmented (scale, flip, rotation, colour jitter); the diffusion target
is the whole image. With probability ``keep_background`` the crop keeps its background, because
at inference the photos are not segmented.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch.utils.data import Dataset

from engine.personalizers.instantbooth.config import InstantBoothConfig
from engine.personalizers.instantbooth.encoders import clip_pixels
from engine.personalizers.instantbooth.prompts import TRAIN_PREFIX, subject_prompt

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MASK_SUFFIX = ".mask.png"
MIN_AREA, MAX_AREA = 0.1, 0.7
MIN_COMPONENT = 0.01  # of the frame: smaller blobs are segmentation specks, not subjects
_ANALYSIS_SIDE = 128  # masks are measured at this resolution (area and components)


@dataclass(frozen=True)
class Sample:
    image: Path
    caption: str
    mask: Path | None = None
    kind: str = "person"

    def to_json(self) -> dict[str, Any]:
        return {
            "image": str(self.image),
            "caption": self.caption,
            "mask": str(self.mask) if self.mask else None,
            "kind": self.kind,
        }


def find_samples(source: Path, kind: str = "person") -> list[Sample]:
    """Every sample of a folder or a JSONL manifest (no filtering)."""
    if source.is_file():
        return _manifest_samples(source, kind)
    if not source.is_dir():
        raise FileNotFoundError(f"training data not found: {source}")
    samples = []
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.endswith(MASK_SUFFIX):
            continue
        stem = path.with_suffix("")
        caption_file = stem.with_suffix(".txt")
        caption = caption_file.read_text().strip() if caption_file.is_file() else ""
        mask = path.parent / (path.stem + MASK_SUFFIX)
        samples.append(Sample(path, caption, mask if mask.is_file() else None, kind))
    return samples


def _manifest_samples(manifest: Path, kind: str) -> list[Sample]:
    base = manifest.parent
    samples = []
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image = base / row["image"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{manifest}:{number}: not a {{image, caption}} object") from exc
        mask = base / row["mask"] if row.get("mask") else None
        samples.append(Sample(image, str(row.get("caption", "")), mask, row.get("kind", kind)))
    return samples


def load_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A boolean mask (pixels > 127), resized (nearest) to ``size`` when given."""
    with Image.open(path) as im:
        mask = im.convert("L")
        if size is not None and mask.size != size:
            mask = mask.resize(size, Image.Resampling.NEAREST)
        return np.asarray(mask) > 127


def count_components(mask: np.ndarray, min_fraction: float = MIN_COMPONENT) -> int:
    """Connected components (4-neighbourhood) covering at least ``min_fraction`` of the frame.

    Label propagation: every foreground pixel starts with its own label and takes the smallest
    label among its neighbours until nothing changes (vectorised; masks are small here).
    """
    h, w = mask.shape
    big = np.iinfo(np.int64).max
    labels = np.where(mask, np.arange(h * w, dtype=np.int64).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce(
            [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:], labels]
        )
        updated = np.where(mask, neighbours, big)
        if np.array_equal(updated, labels):
            break
        labels = updated
    _, sizes = np.unique(labels[mask], return_counts=True)
    return int((sizes >= min_fraction * h * w).sum())


def reject_reason(mask: np.ndarray) -> str | None:
    """Why the paper's filters drop this subject mask, or None to keep it."""
    h, w = mask.shape
    scale = _ANALYSIS_SIDE / max(h, w)
    if scale < 1:
        small = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.NEAREST
        )
        mask = np.asarray(small) > 127
    area = float(mask.mean())
    if area < MIN_AREA:
        return "subject_too_small"
    if area > MAX_AREA:
        return "subject_too_large"
    if count_components(mask) > 1:
        return "several_subjects"
    return None


def filter_samples(samples: Iterable[Sample]) -> tuple[list[Sample], Counter[str]]:
    """The samples the filters keep, and how many were dropped for each reason."""
    kept: list[Sample] = []
    dropped: Counter[str] = Counter()
    for sample in samples:
        if sample.mask is None:
            kept.append(sample)  # nothing to measure: the whole image is the subject
            continue
        try:
            with Image.open(sample.image) as im:
                size = im.size
            reason = reject_reason(load_mask(sample.mask, size))
        except OSError as exc:
            logger.warning("unreadable training sample %s: %s", sample.image, exc)
            reason = "unreadable"
        if reason is None:
            kept.append(sample)
        else:
            dropped[reason] += 1
    return kept, dropped


@dataclass(frozen=True)
class Augment:
    """The encoders' view of the subject: the paper says "heavily augmented"."""

    scale: tuple[float, float] = (0.8, 1.25)  # crop side relative to the subject's box
    rotation: float = 15.0  # degrees, either way
    flip: float = 0.5
    jitter: float = 0.25  # brightness/contrast/saturation factor range 1 ± jitter
    keep_background: float = 0.2


def subject_view(
    image: Image.Image, mask: np.ndarray | None, rng: random.Random, aug: Augment
) -> Image.Image:
    """Masked, cropped, augmented subject (PIL only)."""
    fill = (255, 255, 255)
    if mask is not None and mask.any():
        if rng.random() >= aug.keep_background:
            blank = Image.new("RGB", image.size, fill)
            image = Image.composite(image, blank, Image.fromarray(mask.astype(np.uint8) * 255))
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    else:
        box = (0, 0, image.size[0], image.size[1])
    side = max(box[2] - box[0], box[3] - box[1]) * rng.uniform(*aug.scale)
    cx = (box[0] + box[2]) / 2 + rng.uniform(-0.05, 0.05) * side
    cy = (box[1] + box[3]) / 2 + rng.uniform(-0.05, 0.05) * side
    # PIL pads crops that leave the image with black; paste onto the fill colour instead.
    canvas = Image.new("RGB", (round(side), round(side)), fill)
    canvas.paste(image, (round(side / 2 - cx), round(side / 2 - cy)))
    view = canvas.rotate(
        rng.uniform(-aug.rotation, aug.rotation), Image.Resampling.BICUBIC, fillcolor=fill
    )
    if rng.random() < aug.flip:
        view = ImageOps.mirror(view)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhance(view).enhance(rng.uniform(1 - aug.jitter, 1 + aug.jitter))
    return view


def target_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """The whole image: shortest side → resolution, centre crop, in [-1, 1], [3, R, R]."""
    w, h = image.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    t = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return t.view(resolution, resolution, 3).permute(2, 0, 1).float() / 127.5 - 1.0


class InstantBoothDataset(Dataset[dict[str, Any]]):
    """Items: ``pixel_values`` (target), ``subject_pixels`` (CLIP input), ``prompt`` (text)."""

    def __init__(
        self,
        samples: list[Sample],
        config: InstantBoothConfig,
        resolution: int,
        *,
        seed: int = 0,
        augment: Augment | None = None,
    ) -> None:
        if not samples:
            raise ValueError("no training samples left (check the data folder and the filters)")
        self.samples = samples
        self.config = config
        self.resolution = resolution
        self.seed = seed
        self.augment = augment or Augment()
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        # Seeded per (seed, epoch, item): reproducible across workers, processes and resumes.
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        with Image.open(sample.image) as im:
            image = im.convert("RGB")
        mask = load_mask(sample.mask, image.size) if sample.mask else None
        view = subject_view(image, mask, rng, self.augment)
        return {
            "pixel_values": target_pixels(image, self.resolution),
            "subject_pixels": clip_pixels([view], self.config.image_size)[0],
            "prompt": subject_prompt(sample.caption, self.config, sample.kind, prefix=TRAIN_PREFIX),
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pixel_values": torch.stack([i["pixel_values"] for i in items]),
        "subject_pixels": torch.stack([i["subject_pixels"] for i in items]),
        "prompt": [i["prompt"] for i in items],
    }
