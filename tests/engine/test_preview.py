"""Live previews: the latent-to-RGB projection, and previews through the pipeline and worker.

Colour. The published SD1.x coefficients (ComfyUI's) are a fit to SD1.5's real VAE, which
cannot be loaded here, and the tiny profile's VAE has random weights, whose decode carries no
colour a projection could match (measured: a fit predicts it no better than a constant
colour, 20.4 vs 21.7 of 255 per cell). So ``colour_vae`` trains a VAE of the tiny profile's
exact architecture, briefly, to reconstruct smooth colour fields, which makes its decode
colour-faithful the way a real VAE's is; a projection fitted to it must then match its decode
in colour on held-out images, and projections fitted to another VAE (SD1's) or with their
colours swapped must not. Then ``fit_projection`` recovering a decoder that IS linear, and
the pipeline's previews arriving per sample, unaffected by batch mates, never for padding.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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
    projection_for,
)
from engine.tiny import tiny_components
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


def fit_projection(latents: torch.Tensor, pixels: torch.Tensor) -> LatentProjection:
    """The least-squares projection from (B, C, h, w) latents to their decodes, (B, 3, H, W)
    in [-1, 1], each decode area-averaged down to its latent's cells."""
    cells = latents.detach().float().cpu()
    height, width = cells.shape[-2:]
    target = F.adaptive_avg_pool2d(pixels.detach().float().cpu(), (height, width))
    inputs = cells.permute(0, 2, 3, 1).reshape(-1, cells.shape[1])
    inputs = torch.cat([inputs, torch.ones(inputs.shape[0], 1)], dim=1)
    outputs = target.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(inputs, outputs).solution
    rows = [(float(r), float(g), float(b)) for r, g, b in solution.tolist()]
    return LatentProjection(factors=tuple(rows[:-1]), bias=rows[-1])


# The colour VAE's training: bounded, seeded, one CPU thread (as the tiny profile runs).
COLOUR_STEPS = 150
COLOUR_BATCH = 8
COLOUR_SIDE = 16  # pixels; the tiny VAE halves: 8 x 8 latent cells
# Measured (a shared 2-core CPU): training 9.3-25 s with the load; held-out reconstruction
# error 15.2 of 255 per pixel; mean-colour error of the fitted projection 5.45 of 255, of its
# RGB-permuted copy 26.2, of SD1's coefficients 25.9; per-cell error 17.6 vs 43.8 for the
# training decodes' mean colour. Tolerances: about twice the measurement, under half the
# controls'.
MEAN_COLOUR_TOLERANCE = 11.0  # of 255
CELL_ERROR_RATIO = 0.6  # the projection's per-cell error, at most this share of the constant's
RECONSTRUCTION_TOLERANCE = 25.0  # of 255: the VAE really learnt to reproduce colours


def colour_fields(count: int, seed: int) -> torch.Tensor:
    """Smooth random colour fields in [-1, 1]: a 3 x 3 grid of random colours, interpolated."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.rand(count, 3, 3, 3, generator=generator) * 2 - 1
    size = (COLOUR_SIDE, COLOUR_SIDE)
    return F.interpolate(grid, size=size, mode="bicubic", align_corners=True).clamp(-1, 1)


@dataclass(frozen=True)
class ColourVae:
    """A colour-faithful tiny VAE's projection, and held-out images through the VAE."""

    projection: LatentProjection
    images: torch.Tensor  # held out, (B, 3, H, W) in [-1, 1]
    latents: torch.Tensor  # their encodes, scaled as the UNet sees them
    decodes: torch.Tensor  # the latents decoded, clamped to [-1, 1]
    train_colour: torch.Tensor  # the training decodes' mean colour, (3,) in [-1, 1]


@pytest.fixture(scope="module")
def colour_vae() -> Iterator[ColourVae]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is fastest on a shared CPU
    try:
        yield _train_colour_vae()
    finally:
        torch.set_num_threads(threads)


def _train_colour_vae() -> ColourVae:
    vae = tiny_components(seed=0)["vae"].train()  # the tiny profile's VAE, same config
    optimizer = torch.optim.Adam(vae.parameters(), lr=5e-4)
    for step in range(COLOUR_STEPS):
        images = colour_fields(COLOUR_BATCH, seed=1000 + step)
        posterior = vae.encode(images).latent_dist
        decoded = vae.decode(posterior.mode()).sample
        # A small KL term keeps the latents near unit scale, as a real VAE's are.
        kl = posterior.kl().mean() / images[0].numel()
        loss = F.mse_loss(decoded, images) + 1e-3 * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval()
    scaling = float(vae.config.scaling_factor)

    def through(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            latents = vae.encode(images).latent_dist.mode() * scaling
            return latents, vae.decode(latents / scaling).sample.clamp(-1, 1)

    train_latents, train_decodes = through(colour_fields(16, seed=1))
    held_out = colour_fields(16, seed=2)
    latents, decodes = through(held_out)
    return ColourVae(
        projection=fit_projection(train_latents, train_decodes),
        images=held_out,
        latents=latents,
        decodes=decodes,
        train_colour=train_decodes.mean(dim=(0, 2, 3)),
    )


def _to_255(rgb: torch.Tensor) -> np.ndarray:
    """(B, 3, h, w) colours in [-1, 1] → (B, h, w, 3) in [0, 255], as a preview's pixels."""
    return ((rgb + 1) / 2 * 255).permute(0, 2, 3, 1).numpy().astype(np.float64)


def _previews(projection: LatentProjection, latents: torch.Tensor) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float64) for im in projection.images(latents)])


