"""The ``instantbooth`` personalizer inside the real engine (worker, batching, profiles)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import ConceptFeatures, ConceptKind, EngineSettings, RenderRequest, create_engine
from engine.engine import DiffusionEngine
from engine.errors import MissingWeights, StaleFeatures


def _photos(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture
async def engine() -> AsyncIterator[DiffusionEngine]:
    settings = EngineSettings(profile="tiny-instantbooth", default_personalizer="instantbooth")
    # The engine's CPU batch-invariant mode turns oneDNN off process-wide; put it back so the
    # tests that run after these in the same process keep their speed.
    mkldnn = torch.backends.mkldnn.enabled
    eng = await create_engine(settings)
    try:
        yield eng
    finally:
        await eng.aclose()
        torch.backends.mkldnn.enabled = mkldnn  # type: ignore[assignment]


def _request(features: ConceptFeatures, **kw: object) -> RenderRequest:
    base: dict[str, object] = {
        "prompt": "a person skiing",
        "personalizer": "instantbooth",
        "steps": 3,
        "width": 64,
        "height": 64,
        "features": features,
    }
    return RenderRequest(**{**base, **kw})  # type: ignore[arg-type]


async def test_encode_and_render_end_to_end(engine: DiffusionEngine) -> None:
    assert engine.default_personalizer == "instantbooth"
    assert set(engine.personalizers) >= {"instantbooth", "ip-adapter"}
    features = await engine.encode(_photos(3), ConceptKind.PERSON)
    assert features.encoder_id == engine.encoder_id and features.photo_count == 3
    cached = ConceptFeatures.from_bytes(features.to_bytes())
    single = _request(cached, seed=1)
    double = _request(cached, seed=2, count=2, prompt="a person reading", extra={"beta": 0.6})
    alone = [await engine.render(single), await engine.render(double)]
    together = await asyncio.gather(engine.render(single), engine.render(double))
    assert [len(r.images) for r in together] == [1, 2]
    assert together[0].personalizer == "instantbooth" and together[0].is_noise
    # A seed gives the same image alone or batched with another concept's request.
    for a, b in zip(alone, together, strict=True):
        for x, y in zip(a.images, b.images, strict=True):
            assert np.array_equal(np.asarray(x), np.asarray(y))
    # Features of the other personalizer are stale for this one, refused before queueing.
    ip = await engine.encode(_photos(1), ConceptKind.PERSON, personalizer="ip-adapter")
    with pytest.raises(StaleFeatures):
        await engine.render(_request(ip))


async def test_trained_weights_load_through_settings(
    engine: DiffusionEngine, tmp_path: Path
) -> None:
    booth = engine.model.personalizers["instantbooth"]
    booth.model.save_pretrained(tmp_path / "weights")  # type: ignore[attr-defined]
    settings = EngineSettings(
        profile="tiny-instantbooth",
        default_personalizer="instantbooth",
        instantbooth_weights=str(tmp_path / "weights"),
    )
    other = await create_engine(settings)
    try:
        assert other.encoder_id == engine.encoder_id
        photos = _photos(2, seed=5)
        a = await engine.encode(photos, ConceptKind.PET)
        b = await other.encode(photos, ConceptKind.PET)
        assert all(a.tensors[k].equal(b.tensors[k]) for k in a.tensors)
    finally:
        await other.aclose()


async def test_sd15_instantbooth_without_weights_says_how_to_train(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from engine.tiny import tiny_components

    # A local base model (the tiny one), so that only InstantBooth's weights are missing.
    StableDiffusionPipeline(
        **tiny_components(0),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    ).save_pretrained(tmp_path / "base")
    settings = EngineSettings(
        profile="sd15-instantbooth", offline=True, device="cpu", base_model=str(tmp_path / "base")
    )
    with pytest.raises(MissingWeights, match="avatarbot train instantbooth"):
        await create_engine(settings)
