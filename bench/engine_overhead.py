"""Engine overhead: one render through ``Engine.render`` (asyncio → worker thread → batch
pipeline, cached features, per-request progress) versus a bare diffusers
``StableDiffusionPipeline`` call with the same settings.

The bare pipeline is a stock ``StableDiffusionPipeline`` built from the engine's own modules
(same UNet, VAE, text encoder, image encoder objects), with the engine's IP-Adapter attached
and the same ``ip_adapter_image_embeds`` (the cached photo embeddings, negatives as diffusers
computes them), prompt, size, steps, guidance, scheduler and seed. Engine and bare runs
alternate, so a busy machine slows both alike; the figure is the ratio of the medians. The
two images are compared too: the same settings should give the same pixels.

    python -m bench.engine_overhead --profile sd15-shaped --device auto
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, cast

import torch

from bench.common import (
    IDENTITY_STRENGTH,
    PROMPT,
    BenchContext,
    Overhead,
    Timed,
    add_render_args,
    alternate,
    base_parser,
    max_pixel_difference,
    render_defaults,
    render_settings_record,
    run_main,
    run_on_engine,
    timed,
    timed_async,
)

logger = logging.getLogger(__name__)

NAME = "engine_overhead"
TARGET_SLOWDOWN = 0.05


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overhead-repeats", type=int, default=None, help="timed engine/bare pairs"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    add_render_args(parser)
    add_args(parser)
    return parser.parse_args(argv)


def render_settings(ctx: BenchContext, args: argparse.Namespace) -> tuple[int, int, int]:
    """(size, steps, repeats) from the arguments, the profile and the device."""
    size, steps, repeats = render_defaults(ctx.profile, ctx.device)
    if ctx.quick:
        repeats = 2
    return args.size or size, args.steps or steps, args.overhead_repeats or repeats


class BareCall:
    """The plain diffusers call, on the engine's modules, run on the engine's thread."""

    def __init__(self, engine: Any, features: Any, scheduler: str, guidance: float) -> None:
        from diffusers import StableDiffusionPipeline

        from engine.pipeline import SCHEDULERS

        model = engine.model
        # diffusers' pipelines type their modules loosely: treat it as Any.
        self.pipe: Any = cast(
            Any,
            StableDiffusionPipeline(
                **{**model.pipe.components, "safety_checker": None},
                requires_safety_checker=False,
            ),
        )
        self.pipe.set_progress_bar_config(disable=True)
        cls, overrides = SCHEDULERS[scheduler]
        self.pipe.scheduler = cls.from_config(model.scheduler_config, **overrides)
        self.personalizer = model.personalizers["ip-adapter"]
        self.features = features
        self.guidance = guidance
        self.device = model.device.type
        self.embeds: list[torch.Tensor] | None = None

    def _embeds(self, photo: Any) -> list[torch.Tensor]:
        """Cached positives; the negative is what diffusers' ``encode_image`` computes for
        classifier-free guidance (the encoder's view of an all-zero image)."""
        model_device = self.pipe.unet.device
        positives = self.features.tensors["image_embeds"].to(model_device, self.pipe.unet.dtype)
        plus = positives.ndim == 3
        _, negative = self.pipe.encode_image(photo, model_device, 1, output_hidden_states=plus)
        negative = negative.to(positives.dtype)
        if not plus:
            negative = torch.zeros_like(negative)
        negatives = negative.unsqueeze(0).expand(1, positives.shape[0], *negative.shape[1:])
        if self.guidance <= 1.0:
            return [positives.unsqueeze(0)]
        return [torch.cat([negatives, positives.unsqueeze(0)])]

    def prepare(self, photo: Any) -> None:
        with torch.inference_mode():
            self.embeds = self._embeds(photo)

    def __call__(self, request: Any) -> Timed[Any]:
        """The image, timed around the pipeline call."""
        with self.personalizer.activated(self.pipe):  # the adapter, attached as a user has it
            self.pipe.set_ip_adapter_scale(request.identity_strength)
            return timed(lambda: self._render(request), self.device)

    def _render(self, request: Any) -> Any:
        return self.pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            ip_adapter_image_embeds=self.embeds,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            height=request.height,
            width=request.width,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="pil",
        ).images[0]


async def measure(
    engine: Any, features: Any, ctx: BenchContext, args: argparse.Namespace
) -> dict[str, Any]:
    from engine import RenderRequest

    size, steps, repeats = render_settings(ctx, args)
    device = ctx.device
    bare = BareCall(engine, features, args.scheduler, args.guidance)
    await engine.call(lambda: bare.prepare(ctx.photos[0]))
    request = RenderRequest(
        prompt=PROMPT,
        width=size,
        height=size,
        steps=steps,
        guidance=args.guidance,
        seed=1234,
        count=1,
        identity_strength=IDENTITY_STRENGTH,
        scheduler=args.scheduler,
        personalizer="ip-adapter",
        features=features,
    )
    progress: list[float] = []

    async def through_engine() -> Timed[Any]:
        return await timed_async(lambda: engine.render(request, progress.append), device)

    async def bare_call() -> Timed[Any]:
        sample: Timed[Any] = await engine.call(lambda: bare(request))
        return sample

    await through_engine()  # warm-up: first-call allocations, lazy inits
    await bare_call()
    pairs = await alternate(repeats, through_engine, bare_call)
    window_ms = engine.settings.gather_window_ms
    figures = Overhead.of(pairs.first, pairs.second)
    pixel_diff = max_pixel_difference(pairs.first[-1].value.images[0], pairs.second[-1].value)
    first_target = f"<= {1 + TARGET_SLOWDOWN:g} ({TARGET_SLOWDOWN:.0%} slower)"
    repeated, gather = figures.notes(repeats, window_ms)
    return {
        "description": "One render through Engine.render vs a bare diffusers pipeline call "
        "with the same modules, embeddings and settings.",
        "headline": figures.headline(
            "Engine.render / bare pipeline call (median wall time)",
            device,
            TARGET_SLOWDOWN,
            first_target,
        ),
        "notes": [
            repeated,
            "Engine time is measured by the awaiting caller (queueing, the gather window, the "
            "worker hand-offs, progress callbacks, PIL conversion included); bare time around "
            "the pipeline call on the same thread, adapter attached beforehand.",
            gather,
            f"Largest pixel difference between the engine's and the bare image: {pixel_diff} "
            "(0 = the same image).",
            "CPU time is the whole process's (time.process_time) over the same calls: on a "
            "shared machine it is steadier than wall time; on a GPU it means little.",
        ],
        "table": figures.table([("bare StableDiffusionPipeline call", figures.bare)]),
        **figures.ratios(),
        "engine_cpu": figures.engine_cpu,
        "bare_cpu": figures.bare_cpu,
        "engine": figures.engine,
        "engine_queued": figures.queued,
        "bare": figures.bare,
        "max_pixel_difference": pixel_diff,
        "progress_updates_seen": len(progress),
        "settings": render_settings_record(
            ctx,
            engine,
            size,
            steps,
            args.guidance,
            scheduler=args.scheduler,
            photos=len(ctx.photos),
            identity_strength=IDENTITY_STRENGTH,
            gather_window_ms=window_ms,
            repeats=repeats,
        ),
        "machine": ctx.machine,
    }


async def run(args: argparse.Namespace) -> Path:
    return await run_on_engine(args, NAME, measure)


def main(argv: list[str] | None = None) -> None:
    run_main(parse_args, run, NAME, argv)


if __name__ == "__main__":
    main()
