"""Pets' and objects' likeness (engine/image_similarity.py) on the tiny profiles' random CLIP
encoders: what is compared with what, not how well (random weights measure nothing real)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from engine import DiffusionEngine, EngineSettings, create_engine
from engine.engine import LoadedModel
from engine.image_similarity import (
    IMAGE_ZERO,
    image_method,
    image_reference,
    likeness_from_cosine,
    score_images,
)
from engine.likeness import FACE_METHOD, LikenessKind, LikenessReference, LikenessScore
from tests.fixtures.engine import make_photo

BLACK = Image.new("RGB", (96, 96))


def _engine(profile: str) -> Iterator[DiffusionEngine]:
    # The engine's CPU batch-invariant mode turns oneDNN off process-wide; put it back so the
    # tests that run after these in the same process keep their speed.
    mkldnn = torch.backends.mkldnn.enabled
    built = asyncio.run(create_engine(EngineSettings(profile=profile, offline=True)))
    try:
        yield built
    finally:
        asyncio.run(built.aclose())
        torch.backends.mkldnn.enabled = mkldnn  # type: ignore[assignment]


@pytest.fixture(scope="module")
def flux2_engine() -> Iterator[DiffusionEngine]:
    yield from _engine("tiny-flux2")


@pytest.fixture(scope="module")
def instantbooth_engine() -> Iterator[DiffusionEngine]:
    yield from _engine("tiny-instantbooth")


async def _reference(engine: DiffusionEngine, model: LoadedModel) -> LikenessReference:
    photos = [make_photo(seed) for seed in range(3)]
    reference = await engine.call(lambda: image_reference(model, photos))
    assert reference is not None
    return reference


async def _scores(
    engine: DiffusionEngine, model: LoadedModel, reference: LikenessReference
) -> list[LikenessScore]:
    renders = [make_photo(1), BLACK]  # a kept photo, and an image nothing like the photos
    scores: list[LikenessScore] = await engine.call(lambda: score_images(model, renders, reference))
    return scores


def test_the_mapping_puts_unrelated_photos_at_zero_and_the_reference_at_one() -> None:
    assert likeness_from_cosine(IMAGE_ZERO) == 0.0
    assert likeness_from_cosine(-1.0) == 0.0
    assert likeness_from_cosine(0.75) == pytest.approx(0.5)
    assert likeness_from_cosine(1.0) == 1.0
    cosines = np.linspace(IMAGE_ZERO, 1.0, 11)
    assert np.all(np.diff([likeness_from_cosine(c) for c in cosines]) > 0)


async def test_the_reference_is_one_unit_vector_per_photo(tiny_engine: DiffusionEngine) -> None:
    model = tiny_engine.model
    method = await tiny_engine.call(lambda: image_method(model))
    reference = await _reference(tiny_engine, model)
    assert method is not None and method.startswith("image/")
    assert reference.method == method
    assert len(reference.vectors) == 3
    assert np.allclose(np.linalg.norm(reference.vectors, axis=1), 1.0)
    assert await tiny_engine.call(lambda: image_reference(model, [])) is None


async def test_a_kept_photo_scores_above_a_very_different_image(
    tiny_engine: DiffusionEngine,
) -> None:
    model = tiny_engine.model
    reference = LikenessReference.from_bytes((await _reference(tiny_engine, model)).to_bytes())
    kept, black = await _scores(tiny_engine, model, reference)
    assert {kept.kind, black.kind} == {LikenessKind.IMAGE}
    assert kept.value is not None and black.value is not None
    assert 0.0 <= black.value < kept.value <= 1.0
    assert await tiny_engine.call(lambda: score_images(model, [], reference)) == []


async def test_scores_are_deterministic(tiny_engine: DiffusionEngine) -> None:
    model = tiny_engine.model
    first = await _reference(tiny_engine, model)
    second = await _reference(tiny_engine, model)
    assert first == second
    assert await _scores(tiny_engine, model, first) == await _scores(tiny_engine, model, second)


async def test_a_reference_of_another_method_is_refused(tiny_engine: DiffusionEngine) -> None:
    model = tiny_engine.model
    vector = (1.0,) * 32
    for method in (FACE_METHOD, "image/another-encoder"):
        reference = LikenessReference(method, (vector,))
        with pytest.raises(ValueError, match="not a reference of this image encoder"):
            await tiny_engine.call(functools.partial(score_images, model, [BLACK], reference))


async def test_a_profile_without_an_image_encoder_has_no_image_likeness(
    flux2_engine: DiffusionEngine, tiny_engine: DiffusionEngine
) -> None:
    model = flux2_engine.model
    assert await flux2_engine.call(lambda: image_method(model)) is None
    assert await flux2_engine.call(lambda: image_reference(model, [BLACK])) is None
    reference = await _reference(tiny_engine, tiny_engine.model)
    with pytest.raises(ValueError, match=r"\(None\)"):
        await flux2_engine.call(lambda: score_images(model, [BLACK], reference))


async def test_instantbooths_frozen_encoder_serves_where_the_pipeline_has_none(
    instantbooth_engine: DiffusionEngine,
) -> None:
    engine = instantbooth_engine
    with_adapter = engine.model
    # sd15-instantbooth's shape: InstantBooth without the IP-Adapter's encoder on the pipeline.
    bare = SimpleNamespace(image_encoder=None, feature_extractor=None)
    model = dataclasses.replace(with_adapter, pipe=bare)
    method = await engine.call(lambda: image_method(model))
    assert method is not None and method != await engine.call(lambda: image_method(with_adapter))
    reference = await _reference(engine, model)
    assert reference.method == method
    kept, black = await _scores(engine, model, reference)
    assert kept.value is not None and black.value is not None
    assert black.value < kept.value

    # Fine-tuned with InstantBooth's heads, the encoder no longer measures likeness.
    trained = copy.copy(model.personalizers["instantbooth"])
    trained.config = trained.config.model_copy(update={"image_encoder_trained": True})  # type: ignore[attr-defined]
    model = dataclasses.replace(model, personalizers={"instantbooth": trained})
    assert await engine.call(lambda: image_method(model)) is None
