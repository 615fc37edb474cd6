"""engine/likeness.py on real face photos, and the engine's likeness methods on the tiny
profile: the figure's mapping, enrolment from the checks' descriptors, scoring, no face."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageOps

from engine import DiffusionEngine
from engine.likeness import (
    FACE_METHOD,
    LikenessReference,
    face_reference,
    likeness_from_distance,
)
from kinds import LikenessKind, SubjectKind

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    from skimage import data

    samples = ROOT / "bot" / "assets" / "samples"
    astronaut = Image.fromarray(data.astronaut())
    return {
        "person-1": Image.open(samples / "person-1.jpg").convert("RGB"),
        "person-2": Image.open(samples / "person-2.jpg").convert("RGB"),
        "astronaut": astronaut,
        "mirrored": ImageOps.mirror(astronaut),
        "hopper": Image.open(ROOT / "tests/fixtures/faces/grace_hopper.jpg").convert("RGB"),
        "blank": Image.new("RGB", (320, 320), (120, 118, 112)),
    }


def test_the_figure_maps_creations_same_person_line_to_50_percent() -> None:
    assert likeness_from_distance(0.55) == pytest.approx(0.5)
    assert likeness_from_distance(0.0) == likeness_from_distance(0.15) == 1.0
    assert likeness_from_distance(0.95) == likeness_from_distance(2.0) == 0.0
    distances = [0.1, 0.3, 0.5, 0.7, 0.9]
    figures = [likeness_from_distance(d) for d in distances]
    assert figures == sorted(figures, reverse=True)


def test_a_reference_round_trips_and_refuses_nonsense() -> None:
    reference = face_reference([(0.1, 0.2), (0.3, 0.4)])
    assert reference is not None
    assert LikenessReference.from_bytes(reference.to_bytes()) == reference
    assert face_reference([]) is None
    with pytest.raises(ValueError):
        LikenessReference.from_bytes(b"not json")
    with pytest.raises(ValueError):
        LikenessReference(FACE_METHOD, ((0.1,), (0.1, 0.2)))


async def test_the_engine_enrols_from_the_checks_and_scores_faces(
    tiny_engine: DiffusionEngine, photos: dict[str, Image.Image]
) -> None:
    pytest.importorskip("dlib", reason="the `faces` extra is not installed")
    assert tiny_engine.likeness_methods()[SubjectKind.PERSON.value] == FACE_METHOD
    enrolled = [photos["person-1"], photos["person-2"]]
    reports = await tiny_engine.inspect(enrolled, SubjectKind.PERSON)
    embeddings = [r.embedding for r in reports if r.embedding is not None]
    assert len(embeddings) == 2
    reference = await tiny_engine.likeness_reference(enrolled, SubjectKind.PERSON, embeddings)
    assert reference is not None and reference.method == FACE_METHOD

    names = ["astronaut", "mirrored", "hopper", "blank"]
    scores = dict(
        zip(names, await tiny_engine.likeness([photos[n] for n in names], reference), strict=True)
    )
    assert scores["blank"].kind == LikenessKind.NO_FACE and scores["blank"].value is None
    for same in ("astronaut", "mirrored"):
        assert scores[same].kind == LikenessKind.FACE and scores[same].rank > 0.5
    assert 0.0 <= scores["hopper"].rank < 0.5
    # Best of k's order: her, then someone else, then the render that lost the face.
    ranked = sorted(names, key=lambda n: -scores[n].rank)
    assert ranked[-2:] == ["hopper", "blank"]


async def test_a_reference_of_another_method_is_refused(
    tiny_engine: DiffusionEngine, photos: dict[str, Image.Image]
) -> None:
    other = LikenessReference("image/not-this-encoder", ((0.1, 0.2),))
    with pytest.raises(ValueError):
        await tiny_engine.likeness([photos["blank"]], other)
