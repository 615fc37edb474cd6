#!/usr/bin/env python3
"""Measure dlib face-descriptor distances on real photos: the numbers behind
``SAME_PERSON_MAX_DISTANCE`` in bot/services/identity.py (one person per person-avatar).

Photos (all public domain, none downloaded): scikit-image's astronaut (Eileen Collins, NASA),
the demo samples made from it (bot/assets/samples/person-1.jpg, person-2.jpg), Grace Hopper
(tests/fixtures/faces/grace_hopper.jpg, the copy matplotlib ships), and scikit-image's
``lfw_subset`` (100 LFW faces of 25x25 px, upscaled: a rough sample of strangers). Each person
photo is also measured in variants a member's second photo could be: mirrored, cropped,
brighter, darker, rotated, greyscale, smaller, low contrast.

Run: ``python scripts/measure_face_distances.py`` (needs the ``faces`` and ``test`` extras).
Output of the run recorded in identity.py (dlib-bin 20, Nov 2026; re-run Dec 2026 with the
descriptor network in torch, engine/subject_checks/face_net.py, and the quick detection pass:
the same figures to the third decimal, the old code run beside it printing the same):

    same astronaut: n=66 min=0.040 mean=0.169 max=0.285
    same hopper: n=45 min=0.058 mean=0.156 max=0.229
    astronaut vs hopper: n=120 min=0.603 mean=0.683 max=0.727
    lfw_subset pairs (strangers, 25 px upscaled): n=4950 min=0.368 mean=0.726 max=1.046
      below 0.6: 8.1%, below 0.55: 2.6%, below 0.5: 0.5%
    lfw vs astronaut: n=1200 min=0.534 mean=0.795 max=1.004
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.subject_checks import (  # noqa: E402
    FaceBox,
    FaceDetector,
    FaceEmbedder,
    face_distance,
    select_faces,
)


def variants(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    return {
        "original": image,
        "mirror": ImageOps.mirror(image),
        "crop": image.crop((int(w * 0.15), 0, int(w * 0.85), int(h * 0.7))).resize((400, 400)),
        "brighter": ImageEnhance.Brightness(image).enhance(1.4),
        "darker": ImageEnhance.Brightness(image).enhance(0.6),
        "rotated+8": image.rotate(8, resample=Image.Resampling.BICUBIC),
        "rotated-8": image.rotate(-8, resample=Image.Resampling.BICUBIC),
        "greyscale": ImageOps.grayscale(image).convert("RGB"),
        "half-size": image.resize((w // 2, h // 2)),
        "low-contrast": ImageEnhance.Contrast(image).enhance(0.6),
    }


def stats(name: str, values: list[float]) -> None:
    d = np.array(values)
    print(f"{name}: n={len(d)} min={d.min():.3f} mean={d.mean():.3f} max={d.max():.3f}")


def main() -> int:
    detector, embedder = FaceDetector.load(), FaceEmbedder.load()
    if detector is None or embedder is None:
        print("needs dlib and face-recognition-models (the `faces` extra)", file=sys.stderr)
        return 1

    def embed(image: Image.Image) -> np.ndarray:
        faces = select_faces(detector.detect(image))
        assert len(faces) == 1, "expected exactly one face"
        return embedder.embed(image, faces[0])

    astronaut = Image.fromarray(data.astronaut()).convert("RGB")
    hopper = Image.open(ROOT / "tests/fixtures/faces/grace_hopper.jpg").convert("RGB")
    same_a = [embed(v) for v in variants(astronaut).values()]
    for sample in ("person-1.jpg", "person-2.jpg"):
        same_a.append(embed(Image.open(ROOT / "bot/assets/samples" / sample).convert("RGB")))
    same_h = [embed(v) for v in variants(hopper).values()]

    stats("same astronaut", [face_distance(a, b) for a, b in itertools.combinations(same_a, 2)])
    stats("same hopper", [face_distance(a, b) for a, b in itertools.combinations(same_h, 2)])
    stats("astronaut vs hopper", [face_distance(a, b) for a in same_a for b in same_h])

    faces = data.lfw_subset()[:100]  # the first 100 are faces
    lfw = []
    for pixels in faces:
        image = Image.fromarray((pixels * 255).astype(np.uint8)).convert("RGB")
        image = image.resize((150, 150), Image.Resampling.BICUBIC)
        lfw.append(embedder.embed(image, FaceBox(0, 0, 150, 150, 0.0)))
    pairs = [face_distance(a, b) for a, b in itertools.combinations(lfw, 2)]
    stats("lfw_subset pairs (strangers, 25 px upscaled)", pairs)
    below = {t: float(np.mean(np.array(pairs) < t)) for t in (0.6, 0.55, 0.5)}
    print("  " + ", ".join(f"below {t}: {p:.1%}" for t, p in below.items()))
    stats("lfw vs astronaut", [face_distance(a, b) for a in lfw for b in same_a])
    return 0


if __name__ == "__main__":
    sys.exit(main())
