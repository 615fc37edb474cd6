"""All three engine benchmarks on one engine per profile (loading SD1.5-sized models once, not
three times), results merged into ``bench/results/engine-<profile>-<device>.{json,md}``.

    python -m bench.run_all --profile tiny sd15-shaped --device auto
    python -m bench.run_all --profile tiny --quick --out /tmp/bench   # seconds: does it run?

Order per profile: the DreamBooth-LoRA baseline first on its own model copy (freed before the
engine loads, and with torch's default CPU settings), then the engine: avatar creation,
overhead, batching.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from bench import batching, create_vs_finetune, engine_overhead
from bench.common import (
    add_render_args,
    base_parser,
    engine_overrides,
    headline_text,
    prepare_context,
    record,
    setup_logging,
)

BENCHMARKS = (create_vs_finetune.NAME, engine_overhead.NAME, batching.NAME)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "run all")
    parser.set_defaults(profile=None)
    parser.add_argument(
        "--profiles",
        nargs="+",
        default=None,
        help="profiles to run one after the other (default: --profile, else tiny)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="a subset"
    )
    add_render_args(parser)
    create_vs_finetune.add_args(parser)
    engine_overhead.add_args(parser)
    batching.add_args(parser)
    args = parser.parse_args(argv)
    args.profiles = args.profiles or [args.profile or "tiny"]
    return args


async def run_profile(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """Run the chosen benchmarks on ``args.profile``; (name, results path) for each."""
    from engine import create_engine

    ctx = prepare_context(args, max_batch=batching.MAX_BATCH, **engine_overrides(args))
    done: list[tuple[str, Path]] = []
    baseline = None
    if create_vs_finetune.NAME in args.only:
        baseline = create_vs_finetune.measure_baseline(ctx, args)
    started = time.perf_counter()
    engine = await create_engine(ctx.settings)
    load_s = time.perf_counter() - started
    try:
        if baseline is not None:
            create = await create_vs_finetune.measure_creation(engine, ctx, args)
            section = create_vs_finetune.build_section(ctx, baseline, create, load_s)
            path = record(ctx.out, ctx.profile.name, ctx.device, create_vs_finetune.NAME, section)
            done.append((create_vs_finetune.NAME, path))
        features = await engine.encode(ctx.photos, "person")
        for module in (engine_overhead, batching):
            if module.NAME in args.only:
                section = await module.measure(engine, features, ctx, args)
                path = record(ctx.out, ctx.profile.name, ctx.device, module.NAME, section)
                done.append((module.NAME, path))
    finally:
        await engine.aclose()
    return done


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.verbose)
    for profile in args.profiles:
        args.profile = profile
        for name, path in asyncio.run(run_profile(args)):
            print(headline_text(path, name))


if __name__ == "__main__":
    main()
