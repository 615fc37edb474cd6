"""Upscale x2 and Vary on the tiny profile: sizes, tiling, closeness to the source, batching.

"Equal" means bit-identical pixels, as in test_render.py: on the CPU a seed gives the same
image whatever it is batched with, image-to-image included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
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
from engine.pipeline import feather, start_step, tile_origins
from engine.refine import (
    UPSCALE_STRENGTH,
    Variation,
    scaled_size,
    tile_side,
    upscale_request,
    vary_request,
)
from engine.types import MAX_SIDE
from tests.fixtures.engine import make_photo


def _base(features: ConceptFeatures | None = None, **kw: Any) -> RenderRequest:
    values: dict[str, Any] = {
        "prompt": "a photo of a cat",
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance": 5.0,
        "scheduler": "ddim",
        "features": features,
        "personalizer": "ip-adapter" if features is not None else "none",
    }
    values.update(kw)
    return RenderRequest(**values)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _source(seed: int) -> Image.Image:
    return make_photo(seed).convert("RGB").resize((64, 64))


# -- requests ---------------------------------------------------------------------------------


def test_image_to_image_requests_are_validated() -> None:
    source = _source(0)
    with pytest.raises(InvalidRequest, match="strength"):
        _base(init_image=source, strength=0.0)
    with pytest.raises(InvalidRequest, match="strength"):
        _base(init_image=source, strength=1.5)
    with pytest.raises(InvalidRequest, match="needs an init image"):
        _base(strength=0.5)
    with pytest.raises(InvalidRequest, match="tile"):
        _base(init_image=source, strength=0.5, tile=60)
    plain, refined = _base(), _base(init_image=source, strength=0.35)
    subtle, strong = refined, _base(init_image=source, strength=0.7)
    assert len({plain.batch_key, subtle.batch_key, strong.batch_key}) == 3
    assert _base(init_image=_source(1), strength=0.35, seed=9).batch_key == subtle.batch_key


def test_recipes_keep_the_request_and_set_size_strength_and_tiling(
    tiny_engine: DiffusionEngine,
) -> None:
    profile = tiny_engine.profile
    base = _base(seed=3, count=2, identity_strength=0.4, negative_prompt="blurry")
    up = upscale_request(_source(0), base, profile, seed=40)
    assert (up.width, up.height, up.count, up.seed) == (128, 128, 1, 40)
    assert up.strength == UPSCALE_STRENGTH and up.init_image is not None
    # 128 x 128 is over the tiny profile's budget (64 x 64): tiled, one budget a tile.
    assert profile.max_untiled_pixels == 64 * 64 and up.tile == tile_side(profile) == 64
    for field in ("prompt", "negative_prompt", "identity_strength", "personalizer", "steps"):
        assert getattr(up, field) == getattr(base, field), field
    subtle = vary_request(_source(0), base, profile, Variation.SUBTLE, seed=50, count=2)
    strong = vary_request(_source(0), base, profile, Variation.STRONG, seed=50)
    assert (subtle.width, subtle.height, subtle.tile, subtle.seeds) == (64, 64, 0, [50, 51])
    assert subtle.strength < strong.strength
    # Sizes: the aspect kept within MAX_SIDE, sides on the profile's multiple.
    assert scaled_size((1024, 512), 2, 16) == (MAX_SIDE, MAX_SIDE // 2)
    assert scaled_size((200, 120), 2, 16) == (400, 240)
    assert scaled_size((40, 40), 1, 16) == (64, 64)


def test_tiles_cover_the_latent_with_overlap_and_weights_never_vanish() -> None:
    assert tile_origins(32, 32) == [0]
    for size, tile in ((64, 32), (100, 32), (33, 32)):
        origins = tile_origins(size, tile)
        assert origins[0] == 0 and origins[-1] + tile == size
        assert all(b - a <= tile - tile // 4 for a, b in itertools.pairwise(origins))
    weights = feather(32, 8)
    assert weights.min() > 0 and weights.max() == 1.0
    assert torch.equal(weights, weights.flip(0))
    assert start_step(20, 0.35) == 13 and start_step(20, 0.7) == 6 and start_step(4, 0.1) == 3


# -- rendering --------------------------------------------------------------------------------


async def test_upscale_doubles_the_side_through_tiles(tiny_engine: DiffusionEngine) -> None:
    source = (await tiny_engine.render(_base(seed=1))).images[0]
    request = upscale_request(source, _base(seed=1), tiny_engine.profile, seed=2)
    untiled = dataclasses.replace(request, tile=0)
    conv_in = tiny_engine.model.pipe.unet.conv_in
    latent_sides: list[tuple[int, int]] = []
    hook = conv_in.register_forward_hook(
        lambda module, args, out: latent_sides.append(tuple(args[0].shape[-2:]))
    )
    try:
        tiled_result = await tiny_engine.render(request)
        whole_result = await tiny_engine.render(untiled)
    finally:
        hook.remove()
    assert source.size == (64, 64)
    assert tiled_result.images[0].size == whole_result.images[0].size == (128, 128)
    # The tiny VAE halves: a 128 px output is 64 latent cells, a 64 px tile 32. Tiled, every
    # UNet call saw tiles (3 x 3 a step); untiled, the whole latent.
    run_steps = request.steps - start_step(request.steps, request.strength)
    assert latent_sides[: 9 * run_steps] == [(32, 32)] * 9 * run_steps
    assert latent_sides[9 * run_steps :] == [(64, 64)] * run_steps
    assert not np.array_equal(_pixels(tiled_result.images[0]), _pixels(whole_result.images[0]))


@pytest.fixture(scope="module")
def whitened_engine() -> Iterator[DiffusionEngine]:
    """A tiny engine whose VAE scaling factor whitens its latents, as SD1.5's 0.18215 does for
    SD1.5's VAE. With the tiny VAE's latents (std ~0.2) scaled by SD1.5's factor, a source's
    latents are ~0.04 against unit noise: nothing of the source survives any strength, and
    "closer to the source" could not be measured."""
    settings = EngineSettings(profile="tiny", max_batch=8, gather_window_ms=60, seed=0)
    engine = asyncio.run(create_engine(settings))
    pipe = engine.model.pipe
    with torch.inference_mode():
        latents = torch.cat(
            [
                pipe.vae.encode(pipe.image_processor.preprocess(_source(s))).latent_dist.mode()
                for s in range(4)
            ]
        )
    pipe.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    yield engine
    asyncio.run(engine.aclose())


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp_2m", "euler_a"])
async def test_vary_subtle_stays_closer_to_the_source_than_strong(
    whitened_engine: DiffusionEngine, scheduler: str
) -> None:
    """Distance to the source's VAE round trip (random weights cannot reproduce the photo
    itself): subtle < strong < a render from pure noise, for every source."""
    engine = whitened_engine
    pipe = engine.model.pipe
    base = _base(steps=20, scheduler=scheduler)

    def round_trip(image: Image.Image) -> Image.Image:
        with torch.inference_mode():
            latent = pipe.vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mode()
            decoded = pipe.vae.decode(latent).sample
        return pipe.image_processor.postprocess(decoded, output_type="pil")[0]  # type: ignore[no-any-return]

    for index in range(3):
        source = _source(index)
        reference = _pixels(await engine.call(functools.partial(round_trip, source)))
        distances = {}
        for variation in Variation:
            request = vary_request(source, base, engine.profile, variation, seed=7)
            image = (await engine.render(request)).images[0]
            distances[variation.value] = float(np.abs(_pixels(image) - reference).mean())
        noise = (await engine.render(dataclasses.replace(base, seed=7))).images[0]
        distances["from noise"] = float(np.abs(_pixels(noise) - reference).mean())
        message = f"{scheduler}, source {index}: mean |pixel - round trip| {distances}"
        assert distances["subtle"] < distances["strong"] < distances["from noise"], message


async def test_image_to_image_renders_the_same_alone_and_batched(
    tiny_engine: DiffusionEngine, engine_photos: list[Image.Image]
) -> None:
    features = await tiny_engine.encode(engine_photos, ConceptKind.PET)
    profile = tiny_engine.profile
    base = _base(features, identity_strength=0.6)
    target = vary_request(_source(0), base, profile, Variation.SUBTLE, seed=42)
    upscale = upscale_request(_source(1), base, profile, seed=5)
    solo = await tiny_engine.render(target)
    solo_up = await tiny_engine.render(upscale)
    batch = await asyncio.gather(
        tiny_engine.render(vary_request(_source(2), base, profile, Variation.SUBTLE, seed=1)),
        tiny_engine.render(target),
        tiny_engine.render(
            vary_request(_source(3), base, profile, Variation.SUBTLE, seed=7, count=2)
        ),
        tiny_engine.render(_base(features, seed=42)),  # text-to-image: never in that batch
        tiny_engine.render(upscale),
        tiny_engine.render(upscale_request(_source(2), base, profile, seed=9)),
    )
    assert [r.timings["batch_images"] for r in batch] == [4.0, 4.0, 4.0, 1.0, 2.0, 2.0]
    assert np.array_equal(_pixels(solo.images[0]), _pixels(batch[1].images[0]))
    assert np.array_equal(_pixels(solo_up.images[0]), _pixels(batch[4].images[0]))
    assert not np.array_equal(_pixels(batch[0].images[0]), _pixels(batch[1].images[0]))


async def test_flux2_klein_refuses_image_to_image() -> None:
    settings = EngineSettings(profile="tiny-flux2", offline=True, max_batch=2)
    engine = await create_engine(settings)
    try:
        features = await engine.encode([make_photo(0)], ConceptKind.PET, "flux2-klein")
        base = _base(features, personalizer="flux2-klein")
        request = vary_request(_source(0), base, engine.profile, Variation.STRONG, seed=1)
        with pytest.raises(InvalidRequest, match=r"FLUX.2 \[klein\] does not re-render"):
            await engine.render(request)
        assert (await engine.render(base)).images[0].size == (64, 64)
    finally:
        await engine.aclose()
