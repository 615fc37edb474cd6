"""Upscale x2 on FLUX.2 [klein] (issue 25): the chosen image as the first reference at the
larger size, on the tiny-flux2 profile; Vary stays refused; Stable Diffusion personalizers
refuse reference images.

"Equal" means bit-identical pixels: on the CPU the FLUX.2 pipeline runs batch-invariant
kernels, so a seed gives the same image whatever it is batched with.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import (
    ConceptFeatures,
    ConceptKind,
    DiffusionEngine,
    EngineSettings,
    InvalidRequest,
    RenderRequest,
    create_engine,
)
from engine.flux2.personalizer import (
    FEATURE_KEY,
    MAX_REFERENCE_PIXELS,
    Flux2KleinPersonalizer,
    chosen_reference_size,
)
from engine.refine import (
    REFERENCE_UPSCALE_PREFIX,
    Variation,
    reference_upscale_prompt,
    upscale_request,
    vary_request,
)
from engine.types import Refinement
from tests.fixtures.engine import make_photo


@pytest.fixture(scope="module")
def engine() -> Iterator[DiffusionEngine]:
    # A gather window long enough for concurrently submitted requests to share a batch.
    settings = EngineSettings(profile="tiny-flux2", offline=True, max_batch=4, gather_window_ms=60)
    built = asyncio.run(create_engine(settings))
    yield built
    asyncio.run(built.aclose())


@pytest.fixture(scope="module")
def pet(engine: DiffusionEngine) -> ConceptFeatures:
    photos = [make_photo(seed) for seed in (10, 11)]
    return asyncio.run(engine.encode(photos, ConceptKind.PET, "flux2-klein"))


def _base(features: ConceptFeatures, **kw: Any) -> RenderRequest:
    values: dict[str, Any] = {
        "prompt": "the dog from image 1 on a beach",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance": 1.0,
        "scheduler": "euler",
        "personalizer": "flux2-klein",
        "features": features,
        "identity_strength": 1.0,
    }
    values.update(kw)
    return RenderRequest(**values)


def _source(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    return make_photo(seed).convert("RGB").resize(size)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def _personalizer(engine: DiffusionEngine) -> Flux2KleinPersonalizer:
    personalizer = engine.model.personalizers["flux2-klein"]
    assert isinstance(personalizer, Flux2KleinPersonalizer)
    return personalizer


def test_the_upscale_is_a_render_at_twice_the_side_with_the_image_as_reference(
    engine: DiffusionEngine, pet: ConceptFeatures
) -> None:
    base = _base(pet, seed=3, width=64, height=96)
    source = _source(0, (64, 96))
    request = upscale_request(source, base, engine.profile, seed=11)
    assert (request.width, request.height, request.seed, request.count) == (128, 192, 11, 1)
    assert request.reference_image is not None and request.reference_image.size == (64, 96)
    assert request.init_image is None and request.strength == 1.0 and request.tile == 0
    assert request.prompt == REFERENCE_UPSCALE_PREFIX + "the dog from image 2 on a beach"
    assert request.features is pet and request.identity_strength == base.identity_strength
    result = asyncio.run(engine.render(request))
    assert [image.size for image in result.images] == [(128, 192)]


def test_the_prompts_image_numbers_move_past_the_chosen_image() -> None:
    prompt = reference_upscale_prompt("the person from Image 1 and the cat from image  2")
    assert prompt == REFERENCE_UPSCALE_PREFIX + "the person from Image 2 and the cat from image  3"
    assert reference_upscale_prompt("images 1") == REFERENCE_UPSCALE_PREFIX + "images 1"


def test_the_chosen_reference_fits_the_output_up_to_the_pipelines_cap() -> None:
    assert chosen_reference_size(128, 192) == (128, 192)
    width, height = chosen_reference_size(1536, 1536)
    assert width * height <= MAX_REFERENCE_PIXELS and (width, height) == (1024, 1024)
    width, height = chosen_reference_size(1536, 1024)
    assert width * height <= MAX_REFERENCE_PIXELS and width % 16 == height % 16 == 0
    assert abs(width / height - 1.5) < 0.02


def test_the_transformer_sees_the_chosen_image_first_then_one_photo_per_subject(
    engine: DiffusionEngine, pet: ConceptFeatures
) -> None:
    personalizer = _personalizer(engine)
    request = upscale_request(_source(1), _base(pet), engine.profile, seed=5)
    references = personalizer.references(request)
    # 128 px on the tiny VAE (8x), 2x2-patchified: 8x8 cells; then one 64 px photo of the pet.
    assert [tuple(r.shape) for r in references] == [(16, 8, 8), (16, 4, 4)]
    assert torch.equal(references[1], pet.tensors[FEATURE_KEY][0])
    assert personalizer.batch_key(request) == ((16, 8, 8), (16, 4, 4))

    seen: list[int] = []

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append(int(kwargs["hidden_states"].shape[1]))

    hook = engine.model.pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        asyncio.run(engine.render(request))
    finally:
        hook.remove()
    # Every step: 64 output tokens, the chosen image's 64, the photo's 16.
    assert seen == [64 + 64 + 16] * request.steps


def test_the_chosen_image_drives_the_output(engine: DiffusionEngine, pet: ConceptFeatures) -> None:
    base = _base(pet)
    one, other = (
        asyncio.run(engine.render(upscale_request(_source(s), base, engine.profile, seed=5)))
        for s in (1, 2)
    )
    again = asyncio.run(engine.render(upscale_request(_source(1), base, engine.profile, seed=5)))
    assert np.array_equal(_pixels(one.images[0]), _pixels(again.images[0]))
    assert not np.array_equal(_pixels(one.images[0]), _pixels(other.images[0]))


def test_an_upscale_is_the_same_alone_or_batched(
    engine: DiffusionEngine, pet: ConceptFeatures
) -> None:
    base = _base(pet)
    target = upscale_request(_source(1), base, engine.profile, seed=5)
    alone = asyncio.run(engine.render(target))

    async def together() -> list[Any]:
        return list(
            await asyncio.gather(
                engine.render(upscale_request(_source(2), base, engine.profile, seed=9)),
                engine.render(target),
                # The same output size without a reference image: never in that batch.
                engine.render(dataclasses.replace(base, width=128, height=128, seed=5)),
            )
        )

    batched = asyncio.run(together())
    assert [r.timings["batch_images"] for r in batched] == [2.0, 2.0, 1.0]
    assert np.array_equal(_pixels(alone.images[0]), _pixels(batched[1].images[0]))


def test_bucket_padding_encodes_each_chosen_image_once(
    engine: DiffusionEngine, pet: ConceptFeatures, monkeypatch: pytest.MonkeyPatch
) -> None:
    personalizer, model = _personalizer(engine), engine.model
    samples = [upscale_request(_source(s), _base(pet), engine.profile, seed=s) for s in range(3)]
    encoded: list[tuple[int, int]] = []
    encode = personalizer.encode_reference

    def counted(image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
        encoded.append(image.size)
        return encode(image, size)

    monkeypatch.setattr(personalizer, "encode_reference", counted)

    def work() -> Any:
        with torch.inference_mode():
            return personalizer.run_batch(
                model.pipe,
                samples,
                [1, 2, 3],
                scheduler_config=model.scheduler_config,
                buckets=(1, 2, 4),
            )

    outcome = asyncio.run(engine.call(work))
    assert outcome.kept == [0, 1, 2] and len(outcome.images) == 3
    assert encoded == [(64, 64)] * 3  # the padding row reuses the last sample's references


def test_vary_is_refused_with_its_reason(engine: DiffusionEngine, pet: ConceptFeatures) -> None:
    assert engine.refines("flux2-klein") == {Refinement.UPSCALE}
    request = vary_request(_source(0), _base(pet), engine.profile, Variation.SUBTLE, seed=1)
    with pytest.raises(InvalidRequest, match="reads images only as references"):
        asyncio.run(engine.render(request))


async def test_stable_diffusion_refines_both_ways_and_refuses_reference_images(
    tiny_engine: DiffusionEngine, engine_photos: list[Image.Image]
) -> None:
    features = await tiny_engine.encode(engine_photos, ConceptKind.PET)
    assert tiny_engine.refines("ip-adapter") == {Refinement.UPSCALE, Refinement.VARY}
    request = RenderRequest(
        prompt="a photo of a cat",
        width=64,
        height=64,
        steps=2,
        personalizer="ip-adapter",
        features=features,
        reference_image=_source(0),
    )
    with pytest.raises(InvalidRequest, match="does not read reference images"):
        await tiny_engine.render(request)
    # Its Upscale stays the hires fix: image-to-image, no reference image.
    base = dataclasses.replace(request, reference_image=None)
    upscale = upscale_request(_source(0), base, tiny_engine.profile, seed=2)
    assert upscale.init_image is not None and upscale.strength < 1.0
    assert upscale.reference_image is None
