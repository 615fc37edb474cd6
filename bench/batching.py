"""Batching: images per second when 1, 4 and 8 compatible requests arrive together (the
worker batches them, ``max_batch`` 8) versus the same requests awaited one by one.

Every request asks for one image with its own seed; "together" submits them all at once
(``asyncio.gather``), "one by one" awaits each before submitting the next. The batch sizes
the worker actually formed are recorded, and the images of both ways are compared: a seed
must give the same image alone or batched (bit-exact on the CPU, by the engine's design).

    python -m bench.batching --profile sd15-shaped --device auto
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
from pathlib import Path
from typing import Any

from bench.common import (
    IDENTITY_STRENGTH,
    PROMPT,
    BenchContext,
    Timed,
    add_render_args,
    alternate,
    base_parser,
    headline,
    is_large_on_cpu,
    max_pixel_difference,
    render_defaults,
    render_settings_record,
    run_main,
    run_on_engine,
    timed_async,
)

logger = logging.getLogger(__name__)

NAME = "batching"
MAX_BATCH = 8
TARGET_SPEEDUP_AT_8 = 2.0


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 4, 8],
        help="numbers of simultaneous requests",
    )
    parser.add_argument("--batch-repeats", type=int, default=None, help="timed rounds per level")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    add_render_args(parser)
    add_args(parser)
    return parser.parse_args(argv)


async def measure(
    engine: Any, features: Any, ctx: BenchContext, args: argparse.Namespace
) -> dict[str, Any]:
    from engine import RenderRequest

    size, steps, _ = render_defaults(ctx.profile, ctx.device)
    size, steps = args.size or size, args.steps or steps
    # Each round renders sum(concurrency) images twice: one round for SD1.5 on a CPU.
    default_repeats = 1 if is_large_on_cpu(ctx.profile, ctx.device) else 3
    repeats = 1 if ctx.quick else (args.batch_repeats or default_repeats)
    device = ctx.device
    concurrency = sorted(set(args.concurrency))
    if max(concurrency) > engine.settings.max_batch:
        raise SystemExit(f"the engine's max_batch is {engine.settings.max_batch}")

    def request(seed: int) -> Any:
        return RenderRequest(
            prompt=PROMPT,
            width=size,
            height=size,
            steps=steps,
            guidance=args.guidance,
            seed=seed,
            count=1,
            identity_strength=IDENTITY_STRENGTH,
            scheduler=args.scheduler,
            personalizer="ip-adapter",
            features=features,
        )

    async def gathered(seeds: list[int]) -> list[Any]:
        return list(await asyncio.gather(*(engine.render(request(s)) for s in seeds)))

    async def in_turn(seeds: list[int]) -> list[Any]:
        return [await engine.render(request(s)) for s in seeds]

    async def together(seeds: list[int]) -> Timed[list[Any]]:
        return await timed_async(lambda: gathered(seeds), device)

    async def one_by_one(seeds: list[int]) -> Timed[list[Any]]:
        return await timed_async(lambda: in_turn(seeds), device)

    # Warm-up: a lone render, and on a GPU the largest batch (allocations grow with it; on a
    # CPU it would only cost minutes).
    await one_by_one([0])
    if device != "cpu":
        await together(list(range(max(concurrency))))
    levels = []
    for n in concurrency:
        seeds = list(range(100, 100 + n))
        pairs = await alternate(
            repeats, functools.partial(together, seeds), functools.partial(one_by_one, seeds)
        )
        batch_sizes = {
            int(r.timings["batch_images"]) for sample in pairs.first for r in sample.value
        }
        pixel_diff = max(
            _max_pixel_diff(a.value, b.value)
            for a, b in zip(pairs.first, pairs.second, strict=True)
        )
        batched_s = [sample.wall_s for sample in pairs.first]
        single_s = [sample.wall_s for sample in pairs.second]
        batched_cpu = min(sample.cpu_s for sample in pairs.first)
        single_cpu = min(sample.cpu_s for sample in pairs.second)
        batched, single = min(batched_s), min(single_s)
        levels.append(
            {
                "requests": n,
                "together_images_per_s": n / batched,
                "one_by_one_images_per_s": n / single,
                "speedup": single / batched,
                "together_s": batched,
                "one_by_one_s": single,
                "batch_sizes_formed": sorted(batch_sizes),
                "together_cpu_s": batched_cpu,
                "one_by_one_cpu_s": single_cpu,
                "cpu_time_speedup": single_cpu / batched_cpu,
                "max_pixel_difference": pixel_diff,
                "together_all_s": [round(t, 6) for t in batched_s],
                "one_by_one_all_s": [round(t, 6) for t in single_s],
            }
        )
    window_ms = engine.settings.gather_window_ms
    max_batch = engine.settings.max_batch
    identical = all(level["max_pixel_difference"] == 0 for level in levels)

    heads = [
        headline(
            f"images/s, {level['requests']} requests together / one by one",
            level["speedup"],
            f">= {TARGET_SPEEDUP_AT_8:g}x on a GPU" if level["requests"] == 8 else "",
            (level["speedup"] >= TARGET_SPEEDUP_AT_8)
            if level["requests"] == 8 and device == "cuda"
            else None,
        )
        for level in levels
    ]
    notes = [
        f"Best of {repeats} round(s) per level after a warm-up; rounds alternate which way "
        "goes first.",
        f"The worker gathers compatible requests for up to {window_ms} ms, max_batch "
        f"{max_batch}; a lone request waits the whole window.",
        "CPU-time speedup: the process's CPU time one by one / together (steadier than wall "
        "time on a shared machine; meaningless on a GPU).",
        "Same seeds gave the same images together and one by one: "
        + (
            "yes (bit-exact)."
            if identical
            else "NO: largest pixel difference per level "
            + ", ".join(f"{lv['requests']}: {lv['max_pixel_difference']}" for lv in levels)
            + "."
        ),
    ]
    if device == "cpu":
        notes.append(
            "On a CPU, batching adds no compute (the cores are already busy with one image); "
            "it only amortises per-call costs (Python, small kernels, weight reads), which "
            "dominate tiny models and not SD1.5-sized ones. The engine's batch-invariant CPU "
            "mode (row-wise linears, oneDNN off, per-image VAE decode) also trades batch "
            "efficiency for reproducible seeds."
        )
    return {
        "description": "Throughput with concurrent compatible requests vs the same requests "
        "one by one.",
        "headline": heads,
        "notes": notes,
        "table": [
            {
                "requests": level["requests"],
                "together img/s": level["together_images_per_s"],
                "one by one img/s": level["one_by_one_images_per_s"],
                "speedup": level["speedup"],
                "CPU-time speedup": level["cpu_time_speedup"],
                "batches formed": level["batch_sizes_formed"],
            }
            for level in levels
        ],
        "levels": levels,
        "same_images_together_and_alone": identical,
        "settings": render_settings_record(
            ctx,
            engine,
            size,
            steps,
            args.guidance,
            scheduler=args.scheduler,
            max_batch=max_batch,
            gather_window_ms=window_ms,
            concurrency=concurrency,
            repeats=repeats,
        ),
        "machine": ctx.machine,
    }


async def run(args: argparse.Namespace) -> Path:
    return await run_on_engine(args, NAME, measure, max_batch=MAX_BATCH)


def _max_pixel_diff(a: list[Any], b: list[Any]) -> int:
    """The largest pixel difference between the images of two runs of the same requests."""
    worst = 0
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra.images, rb.images, strict=True):
            worst = max(worst, max_pixel_difference(x, y) or 0)
    return worst


def main(argv: list[str] | None = None) -> None:
    run_main(parse_args, run, NAME, argv)


if __name__ == "__main__":
    main()
