"""Live previews: the latent-to-RGB projection, and previews through the pipeline and worker.

What these tests can and cannot show. The published SD1.x coefficients (ComfyUI's) are a fit
to SD1.5's real VAE, which cannot be loaded here; the tiny profile's VAE has random weights,
whose decode no linear projection predicts better than a constant colour (measured: held-out
mean per-cell error 20.4 vs 21.7 of 255), so "the tiny preview matches the tiny decode" would
hold for any projection and is not tested. Instead: the projection's layout and colour
mapping on latents whose colours are known; ``fit_projection`` recovering a decoder that IS
linear (the check an operator runs for a VAE without published coefficients); and the
pipeline's previews arriving per sample, unaffected by batch mates, never for padding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine import DiffusionEngine, RenderRequest, RenderResult
from engine.personalizers.base import BatchOutcome, PreviewingStepCallback, StepCallback
from engine.preview import (
    PREVIEW_MAX_SIDE,
    SD1_PROJECTION,
    LatentProjection,
    fit_projection,
    projection_for,
)
from engine.worker import Worker


def test_projection_colours_and_layout_on_known_latents() -> None:
    # Left half: a latent of channel 0 only; right half: channel 3 only; 8 rows x 16 columns.
    latents = torch.zeros(1, 4, 8, 16)
    latents[0, 0, :, :8] = 1.0
    latents[0, 3, :, 8:] = 1.0
    (image,) = SD1_PROJECTION.images(latents)
    assert image.size == (16, 8)  # PIL: (width, height)
    pixels = np.asarray(image)
    for column, channel in ((0, 0), (15, 3)):
        expected = [
            round(255 * min(1, max(0, (c + 1) / 2))) for c in SD1_PROJECTION.factors[channel]
        ]
        assert pixels[4, column].tolist() == expected, (column, expected)
    big = SD1_PROJECTION.images(torch.zeros(2, 4, 64, 256))
    assert [im.size for im in big] == [(PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE // 4)] * 2
    with pytest.raises(ValueError, match="reads 4 channels"):
        SD1_PROJECTION.rgb(torch.zeros(1, 32, 8, 8))


def test_fit_projection_recovers_a_linear_decoder_and_matches_its_colours() -> None:
    """A decoder that is exactly linear per latent cell (then upsampled 8x, as a VAE's
    output is): the fit recovers it, and its previews match the decode's colours."""
    truth = LatentProjection(SD1_PROJECTION.factors, bias=(0.05, -0.1, 0.02))
    generator = torch.Generator().manual_seed(0)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return F.interpolate(truth.rgb(latents), scale_factor=8, mode="nearest")

    train = torch.randn(4, 4, 8, 8, generator=generator)
    fitted = fit_projection(train, decode(train))
    assert np.allclose(fitted.factors, truth.factors, atol=1e-4)
    assert np.allclose(fitted.bias, truth.bias, atol=1e-4)
    held_out = 0.5 * torch.randn(2, 4, 8, 8, generator=generator)
    previews = np.stack([np.asarray(im, dtype=np.float64) for im in fitted.images(held_out)])
    decoded = F.avg_pool2d(decode(held_out), 8).clamp(-1, 1)
    expected = ((decoded + 1) / 2 * 255).permute(0, 2, 3, 1).numpy()
    error = float(np.abs(previews - expected).mean())
    assert error < 1.0, f"mean |preview - decode| {error:.3f} of 255"


def test_projection_per_vae_family(tiny_engine: DiffusionEngine) -> None:
    assert projection_for(tiny_engine.model.pipe.vae) is SD1_PROJECTION

    class Config:
        latent_channels = 32  # FLUX.2's VAE: no published projection wired here
        scaling_factor = 1.0

    class Flux2Vae(torch.nn.Module):
        config = Config()

    assert projection_for(Flux2Vae()) is None


class Recorder:
    """A previewing step callback: every sample wanted, a preview due at every step."""

    def __init__(self, size: int, due: bool = True) -> None:
        self.size = size
        self.due = due
        self.previews: list[dict[int, Image.Image]] = []

    def __call__(self, done: int, total: int) -> Sequence[bool]:
        return [True] * self.size

    def preview_due(self) -> bool:
        return self.due

    def preview(self, images: Mapping[int, Image.Image]) -> None:
        self.previews.append(dict(images))


