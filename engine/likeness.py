"""Likeness: how much a rendered image looks like the avatar, from what creation measured.

A person's render is scored against the avatar's *enrolled faces*: the 128-d dlib descriptors
the subject checks computed for the photos it kept (the same ones as the one-person-per-avatar
check; never recomputed per render). The render's subject face is found with the same detector
and policy as a photo's (``select_faces``), described once, and its Euclidean distance to the
mean of the enrolled descriptors becomes a figure members can read:

    likeness = clamp((FACE_ZERO - distance) / (FACE_ZERO - FACE_FULL), 0, 1)

with ``FACE_FULL`` 0.15 (two photos of one person measure 0.04-0.29 apart, mean ~0.16: 100 %)
and ``FACE_ZERO`` 0.95 (strangers measure 0.37-1.05, mean ~0.73: 0 %). The same-person
threshold of avatar creation (0.55, bot/services/identity.py) lands on exactly 50 %: above
50 % the face passes the rule that admitted the avatar's photos, below it does not.
``scripts/measure_face_distances.py`` prints the figure's distribution on real photos.

A render in which no face is found scores ``no_face``: a render that lost the person is never
preferred to one that kept it (best of k ranks it last).

Pets and objects are scored where the profile has an image encoder (engine/image_similarity.py);
otherwise they get no score.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL.Image import Image

from engine.subject_checks.faces import FaceBox, FaceDetector, FaceEmbedder, face_distance
from engine.subject_checks.inspect import select_faces
from kinds import LikenessKind, LikenessScore

FACE_FULL = 0.15
FACE_ZERO = 0.95
FACE_METHOD = "face/dlib-resnet-v1"


@dataclass(frozen=True)
class LikenessReference:
    """An avatar's enrolled identity: one vector per kept photo, and how they were made
    (``FACE_METHOD`` or an image encoder's id): vectors compare only under one method."""

    method: str
    vectors: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        if not self.method:
            raise ValueError("a likeness reference needs a method")
        if not self.vectors:
            raise ValueError("a likeness reference needs at least one vector")
        if len({len(v) for v in self.vectors}) != 1:
            raise ValueError("a likeness reference's vectors must share one dimension")

    @property
    def centroid(self) -> np.ndarray:
        return np.asarray(self.vectors, dtype=np.float64).mean(axis=0)

    def to_bytes(self) -> bytes:
        return json.dumps({"method": self.method, "vectors": self.vectors}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LikenessReference:
        try:
            raw = json.loads(data)
            return cls(
                method=str(raw["method"]),
                vectors=tuple(tuple(float(x) for x in v) for v in raw["vectors"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable likeness reference: {exc}") from exc


def likeness_from_distance(distance: float) -> float:
    """The face likeness figure (0..1) of a descriptor distance; see the module docstring."""
    value = (FACE_ZERO - distance) / (FACE_ZERO - FACE_FULL)
    return float(min(1.0, max(0.0, value)))


def face_reference(embeddings: Sequence[Sequence[float]]) -> LikenessReference | None:
    """The enrolled faces of a person avatar from its kept photos' descriptors (None: none)."""
    vectors = tuple(tuple(float(x) for x in e) for e in embeddings if e)
    return LikenessReference(FACE_METHOD, vectors) if vectors else None


def score_faces(
    images: Sequence[Image],
    reference: LikenessReference,
    detector: FaceDetector,
    embedder: FaceEmbedder,
) -> list[LikenessScore]:
    """Each image's face likeness against ``reference`` (made with ``FACE_METHOD``)."""
    if reference.method != FACE_METHOD:
        raise ValueError(f"not a face reference: {reference.method}")
    centroid = reference.centroid
    found: list[tuple[int, Image, FaceBox]] = []
    for index, image in enumerate(images):
        faces = select_faces(detector.detect(image))
        if faces:
            found.append((index, image, faces[0]))
    # The faces of all candidates described as one batch (best of k renders several).
    descriptors = embedder.embed_many([(image, face) for _, image, face in found])
    scores = [LikenessScore(LikenessKind.NO_FACE, None) for _ in images]
    for (index, _, _), descriptor in zip(found, descriptors, strict=True):
        value = likeness_from_distance(face_distance(descriptor, centroid))
        scores[index] = LikenessScore(LikenessKind.FACE, value)
    return scores


__all__ = [
    "FACE_METHOD",
    "LikenessKind",
    "LikenessReference",
    "LikenessScore",
    "face_reference",
    "likeness_from_distance",
    "score_faces",
]
