"""Refine cost: an Upscale x2 and a Vary (subtle, strong) relative to the render they refine.

One avatar render (text-to-image, IP-Adapter, the profile's size and steps, or the CPU
benchmark's small ones) is the unit; each refinement of its first image goes through
``Engine.render`` like a member's job (engine/refine.py builds the requests). Cases run in
rounds, the order rotating each round, so a busy machine slows all alike; the figures are the
ratios of the medians to the render's. The upscale runs both ways: as the profile's budget
(``max_untiled_pixels``) decides, and the other way (tiled if the budget keeps it whole,
whole if it tiles), so the cost of tiling shows too. On FLUX.2 [klein] (its personalizer,
``flux2-klein``) the upscale is a render at twice the side with the image as its first
reference, untiled, and Vary is not offered (no image-to-image there), so only the upscale runs.

    python -m bench.refine --profile tiny
    python -m bench.refine --profile tiny-flux2 --steps 4
    python -m bench.refine --profile sd15-shaped --steps 10
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import (
    IDENTITY_STRENGTH,
    PROMPT,
    BenchContext,
    Timed,
    add_render_args,
    base_parser,
    headline,
    render_defaults,
    render_settings_record,
    run_main,
    run_on_engine,
    summary,
    timed_async,
)

NAME = "refine"
# Enough steps that 0.3 x steps (the upscale's share) is more than the one-step minimum.
DEFAULT_STEPS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    add_render_args(parser)
    parser.add_argument("--refine-repeats", type=int, default=None, help="timed rounds")
    return parser.parse_args(argv)


def settings(ctx: BenchContext, args: argparse.Namespace) -> tuple[int, int, int]:
    """(size, steps, rounds)."""
    size, _, repeats = render_defaults(ctx.profile, ctx.device)
    if ctx.quick:
        return args.size or size, args.steps or 4, 2
    return args.size or size, args.steps or DEFAULT_STEPS, args.refine_repeats or min(repeats, 5)


def cases(engine: Any, render: Any, source: Any) -> dict[str, Any]:
    """The requests timed, by label: the render and its refinements of ``source`` (those its
    personalizer runs)."""
    from engine.refine import Variation, tile_side, upscale_request, vary_request

    profile = engine.profile
    upscale = upscale_request(source, render, profile, seed=render.seed + 100)
    if upscale.reference_image is not None:  # FLUX.2 [klein]: no tiles, no Vary
        return {"render": render, "upscale x2, image as reference": upscale}
    if upscale.tile:
        other, other_label = dataclasses.replace(upscale, tile=0), "upscale x2, untiled"
    else:
        half = max(64, upscale.width // 2 // 64 * 64)
        tile = min(half, tile_side(profile))
        other, other_label = dataclasses.replace(upscale, tile=tile), f"upscale x2, {tile} px tiles"
    label = f"upscale x2, {upscale.tile} px tiles" if upscale.tile else "upscale x2, untiled"
    return {
        "render": render,
        "vary (subtle)": vary_request(source, render, profile, Variation.SUBTLE, seed=7),
        "vary (strong)": vary_request(source, render, profile, Variation.STRONG, seed=7),
        f"{label} (profile budget)": upscale,
        other_label: other,
    }


async def measure(
    engine: Any, features: Any, ctx: BenchContext, args: argparse.Namespace
) -> dict[str, Any]:
    from engine import RenderRequest
    from engine.pipeline import start_step

    size, steps, rounds = settings(ctx, args)
    render = RenderRequest(
        prompt=PROMPT,
        width=size,
        height=size,
        steps=steps,
        guidance=args.guidance,
        seed=1234,
        identity_strength=IDENTITY_STRENGTH,
        scheduler=args.scheduler,
        personalizer=engine.default_personalizer,
        features=features,
    )
    source = (await engine.render(render)).images[0]
    requests = cases(engine, render, source)
    samples: dict[str, list[float]] = {label: [] for label in requests}

    def runner(request: Any) -> Callable[[], Awaitable[Timed[Any]]]:
        return lambda: timed_async(lambda: engine.render(request), ctx.device)

    for request in requests.values():  # warm-up: first-call allocations at each size
        await runner(request)()
    labels = list(requests)
    for round_ in range(rounds):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            samples[label].append((await runner(requests[label])()).wall_s)
    stats = {label: summary(times) for label, times in samples.items()}
    base = stats["render"]["median_s"]
    table = [
        {
            "case": label,
            "size": f"{request.width}x{request.height}",
            "strength": request.strength,
            "steps run": request.steps - start_step(request.steps, request.strength),
            "tile px": request.tile or None,
            "median_s": stats[label]["median_s"],
            "min_s": stats[label]["min_s"],
            "max_s": stats[label]["max_s"],
            "x render": stats[label]["median_s"] / base,
        }
        for label, request in requests.items()
    ]
    heads = [
        headline(f"{row['case']} / render (median wall time)", row["x render"]) for row in table[1:]
    ]
    return {
        "description": "An Upscale x2 and a Vary (subtle, strong) of one rendered image, "
        "through Engine.render, relative to the render itself.",
        "headline": heads,
        "notes": [
            f"{rounds} timed rounds after one warm-up of each case, the order rotating each "
            "round; medians of wall time measured by the awaiting caller.",
            "Image-to-image re-runs the last strength x steps of the schedule (at least one) "
            "after one VAE encode of the source; the upscale does so at twice the side (4x "
            "the pixels). Tiled, each step runs the UNet once per overlapping tile.",
            "FLUX.2 [klein]'s upscale renders the whole schedule at twice the side, with the "
            "image encoded once as a reference (its tokens join the joint attention).",
            f"Profile budget: max_untiled_pixels = {engine.profile.max_untiled_pixels}.",
        ],
        "table": table,
        "cases": stats,
        "settings": render_settings_record(
            ctx,
            engine,
            size,
            steps,
            args.guidance,
            scheduler=args.scheduler,
            identity_strength=IDENTITY_STRENGTH,
            repeats=rounds,
        ),
        "machine": ctx.machine,
    }


def result_stem(profile: str, device: str) -> str:
    """``refine-cpu`` for tiny, ``refine-<profile>-<device>`` for the others."""
    return f"refine-{device}" if profile == "tiny" else f"refine-{profile}-{device}"


async def run(args: argparse.Namespace) -> Path:
    # The engine's default personalizer: ip-adapter on Stable Diffusion, flux2-klein on FLUX.2.
    return await run_on_engine(args, NAME, measure, None, result_stem)


def main(argv: list[str] | None = None) -> None:
    run_main(parse_args, run, NAME, argv)


if __name__ == "__main__":
    main()
