"""The toy world's identity components (issue 27): colour, pattern and shape each measured
from its own features; pattern and shape told apart on the world's renders whatever the
colours."""

from __future__ import annotations

import numpy as np
import pytest
from avatarbot_research.toyworld import (
    Components,
    Scene,
    Subject,
    ToyIdentity,
    identity_components,
    random_scene,
    reference_photos,
    render_scene,
    subject,
)
from avatarbot_research.toyworld.metrics import (
    ToyFeatures,
    identity_features,
    pattern_similarity,
    shape_similarity,
)
from avatarbot_research.toyworld.world import N_SUBJECTS
from PIL import Image


def _features(image: Image.Image) -> ToyFeatures:
    found = identity_features(image)
    assert found is not None
    return found


def test_components_of_a_render_against_its_own_references() -> None:
    rng = np.random.default_rng(0)
    subj = subject(3)
    refs = reference_photos(subj, 3, 64, seed=0)
    parts = identity_components(render_scene(subj, Scene("forest"), 64, rng)[0], refs)
    assert isinstance(parts, Components)
    assert min(parts.colour, parts.pattern, parts.shape) > 0.6
    weighted = 0.5 * parts.colour + 0.25 * parts.pattern + 0.25 * parts.shape
    assert parts.overall == pytest.approx(weighted)
    snow = render_scene(subj, Scene("snow"), 64, rng)[0]
    again = identity_components(snow, refs)
    assert again is not None and ToyIdentity().similarity(snow, refs) == again.overall
    assert identity_components(Image.new("RGB", (64, 64), "white"), refs) is None


def _nearest(kind: str, found: ToyFeatures, refs: list[tuple[Subject, ToyFeatures]]) -> str:
    def score(ref: ToyFeatures) -> float:
        if kind == "pattern":
            return pattern_similarity(found.pattern, ref.pattern)
        return shape_similarity(found.shape, ref.shape)

    best = max(refs, key=lambda r: score(r[1]))[0]
    return best.pattern if kind == "pattern" else best.shape


def test_pattern_and_shape_classified_by_the_nearest_reference() -> None:
    """Clean renders of subjects the references do not contain, in random scenes: the nearest
    reference photo's pattern (by the pattern features alone) and shape (by the shape features
    alone) is the render's. Measured on 200 renders against 60 other subjects' photos: pattern
    99.5 %, shape 100 % (blurred, colour-cast, noisy: 92.5 % and 93.5 %)."""
    rng = np.random.default_rng(7)
    ids = [int(i) for i in rng.permutation(N_SUBJECTS)]
    refs = [
        (subject(i), _features(reference_photos(subject(i), 1, 64, seed=0)[0])) for i in ids[:24]
    ]
    tests = [subject(i) for i in ids[24:48]]
    hits = {"pattern": 0, "shape": 0}
    for subj in tests:
        found = _features(render_scene(subj, random_scene(rng), 64, rng)[0])
        hits["pattern"] += _nearest("pattern", found, refs) == subj.pattern
        hits["shape"] += _nearest("shape", found, refs) == subj.shape
    assert hits["pattern"] / len(tests) >= 0.85
    assert hits["shape"] / len(tests) >= 0.9


def test_pattern_ignores_the_colours_and_colour_ignores_the_pattern() -> None:
    """Same pattern and shape in another colour pair: the pattern scores high and the colour
    low; same colours and shape with another pattern: the pattern scores low."""
    rng = np.random.default_rng(3)
    for pattern in ("rim", "spot", "stripes", "dots"):
        base = Subject(0, "circle", "red", "yellow", pattern)
        refs = reference_photos(base, 3, 64, seed=0)
        recoloured = Subject(0, "circle", "blue", "cyan", pattern)
        parts = identity_components(render_scene(recoloured, Scene("city"), 64, rng)[0], refs)
        assert parts is not None and parts.pattern > 0.5 and parts.colour < 0.1
        assert parts.shape > 0.5
        for other in {"rim", "spot", "stripes", "dots"} - {pattern}:
            twin = Subject(0, "circle", "red", "yellow", other)
            parts = identity_components(render_scene(twin, Scene("city"), 64, rng)[0], refs)
            assert parts is not None and parts.pattern < 0.2, (pattern, other)


def test_one_colour_has_no_pattern() -> None:
    """A disc in the body colour alone (a colour-only "render") matches no pattern."""
    subj = Subject(0, "circle", "red", "yellow", "rim")
    refs = reference_photos(subj, 3, 64, seed=0)
    image = Image.new("RGB", (64, 64), (135, 190, 235))
    image.paste((215, 35, 35), (18, 18, 46, 46))
    parts = identity_components(image, refs)
    assert parts is not None and parts.pattern < 0.05 and parts.colour > 0.3
