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
import asyncio
import logging
import statistics
import time
from pathlib import Path
from typing import Any, cast

import torch

from bench.common import (
    BenchContext,
    base_parser,
    headline_text,
    max_pixel_difference,
    prepare_context,
    record,
    render_defaults,
    setup_logging,
    stats_row,
    summary,
    synchronize,
)

logger = logging.getLogger(__name__)

NAME = "engine_overhead"
TARGET_SLOWDOWN = 0.05
PROMPT = "a portrait photo of a person, studio light"
IDENTITY_STRENGTH = 0.7


def add_render_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=None, help="image side in px")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=6.0, help="CFG scale (>1: CFG on)")
    parser.add_argument("--scheduler", default="dpmpp_2m")
    parser.add_argument(
        "--gather-window-ms",
        type=int,
        default=None,
        help="the engine's batching window (default: EngineSettings' default)",
    )


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

    def __call__(self, request: Any) -> tuple[Any, float, float]:
        """The image, its wall time and the process's CPU time for it."""
        with self.personalizer.activated(self.pipe):  # the adapter, attached as a user has it
            self.pipe.set_ip_adapter_scale(request.identity_strength)
            synchronize(self.device)
            started, cpu_started = time.perf_counter(), time.process_time()
            output = self.pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                ip_adapter_image_embeds=self.embeds,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance,
                height=request.height,
                width=request.width,
                generator=torch.Generator("cpu").manual_seed(request.seed),
                output_type="pil",
            )
            synchronize(self.device)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        return output.images[0], elapsed, cpu


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

    async def through_engine() -> tuple[Any, float, float, float]:
        synchronize(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = await engine.render(request, progress.append)
        synchronize(device)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        return result.images[0], elapsed, cpu, result.timings["queued"]

    async def bare_call() -> tuple[Any, float, float]:
        image, elapsed, cpu = await engine.call(lambda: bare(request))
        return image, float(elapsed), float(cpu)

    await through_engine()  # warm-up: first-call allocations, lazy inits
    await bare_call()
    engine_times: list[float] = []
    engine_cpu: list[float] = []
    queued: list[float] = []
    bare_times: list[float] = []
    bare_cpu: list[float] = []
    engine_image = bare_image = None
    for i in range(repeats):
        # Alternate which goes first: drift on a shared machine hits both sides alike.
        order = ("engine", "bare") if i % 2 == 0 else ("bare", "engine")
        for side in order:
            if side == "engine":
                engine_image, elapsed, cpu, waited = await through_engine()
                engine_times.append(elapsed)
                engine_cpu.append(cpu)
                queued.append(waited)
            else:
                bare_image, elapsed, cpu = await bare_call()
                bare_times.append(elapsed)
                bare_cpu.append(cpu)
    window_ms = engine.settings.gather_window_ms

    engine_stats, bare_stats = summary(engine_times), summary(bare_times)
    ratio = engine_stats["median_s"] / bare_stats["median_s"]
    queued_stats = summary(queued)
    without_wait = summary([t - q for t, q in zip(engine_times, queued, strict=True)])
    ratio_without_wait = without_wait["median_s"] / bare_stats["median_s"]
    # Pairs ran back to back: their ratio cancels slow drift in the machine's load.
    paired = statistics.median(e / b for e, b in zip(engine_times, bare_times, strict=True))
    engine_cpu_stats, bare_cpu_stats = summary(engine_cpu), summary(bare_cpu)
    cpu_ratio = engine_cpu_stats["median_s"] / bare_cpu_stats["median_s"]
    pixel_diff = max_pixel_difference(engine_image, bare_image)
    headline = [
        {
            "figure": "Engine.render / bare pipeline call (median wall time)",
            "ratio": ratio,
            "target": f"<= {1 + TARGET_SLOWDOWN:g} ({TARGET_SLOWDOWN:.0%} slower)",
            "meets_target": ratio <= 1 + TARGET_SLOWDOWN,
        },
        {
            "figure": "same, median of the per-pair ratios",
            "ratio": paired,
            "target": f"<= {1 + TARGET_SLOWDOWN:g}",
            "meets_target": paired <= 1 + TARGET_SLOWDOWN,
        },
        {
            "figure": "same, without the worker's gather-window wait",
            "ratio": ratio_without_wait,
            "target": f"<= {1 + TARGET_SLOWDOWN:g}",
            "meets_target": ratio_without_wait <= 1 + TARGET_SLOWDOWN,
        },
    ]
    if device == "cpu":
        # CPU time counts work done, not time spent descheduled by other processes.
        headline.append(
            {
                "figure": "same, process CPU time instead of wall time",
                "ratio": cpu_ratio,
                "target": f"<= {1 + TARGET_SLOWDOWN:g}",
                "meets_target": cpu_ratio <= 1 + TARGET_SLOWDOWN,
            }
        )
    return {
        "description": "One render through Engine.render vs a bare diffusers pipeline call "
        "with the same modules, embeddings and settings.",
        "headline": headline,
        "notes": [
            f"{repeats} alternating engine/bare pairs after one warm-up of each; medians.",
            "Engine time is measured by the awaiting caller (queueing, the gather window, the "
            "worker hand-offs, progress callbacks, PIL conversion included); bare time around "
            "the pipeline call on the same thread, adapter attached beforehand.",
            f"A lone request waits up to the gather window ({window_ms} ms) for batch mates: "
            f"the median 'queued' time was {queued_stats['median_s'] * 1000:.1f} ms.",
            f"Largest pixel difference between the engine's and the bare image: {pixel_diff} "
            "(0 = the same image).",
            "CPU time is the whole process's (time.process_time) over the same calls: on a "
            "shared machine it is steadier than wall time; on a GPU it means little.",
        ],
        "table": [
            {"what": "Engine.render", **stats_row(engine_stats)},
            {"what": "  of which queued (gather window)", **stats_row(queued_stats)},
            {"what": "  without the queue wait", **stats_row(without_wait)},
            {"what": "bare StableDiffusionPipeline call", **stats_row(bare_stats)},
            {"what": "Engine.render, CPU time", **stats_row(engine_cpu_stats)},
            {"what": "bare call, CPU time", **stats_row(bare_cpu_stats)},
        ],
        "ratio": ratio,
        "ratio_without_gather_wait": ratio_without_wait,
        "paired_ratio_median": paired,
        "cpu_time_ratio": cpu_ratio,
        "engine_cpu": engine_cpu_stats,
        "bare_cpu": bare_cpu_stats,
        "engine": engine_stats,
        "engine_queued": queued_stats,
        "bare": bare_stats,
        "max_pixel_difference": pixel_diff,
        "progress_updates_seen": len(progress),
        "settings": {
            "profile": ctx.profile.name,
            "device": device,
            "dtype": str(engine.model.dtype).removeprefix("torch."),
            "size": size,
            "steps": steps,
            "guidance": args.guidance,
            "scheduler": args.scheduler,
            "photos": len(ctx.photos),
            "identity_strength": IDENTITY_STRENGTH,
            "gather_window_ms": window_ms,
            "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
            "quick": ctx.quick,
        },
        "machine": ctx.machine,
    }


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    if args.gather_window_ms is None:
        return {}
    return {"gather_window_ms": args.gather_window_ms}


async def run(args: argparse.Namespace) -> Path:
    from engine import create_engine

    ctx = prepare_context(args, **settings_overrides(args))
    engine = await create_engine(ctx.settings)
    try:
        features = await engine.encode(ctx.photos, "person")
        section = await measure(engine, features, ctx, args)
    finally:
        await engine.aclose()
    return record(ctx.out, ctx.profile.name, ctx.device, NAME, section)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.verbose)
    path = asyncio.run(run(args))
    print(headline_text(path, NAME))


if __name__ == "__main__":
    main()
