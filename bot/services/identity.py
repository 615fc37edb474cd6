"""One person per person-avatar: the photos' face embeddings must agree.

The engine gives each person photo that passed its checks the 128-d dlib descriptor of its
face (``SubjectReport.embedding``). Two faces are taken for the same person when their
Euclidean distance is below ``SAME_PERSON_MAX_DISTANCE``. The photo that agrees with the most
others is the anchor; the photos that agree with it are the majority if they are more than
half of the set, and every other photo is refused (``different_person``). Without such a
majority (1 vs 1, 2 vs 2, all different) every photo is refused: nothing says which person the
avatar is meant to be.

Threshold: dlib documents 0.6 (99.38% on LFW). Measured here on real photos with
``scripts/measure_face_distances.py`` (HOG detector, 5-point alignment, dlib-bin 20):

- same person, scikit-image's astronaut (Eileen Collins) in 10 variants (original, mirror,
  crop, brighter, darker, +-8 degree rotations, greyscale, half size, low contrast) plus
  bot/assets/samples/person-1.jpg and person-2.jpg (the same photo, re-framed and re-lit):
  66 pairs, distance 0.040 to 0.285 (mean 0.169);
- same person, Grace Hopper (matplotlib's sample photo), the same 10 variants: 45 pairs,
  0.058 to 0.229 (mean 0.156);
- different people, astronaut vs Hopper, every variant against every variant: 120 pairs,
  0.603 to 0.727 (mean 0.683) -- the closest pair sits right at dlib's 0.6;
- different people, scikit-image's ``lfw_subset`` (100 LFW faces of 25x25 px, upscaled, so a
  rough lower bound on how close strangers get): 4950 pairs, 0.368 to 1.046 (mean 0.726),
  8.1% below 0.6, 0.5% below 0.5; against the astronaut: 0.534 to 1.004.

Variants of one photo understate how far two real photos of one person can be (dlib's LFW
pairs of the same person mostly fall within 0.3-0.5), so the threshold stays well above the
0.285 measured for one person, and goes below dlib's 0.6 to keep a margin under the closest
pair of different people measured (0.603): 0.55. Mixing two people is the costlier mistake
(the avatar renders neither); a refused photo of the right person can be replaced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SAME_PERSON_MAX_DISTANCE = 0.55

DIFFERENT_PERSON = "different_person"


def different_person_message(name: str) -> str:
    return f"`{name}` shows a different person than the other photos."


def no_majority_message(name: str) -> str:
    return (
        f"`{name}`: these photos show different people, and no one person is in most of them. "
        "Use photos of one person only."
    )


def odd_ones_out(
    embeddings: Sequence[Sequence[float]], threshold: float = SAME_PERSON_MAX_DISTANCE
) -> tuple[list[int], bool]:
    """The indices of the photos that show someone else than the majority, and whether there
    is a majority at all (when not, every index is returned)."""
    count = len(embeddings)
    if count < 2:
        return [], True
    vectors = np.asarray(embeddings, dtype=np.float64)
    distances = np.linalg.norm(vectors[:, None, :] - vectors[None, :, :], axis=-1)
    agree = distances < threshold
    # The anchor: agrees with the most photos; ties go to the one closest to the others.
    anchor = min(range(count), key=lambda i: (-int(agree[i].sum()), float(distances[i].sum())))
    members = agree[anchor]
    if int(members.sum()) * 2 <= count:
        return list(range(count)), False
    return [i for i in range(count) if not members[i]], True


__all__ = [
    "DIFFERENT_PERSON",
    "SAME_PERSON_MAX_DISTANCE",
    "different_person_message",
    "no_majority_message",
    "odd_ones_out",
]
