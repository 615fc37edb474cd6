"""The toy world written as InstantBooth training data (engine/personalizers/instantbooth/).

Either format the trainer reads: a folder of ``x.png`` + ``x.txt`` + ``x.mask.png``, or a JSONL
manifest whose rows also carry ``kind: "object"`` and the world's own fields (``subject``,
``place``, ``position``, ``size``), which the trainer ignores and the evaluation can use. The
folder format keeps those fields in ``world.jsonl`` beside the images instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from avatarbot_research.toyworld.world import Subject, caption, random_scene, render_scene

KIND = "object"  # the trainer's ConceptKind for toys ("toy" is one of its synonyms)
MANIFEST = "manifest.jsonl"
WORLD_INDEX = "world.jsonl"


def write_dataset(
    root: Path,
    subjects: Sequence[Subject],
    n_images: int,
    size: int = 64,
    seed: int = 0,
    fmt: Literal["folder", "jsonl"] = "folder",
) -> Path:
    """``n_images`` scenes cycling through ``subjects``; returns what to pass as ``--data``.

    Captions always name the place and mention position and size half of the time each, so a
    model also sees the scene without them (as in most user prompts).
    """
    if not subjects:
        raise ValueError("write_dataset needs at least one subject")
    if fmt not in ("folder", "jsonl"):
        raise ValueError(f"unknown dataset format {fmt!r} (folder or jsonl)")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_images) % len(subjects)  # every subject equally often
    rows = []
    for i in range(n_images):
        subj = subjects[int(order[i])]
        scene = random_scene(rng)
        text = caption(scene, position=bool(rng.random() < 0.5), size=bool(rng.random() < 0.5))
        image, mask = render_scene(subj, scene, size, rng)
        name = f"{i:06d}"
        if fmt == "folder":
            image_rel, mask_rel = f"{name}.png", f"{name}.mask.png"
            (root / f"{name}.txt").write_text(text + "\n")
        else:
            image_rel, mask_rel = f"images/{name}.png", f"masks/{name}.png"
            (root / "images").mkdir(exist_ok=True)
            (root / "masks").mkdir(exist_ok=True)
        image.save(root / image_rel)
        mask.save(root / mask_rel)
        rows.append(
            {
                "image": image_rel,
                "caption": text,
                "mask": mask_rel,
                "kind": KIND,
                "subject": subj.id,
                "place": scene.place,
                "position": scene.position,
                "size": scene.size,
            }
        )
    index = root / (WORLD_INDEX if fmt == "folder" else MANIFEST)
    index.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root if fmt == "folder" else index
