"""FLUX.2 engine overhead: one render through ``Engine.render`` (asyncio → worker thread →
``flux2-klein`` run_batch, cached reference latents, per-request progress) versus a bare
diffusers ``Flux2KleinPipeline`` call with the same latents and settings.

The method is ``bench/engine_overhead.py``'s. The bare side is a stock ``Flux2KleinPipeline``
built from the engine's own modules (same transformer, VAE, text encoder objects), called with
the same prompt, size, steps, guidance, seed (one CPU generator), prompt window and text
layers, and the same cached reference latents: diffusers' ``__call__`` only takes reference
*images*, so its ``prepare_image_latents`` is replaced on that one instance by a function that
returns the cached latents (what ``AvatarFlux2Pipeline`` does in the engine), and a stand-in
image opens that path. Engine and bare runs alternate; the figure is the ratio of the medians;
the two images are compared (the same settings should give the same pixels).

A third side, for information: the same stock call fed the reference photos as PIL images, as
a diffusers user would, so the VAE encodes them on every call (what caching saves).

    python -m bench.flux2_overhead                       # tiny-flux2 on the CPU
    python -m bench.flux2_overhead --profile flux2-klein-shaped --device cuda
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from bench.common import (
    BenchContext,
    Overhead,
    Timed,
    add_gather_window_arg,
    alternate,
    base_parser,
    headline,
    max_pixel_difference,
    render_defaults,
    render_settings_record,
    run_main,
    run_on_engine,
    timed,
    timed_async,
)

logger = logging.getLogger(__name__)

NAME = "flux2_overhead"
TARGET_SLOWDOWN = 0.05
PROMPT = "a portrait photo of the person from image 1, studio light"
IDENTITY_STRENGTH = 0.7
SEED = 1234


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    parser.set_defaults(profile="tiny-flux2")
    parser.add_argument("--size", type=int, default=None, help="image side in px (16 x n)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps")
    parser.add_argument("--repeats", type=int, default=None, help="timed engine/bare pairs")
    add_gather_window_arg(parser)
    return parser.parse_args(argv)


class BareCall:
    """Stock ``Flux2KleinPipeline`` calls on the engine's modules, run on the engine's thread."""

    def __init__(self, engine: Any, photos: list[Any], request: Any) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
        from PIL import Image

        model = engine.model
        self.personalizer = model.personalizers["flux2-klein"]
        self.request = request
        self.device = model.device.type
        # diffusers' pipelines type their modules loosely: treat it as Any.
        self.pipe: Any = cast(
            Any,
            Flux2KleinPipeline(
                **model.pipe.components, is_distilled=model.pipe.config.is_distilled
            ),
        )
        self.pipe.set_progress_bar_config(disable=True)
        self.config = model.scheduler_config
        self.scheduler_class = FlowMatchEulerDiscreteScheduler
        # The references the engine uses for this request, in the same order...
        self.latents, self.ids = self.personalizer.prepare_references(
            model.pipe, [request], model.device, model.pipe.text_encoder.dtype
        )
        # ...and, for the VAE-per-call side, as many photos as reference images (whole photos,
        # centre-cropped: the engine crops persons around the face first).
        count = len(self.personalizer.references(request))
        self.photos = [self.personalizer.reference_image(p) for p in photos[:count]]
        self.stand_in = Image.new("RGB", (64, 64))

    def _call(self, **inputs: Any) -> Any:
        request = self.request
        self.pipe.scheduler = self.scheduler_class.from_config(self.config)
        return self.pipe(
            prompt=request.prompt,
            height=request.height,
            width=request.width,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            max_sequence_length=self.personalizer.max_sequence_length,
            text_encoder_out_layers=self.personalizer.text_layers,
            output_type="pil",
            **inputs,
        ).images[0]

    def cached(self) -> Timed[Any]:
        """The stock call fed the cached reference latents."""
        latents, ids = self.latents, self.ids

        def prepare_image_latents(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return latents, ids.expand(latents.shape[0], -1, -1)

        self.pipe.prepare_image_latents = prepare_image_latents
        try:
            return self._timed(lambda: self._call(image=[self.stand_in]))
        finally:
            del self.pipe.prepare_image_latents

    def from_photos(self) -> Timed[Any]:
        """The stock call fed the reference photos: VAE-encoded on every call."""
        return self._timed(lambda: self._call(image=list(self.photos)))

    def _timed(self, fn: Callable[[], Any]) -> Timed[Any]:
        with torch.inference_mode():
            return timed(fn, self.device)


async def measure(
    engine: Any, features: Any, ctx: BenchContext, args: argparse.Namespace
) -> dict[str, Any]:
    from engine import RenderRequest

    size, steps, repeats = render_defaults(ctx.profile, ctx.device)
    size, steps = args.size or size, args.steps or steps
    repeats = args.repeats or (2 if ctx.quick else max(repeats, 30))
    request = RenderRequest(
        prompt=PROMPT,
        width=size,
        height=size,
        steps=steps,
        guidance=engine.default_guidance,
        seed=SEED,
        identity_strength=IDENTITY_STRENGTH,
        scheduler="euler",  # ignored by FLUX.2; named for the record
        personalizer="flux2-klein",
        features=features,
    )
    bare: BareCall = await engine.call(lambda: BareCall(engine, ctx.photos, request))
    progress: list[float] = []

    async def through_engine() -> Timed[Any]:
        return await timed_async(lambda: engine.render(request, progress.append), ctx.device)

    async def cached() -> Timed[Any]:
        sample: Timed[Any] = await engine.call(bare.cached)
        return sample

    async def from_photos() -> Timed[Any]:
        sample: Timed[Any] = await engine.call(bare.from_photos)
        return sample

    await through_engine()  # warm-up: first-call allocations, lazy inits
    await cached()
    await from_photos()
    pairs = await alternate(repeats, through_engine, cached, after=from_photos)
    figures = Overhead.of(pairs.first, pairs.second)
    photos_s = Overhead.of(pairs.first, pairs.after).bare
    engine_image = pairs.first[-1].value.images[0]
    bare_image, photos_image = pairs.second[-1].value, pairs.after[-1].value
    head = figures.headline(
        "Engine.render / bare Flux2KleinPipeline call (median wall time)",
        ctx.device,
        TARGET_SLOWDOWN,
    )
    head.append(
        headline(
            "bare call VAE-encoding its reference photos / Engine.render",
            photos_s["median_s"] / figures.engine["median_s"],
        )
    )
    window_ms = engine.settings.gather_window_ms
    references = len(bare.photos)
    repeated, gather = figures.notes(repeats, window_ms)
    return {
        "description": "One render through Engine.render vs a bare diffusers "
        "Flux2KleinPipeline call with the same modules, reference latents and settings.",
        "headline": head,
        "notes": [
            repeated,
            "Engine time is measured by the awaiting caller (queueing, the gather window, the "
            "worker hand-offs, request checks, per-sample generators, progress callbacks, PIL "
            "conversion included); bare time around the pipeline call on the same thread.",
            gather,
            f"Identity strength {IDENTITY_STRENGTH} with {len(ctx.photos)} photos: "
            f"{references} reference images.",
            "Largest pixel difference between the engine's and the bare image: "
            f"{max_pixel_difference(engine_image, bare_image)} (0 = the same image); with the "
            f"photos VAE-encoded per call: {max_pixel_difference(engine_image, photos_image)}.",
            "diffusers' Flux2KleinPipeline takes reference images only (PIL, >= 64 px) and "
            "VAE-encodes them on every call: the bare side replaces prepare_image_latents on "
            "its instance and passes a stand-in image, as the engine's AvatarFlux2Pipeline "
            "does.",
        ],
        "table": figures.table(
            [
                ("bare Flux2KleinPipeline call, cached latents", figures.bare),
                ("bare call, photos VAE-encoded per call", photos_s),
            ]
        ),
        **figures.ratios(),
        "engine": figures.engine,
        "engine_queued": figures.queued,
        "bare": figures.bare,
        "bare_from_photos": photos_s,
        "progress_updates_seen": len(progress),
        "settings": render_settings_record(
            ctx,
            engine,
            size,
            steps,
            request.guidance,
            photos=len(ctx.photos),
            identity_strength=IDENTITY_STRENGTH,
            references=references,
            gather_window_ms=window_ms,
            repeats=repeats,
        ),
        "machine": ctx.machine,
    }


def result_stem(profile: str, device: str) -> str:
    """``flux2-overhead-<device>`` for tiny-flux2, ``flux2-overhead-<profile>-<device>`` for
    the others."""
    stem = "flux2-overhead" if profile == "tiny-flux2" else f"flux2-overhead-{profile}"
    return f"{stem}-{device}"


async def run(args: argparse.Namespace) -> Path:
    return await run_on_engine(args, NAME, measure, "flux2-klein", result_stem)


def main(argv: list[str] | None = None) -> None:
    run_main(parse_args, run, NAME, argv)


if __name__ == "__main__":
    main()