def _req(seed: int, **kw: Any) -> RenderRequest:
    values: dict[str, Any] = {"prompt": "a cat", "width": 64, "height": 96, "steps": 4}
    values.update(kw)
    return RenderRequest(personalizer="none", scheduler="ddim", seed=seed, **values)


async def test_pipeline_previews_each_sample_alone_or_batched(
    tiny_engine: DiffusionEngine,
) -> None:
    model = tiny_engine.model
    personalizer = model.personalizers["none"]

    def run(samples: Sequence[RenderRequest], on_step: StepCallback) -> BatchOutcome:
        with torch.inference_mode():
            return personalizer.run_batch(
                model.pipe,
                samples,
                [s.seed for s in samples],
                scheduler_config=model.scheduler_config,
                on_step=on_step,
                buckets=(4,),  # pads the batch: padding rows get no previews
            )

    target = _req(1)
    alone, batched, quiet = Recorder(1), Recorder(2), Recorder(2, due=False)
    await tiny_engine.call(lambda: run([target], alone))
    await tiny_engine.call(lambda: run([_req(2, prompt="a dog"), target], batched))
    await tiny_engine.call(lambda: run([_req(2), target], quiet))
    assert isinstance(alone, PreviewingStepCallback)
    # Every step but the last (the result follows it); the tiny VAE halves: 32 x 48 cells.
    assert [sorted(p) for p in alone.previews] == [[0]] * 3
    assert [sorted(p) for p in batched.previews] == [[0, 1]] * 3
    assert all(im.size == (32, 48) for p in batched.previews for im in p.values())
    for solo, mates in zip(alone.previews, batched.previews, strict=True):
        assert np.array_equal(np.asarray(solo[0]), np.asarray(mates[1]))
    assert not np.array_equal(np.asarray(batched.previews[0][0]), np.asarray(alone.previews[0][0]))
    assert quiet.previews == []


class PreviewingRunner:
    """Denoises nothing: reports ``steps`` steps and a preview (one image per sample,
    coloured by its seed) whenever the worker says one is due."""

    def key(self, request: RenderRequest) -> Hashable:
        return request.batch_key

    def run(
        self, samples: Sequence[RenderRequest], seeds: Sequence[int], on_step: StepCallback
    ) -> BatchOutcome:
        assert isinstance(on_step, PreviewingStepCallback)
        steps = samples[0].steps
        for step in range(steps):
            on_step(step + 1, steps)
            if on_step.preview_due():
                on_step.preview(
                    {i: Image.new("RGB", (8, 8), (seed, step, 0)) for i, seed in enumerate(seeds)}
                )
        images = [Image.new("RGB", (8, 8), (seed, 0, 0)) for seed in seeds]
        return BatchOutcome(images=images, kept=list(range(len(seeds))))

    def result(
        self, request: RenderRequest, images: list[Any], timings: dict[str, float]
    ) -> RenderResult:
        return RenderResult(images, request.seeds, timings, request.personalizer)


@pytest.mark.parametrize("interval", [0.0, 3600.0])
async def test_worker_hands_each_request_its_own_previews(interval: float) -> None:
    worker = Worker(
        PreviewingRunner(), max_batch=4, gather_window_ms=50, preview_interval_s=interval
    )
    received: dict[int, list[list[tuple[int, int, int]]]] = {1: [], 10: []}

    def collect(seed: int) -> Any:
        return lambda images: received[seed].append([im.getpixel((0, 0)) for im in images])

    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                worker.submit(_req(1, count=2), preview=collect(1)),
                worker.submit(_req(10), preview=collect(10)),
                worker.submit(_req(20)),  # asked for none
            ),
            timeout=10.0,
        )
    finally:
        await worker.aclose()
    assert [r.timings["batch_images"] for r in results] == [4.0, 4.0, 4.0]
    if interval:  # the first preview is due one interval after the batch starts
        assert received == {1: [], 10: []}
    else:
        assert received[1] == [[(1, step, 0), (2, step, 0)] for step in range(4)]
        assert received[10] == [[(10, step, 0)] for step in range(4)]
