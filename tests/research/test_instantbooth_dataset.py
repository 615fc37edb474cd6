"""InstantBooth training data: sources, the paper's filters, captions, augmented items.

Also home of ``make_shapes_dataset``, the tiny synthetic dataset (coloured shapes on plain
backgrounds with their masks) the training tests use.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from avatarbot_research.instantbooth.dataset import (
    InstantBoothDataset,
    collate,
    count_components,
    filter_samples,
    find_samples,
    reject_reason,
)
from PIL import Image, ImageDraw

from engine.personalizers.instantbooth.config import InstantBoothConfig
from engine.personalizers.instantbooth.prompts import TRAIN_PREFIX, subject_prompt

SIDE = 64


def _shape(draw: ImageDraw.ImageDraw, kind: int, box: tuple[int, int, int, int], fill: object):
    if kind == 0:
        draw.ellipse(box, fill=fill)
    elif kind == 1:
        draw.rectangle(box, fill=fill)
    else:
        x0, y0, x1, y1 = box
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def write_sample(
    root: Path, name: str, boxes: list[tuple[int, int, int, int]], rng: random.Random, caption: str
) -> None:
    """One image with a shape per box, its mask and its caption."""
    background = tuple(rng.randrange(40, 216) for _ in range(3))
    image = Image.new("RGB", (SIDE, SIDE), background)
    mask = Image.new("L", (SIDE, SIDE), 0)
    for box in boxes:
        kind = rng.randrange(3)
        colour = tuple(rng.randrange(256) for _ in range(3))
        _shape(ImageDraw.Draw(image), kind, box, colour)
        _shape(ImageDraw.Draw(mask), kind, box, 255)
    image.save(root / f"{name}.png")
    mask.save(root / f"{name}.mask.png")
    (root / f"{name}.txt").write_text(caption)


def make_shapes_dataset(root: Path, count: int = 8, seed: int = 0) -> Path:
    """``count`` valid samples: one shape covering 0.15–0.5 of a 64×64 frame."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        side = rng.randrange(30, 44)
        x, y = rng.randrange(0, SIDE - side), rng.randrange(0, SIDE - side)
        write_sample(root, f"s{i:03d}", [(x, y, x + side, y + side)], rng, "a toy on a table")
    return root


def _mask(boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    m = np.zeros((SIDE, SIDE), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def test_filters_follow_the_paper() -> None:
    assert reject_reason(_mask([(0, 0, 16, 16)])) == "subject_too_small"  # 0.0625
    assert reject_reason(_mask([(0, 0, 60, 60)])) == "subject_too_large"  # 0.88
    assert reject_reason(_mask([(0, 0, 20, 40), (40, 0, 60, 40)])) == "several_subjects"
    assert reject_reason(_mask([(10, 10, 40, 40)])) is None  # 0.22, one subject
    # A speck beside the subject is segmentation noise, not a second subject.
    assert reject_reason(_mask([(10, 10, 40, 40), (60, 60, 62, 62)])) is None


def test_connected_components_count_touching_and_separate_regions() -> None:
    assert count_components(_mask([(0, 0, 10, 10), (10, 0, 20, 10)])) == 1  # they touch
    assert count_components(_mask([(0, 0, 10, 10), (11, 0, 20, 10)])) == 2
    snake = np.zeros((16, 16), dtype=bool)
    snake[0, :] = snake[:, 15] = snake[15, :] = snake[:, 0] = True  # one ring
    assert count_components(snake, min_fraction=0.0) == 1


def test_dataset_folder_is_filtered_and_counts_reasons(tmp_path: Path) -> None:
    rng = random.Random(1)
    make_shapes_dataset(tmp_path, count=3)
    write_sample(tmp_path, "small", [(0, 0, 12, 12)], rng, "a toy")
    write_sample(tmp_path, "large", [(0, 0, 62, 62)], rng, "a toy")
    write_sample(tmp_path, "two", [(0, 0, 24, 30), (36, 30, 62, 60)], rng, "two toys")
    Image.new("RGB", (SIDE, SIDE), "gray").save(tmp_path / "nomask.png")
    samples = find_samples(tmp_path, kind="object")
    assert len(samples) == 7
    kept, dropped = filter_samples(samples)
    assert dropped == {"subject_too_small": 1, "subject_too_large": 1, "several_subjects": 1}
    names = sorted(s.image.name for s in kept)
    assert names == ["nomask.png", "s000.png", "s001.png", "s002.png"]
    nomask = next(s for s in kept if s.image.name == "nomask.png")
    assert nomask.mask is None and nomask.caption == ""


def test_jsonl_manifest(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path / "imgs", count=2)
    rows = [
        {"image": "imgs/s000.png", "caption": "a woman smiling", "mask": "imgs/s000.mask.png"},
        {"image": "imgs/s001.png", "caption": "a cat asleep", "kind": "pet"},
    ]
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = find_samples(manifest)
    assert samples[0].mask == tmp_path / "imgs/s000.mask.png"
    assert samples[0].kind == "person" and samples[1].kind == "pet" and samples[1].mask is None
    (tmp_path / "bad.jsonl").write_text('{"caption": "no image"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        find_samples(tmp_path / "bad.jsonl")


def test_captions_name_the_subject_with_the_identifier() -> None:
    config = InstantBoothConfig()
    assert subject_prompt("A woman playing guitar", config, "person") == (
        "A sks person playing guitar"
    )
    assert subject_prompt("my cat on a sofa", config, "pet") == "my sks pet on a sofa"
    assert subject_prompt("sunset over the sea", config, "person", prefix=TRAIN_PREFIX) == (
        "a photo of sks person, sunset over the sea"
    )
    assert subject_prompt("sunset", config, "person") == "sks person, sunset"
    # Already personalised prompts are left alone; words merely containing a noun are not nouns.
    assert subject_prompt("sks person in Paris", config, "person") == "sks person in Paris"
    assert subject_prompt("a catalogue", config, "pet").startswith("sks pet, ")


def test_items_have_target_subject_view_and_prompt(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path, count=2)
    config = InstantBoothConfig(image_size=32)
    samples, _ = filter_samples(find_samples(tmp_path, kind="object"))
    dataset = InstantBoothDataset(samples, config, resolution=32, seed=3)
    item = dataset[0]
    assert item["pixel_values"].shape == (3, 32, 32)
    assert float(item["pixel_values"].abs().max()) <= 1.0
    assert item["subject_pixels"].shape == (3, 32, 32)
    assert item["prompt"] == "a sks object on a table"
    # Augmentation is seeded per (seed, epoch, item): reproducible, and new each epoch.
    assert torch.equal(dataset[0]["subject_pixels"], item["subject_pixels"])
    dataset.use_epoch(1)
    assert not torch.equal(dataset[0]["subject_pixels"], item["subject_pixels"])
    # The target is the whole image, never augmented.
    assert torch.equal(dataset[0]["pixel_values"], item["pixel_values"])
    batch = collate([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and len(batch["prompt"]) == 2
