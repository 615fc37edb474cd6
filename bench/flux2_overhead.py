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
import asyncio
import json
import logging
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import torch

from bench.common import (
    RESULTS_FORMAT,
    BenchContext,
    _jsonable,
    base_parser,
    headline_text,
    max_pixel_difference,
    prepare_context,
    render_defaults,
    render_markdown,
    setup_logging,
    stats_row,
    summary,
    synchronize,
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
    parser.add_argument(
        "--gather-window-ms",
        type=int,
        default=None,
        help="the engine's batching window (default: EngineSettings' default)",
    )
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

    def cached(self) -> tuple[Any, float, float]:
        """The stock call fed the cached reference latents."""
        latents, ids = self.latents, self.ids

        def prepare_image_latents(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return latents, ids.expand(latents.shape[0], -1, -1)

        self.pipe.prepare_image_latents = prepare_image_latents
        try:
            return self._timed(lambda: self._call(image=[self.stand_in]))
        finally:
            del self.pipe.prepare_image_latents

    def from_photos(self) -> tuple[Any, float, float]:
        """The stock call fed the reference photos: VAE-encoded on every call."""
        return self._timed(lambda: self._call(image=list(self.photos)))

    def _timed(self, fn: Any) -> tuple[Any, float, float]:
        with torch.inference_mode():
            synchronize(self.device)
            started, cpu_started = time.perf_counter(), time.process_time()
            image = fn()
            synchronize(self.device)
            return image, time.perf_counter() - started, time.process_time() - cpu_started


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

    async def through_engine() -> tuple[Any, float, float, float]:
        synchronize(ctx.device)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = await engine.render(request, progress.append)
        synchronize(ctx.device)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        return result.images[0], elapsed, cpu, result.timings["queued"]

    await through_engine()  # warm-up: first-call allocations, lazy inits
    await engine.call(bare.cached)
    await engine.call(bare.from_photos)
    engine_t: list[float] = []
    engine_cpu: list[float] = []
    queued: list[float] = []
    bare_t: list[float] = []
    bare_cpu: list[float] = []
    photos_t: list[float] = []
    engine_image = bare_image = photos_image = None
    for i in range(repeats):
        # Alternate which goes first: drift on a shared machine hits both sides alike.
        order = ("engine", "bare") if i % 2 == 0 else ("bare", "engine")
        for side in order:
            if side == "engine":
                engine_image, elapsed, cpu, waited = await through_engine()
                engine_t.append(elapsed)
                engine_cpu.append(cpu)
                queued.append(waited)
            else:
                bare_image, elapsed, cpu = await engine.call(bare.cached)
                bare_t.append(elapsed)
                bare_cpu.append(cpu)
        photos_image, elapsed, _ = await engine.call(bare.from_photos)
        photos_t.append(elapsed)

    engine_s, bare_s, photos_s = summary(engine_t), summary(bare_t), summary(photos_t)
    queued_s = summary(queued)
    without_wait = summary([t - q for t, q in zip(engine_t, queued, strict=True)])
    engine_cpu_s, bare_cpu_s = summary(engine_cpu), summary(bare_cpu)
    ratio = engine_s["median_s"] / bare_s["median_s"]
    paired = statistics.median(e / b for e, b in zip(engine_t, bare_t, strict=True))
    ratio_without_wait = without_wait["median_s"] / bare_s["median_s"]
    cpu_ratio = engine_cpu_s["median_s"] / bare_cpu_s["median_s"]
    target = f"<= {1 + TARGET_SLOWDOWN:g}"
    headline = [
        _head("Engine.render / bare Flux2KleinPipeline call (median wall time)", ratio, target),
        _head("same, median of the per-pair ratios", paired, target),
        _head("same, without the worker's gather-window wait", ratio_without_wait, target),
    ]
    if ctx.device == "cpu":
        # CPU time counts work done, not time spent descheduled by other processes.
        headline.append(_head("same, process CPU time instead of wall time", cpu_ratio, target))
    headline.append(
        {
            "figure": "bare call VAE-encoding its reference photos / Engine.render",
            "ratio": photos_s["median_s"] / engine_s["median_s"],
        }
    )
    window_ms = engine.settings.gather_window_ms
    references = len(bare.photos)
    return {
        "description": "One render through Engine.render vs a bare diffusers "
        "Flux2KleinPipeline call with the same modules, reference latents and settings.",
        "headline": headline,
        "notes": [
            f"{repeats} alternating engine/bare pairs after one warm-up of each; medians.",
            "Engine time is measured by the awaiting caller (queueing, the gather window, the "
            "worker hand-offs, request checks, per-sample generators, progress callbacks, PIL "
            "conversion included); bare time around the pipeline call on the same thread.",
            f"A lone request waits up to the gather window ({window_ms} ms) for batch mates: "
            f"the median 'queued' time was {queued_s['median_s'] * 1000:.1f} ms.",
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
        "table": [
            {"what": "Engine.render", **stats_row(engine_s)},
            {"what": "  of which queued (gather window)", **stats_row(queued_s)},
            {"what": "  without the queue wait", **stats_row(without_wait)},
            {"what": "bare Flux2KleinPipeline call, cached latents", **stats_row(bare_s)},
            {"what": "bare call, photos VAE-encoded per call", **stats_row(photos_s)},
            {"what": "Engine.render, CPU time", **stats_row(engine_cpu_s)},
            {"what": "bare call, CPU time", **stats_row(bare_cpu_s)},
        ],
        "ratio": ratio,
        "ratio_without_gather_wait": ratio_without_wait,
        "paired_ratio_median": paired,
        "cpu_time_ratio": cpu_ratio,
        "engine": engine_s,
        "engine_queued": queued_s,
        "bare": bare_s,
        "bare_from_photos": photos_s,
        "progress_updates_seen": len(progress),
        "settings": {
            "profile": ctx.profile.name,
            "device": ctx.device,
            "dtype": str(engine.model.dtype).removeprefix("torch."),
            "size": size,
            "steps": steps,
            "guidance": request.guidance,
            "photos": len(ctx.photos),
            "identity_strength": IDENTITY_STRENGTH,
            "references": references,
            "gather_window_ms": window_ms,
            "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
            "quick": ctx.quick,
        },
        "machine": ctx.machine,
    }


def _head(figure: str, ratio: float, target: str) -> dict[str, Any]:
    return {
        "figure": figure,
        "ratio": ratio,
        "target": target,
        "meets_target": ratio <= 1 + TARGET_SLOWDOWN,
    }


def result_path(out_dir: Path, profile: str, device: str) -> Path:
    """``flux2-overhead-<device>.json`` for tiny-flux2, ``flux2-overhead-<profile>-<device>``
    for the others."""
    stem = "flux2-overhead" if profile == "tiny-flux2" else f"flux2-overhead-{profile}"
    return out_dir / f"{stem}-{device}.json"


def write_results(path: Path, profile: str, device: str, section: dict[str, Any]) -> None:
    """The results document (``bench/common.py``'s format) and its Markdown summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    section = {**section, "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
    document = {
        "format": RESULTS_FORMAT,
        "profile": profile,
        "device": device,
        "benchmarks": {NAME: section},
    }
    path.write_text(json.dumps(document, indent=2, default=_jsonable) + "\n")
    path.with_suffix(".md").write_text(render_markdown(document))


async def run(args: argparse.Namespace) -> Path:
    from engine import create_engine

    overrides = {}
    if args.gather_window_ms is not None:
        overrides["gather_window_ms"] = args.gather_window_ms
    ctx = prepare_context(args, **overrides)
    engine = await create_engine(ctx.settings)
    try:
        features = await engine.encode(ctx.photos, "person", "flux2-klein")
        section = await measure(engine, features, ctx, args)
    finally:
        await engine.aclose()
    path = result_path(ctx.out, ctx.profile.name, ctx.device)
    write_results(path, ctx.profile.name, ctx.device, section)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.verbose)
    path = asyncio.run(run(args))
    print(headline_text(path, NAME))


if __name__ == "__main__":
    main()