def _mean_colour_error(projection: LatentProjection, vae: ColourVae) -> float:
    """Mean over images and channels of |preview's mean colour - decode's mean colour|."""
    previews = _previews(projection, vae.latents).mean(axis=(1, 2))
    decodes = _to_255(vae.decodes).mean(axis=(1, 2))
    return float(np.abs(previews - decodes).mean())


def test_a_colour_faithful_vae_reconstructs_its_held_out_colours(colour_vae: ColourVae) -> None:
    error = float(np.abs(_to_255(colour_vae.decodes) - _to_255(colour_vae.images)).mean())
    assert error < RECONSTRUCTION_TOLERANCE, f"reconstruction error {error:.1f} of 255"


def test_the_fitted_projection_matches_the_vae_decode_in_mean_colour(
    colour_vae: ColourVae,
) -> None:
    error = _mean_colour_error(colour_vae.projection, colour_vae)
    assert error < MEAN_COLOUR_TOLERANCE, f"mean-colour error {error:.2f} of 255"


def test_the_fitted_projection_beats_a_constant_colour_per_cell(colour_vae: ColourVae) -> None:
    height, width = colour_vae.latents.shape[-2:]
    cells = _to_255(F.adaptive_avg_pool2d(colour_vae.decodes, (height, width)))
    projected = float(np.abs(_previews(colour_vae.projection, colour_vae.latents) - cells).mean())
    constant = _to_255(colour_vae.train_colour.view(1, 3, 1, 1))
    baseline = float(np.abs(constant - cells).mean())
    assert projected < CELL_ERROR_RATIO * baseline, (projected, baseline)


def test_projections_of_another_vae_or_with_swapped_colours_miss_the_colours(
    colour_vae: ColourVae,
) -> None:
    fitted = colour_vae.projection
    swap = (1, 2, 0)  # R <- G <- B <- R
    swapped = LatentProjection(
        factors=tuple((row[swap[0]], row[swap[1]], row[swap[2]]) for row in fitted.factors),
        bias=(fitted.bias[swap[0]], fitted.bias[swap[1]], fitted.bias[swap[2]]),
    )
    for control in (swapped, SD1_PROJECTION):  # SD1's: fitted to SD1.5's VAE, not this one
        error = _mean_colour_error(control, colour_vae)
        assert error > MEAN_COLOUR_TOLERANCE, f"{control}: mean-colour error {error:.2f}"


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


async def record_previews(
    engine: DiffusionEngine, batches: Sequence[tuple[Sequence[RenderRequest], Recorder]]
) -> None:
    """Render each batch through the pipeline's own loop, padded to 4 rows (padding rows must
    get no previews), its recorder taking the steps and previews."""
    model = engine.model
    personalizer = model.personalizers["none"]

    def run(samples: Sequence[RenderRequest], on_step: StepCallback) -> BatchOutcome:
        with torch.inference_mode():
            return personalizer.run_batch(
                model.pipe,
                samples,
                [s.seed for s in samples],
                scheduler_config=model.scheduler_config,
                on_step=on_step,
                buckets=(4,),
            )

    for samples, recorder in batches:
        await engine.call(functools.partial(run, samples, recorder))


def assert_alone_equals_batched(alone: Recorder, batched: Recorder) -> None:
    """Previews of every step but the last (the result follows it), per sample: the target's
    the same alone as next to a batch mate, whose own differ."""
    assert [sorted(p) for p in alone.previews] == [[0]] * 3
    assert [sorted(p) for p in batched.previews] == [[0, 1]] * 3
    for solo, mates in zip(alone.previews, batched.previews, strict=True):
        assert np.array_equal(np.asarray(solo[0]), np.asarray(mates[1]))
    assert not np.array_equal(np.asarray(batched.previews[0][0]), np.asarray(alone.previews[0][0]))


async def test_pipeline_previews_each_sample_alone_or_batched(
    tiny_engine: DiffusionEngine,
) -> None:
    target = _req(1)
    alone, batched, quiet = Recorder(1), Recorder(2), Recorder(2, due=False)
    await record_previews(
        tiny_engine,
        [
            ([target], alone),
            ([_req(2, prompt="a dog"), target], batched),
            ([_req(2), target], quiet),
        ],
    )
    assert isinstance(alone, PreviewingStepCallback)
    assert_alone_equals_batched(alone, batched)
    # Projected: one pixel per latent cell; the tiny VAE halves, 32 x 48 cells.
    assert all(im.size == (32, 48) for p in batched.previews for im in p.values())
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
