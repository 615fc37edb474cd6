"""Encode speed: time to turn one avatar's 5 photos into cached features, InstantBooth versus
IP-Adapter, on the same engine, device and photos.

Each timed call is ``engine.encode(photos, person, personalizer=...)`` through the engine's
worker, the path the service takes when a user creates an avatar (face detection and crops,
the image encoder, the personalizer's heads), plus serialising the features to bytes. The two
personalizers alternate, so a busy machine slows both alike; the headline is the ratio of the
medians (InstantBooth / IP-Adapter).

Profiles holding both personalizers: ``tiny-instantbooth`` (seconds, checks the code path) and
``sd15-shaped-instantbooth`` (real architectures with random weights: InstantBooth on CLIP
ViT-L/14, IP-Adapter Plus Face on OpenCLIP ViT-H/14 + its resampler).

    python -m bench.encode_speed --profile sd15-shaped-instantbooth --device auto
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path
from typing import Any

from bench.common import (
    BenchContext,
    Timed,
    alternate,
    base_parser,
    headline,
    prepare_context,
    record,
    run_main,
    summary,
    timed_async,
)

logger = logging.getLogger(__name__)

NAME = "encode_speed"
PERSONALIZERS = ("instantbooth", "ip-adapter")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    parser.set_defaults(profile="tiny-instantbooth")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10/5)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 2
    return args


async def measure(args: argparse.Namespace, ctx: BenchContext) -> dict[str, Any]:
    from engine import ConceptKind
    from engine.engine import create_engine

    device = ctx.device
    engine = await create_engine(ctx.settings)
    try:
        missing = [p for p in PERSONALIZERS if p not in engine.personalizers]
        if missing:
            raise SystemExit(
                f"profile {args.profile} lacks {', '.join(missing)}: use tiny-instantbooth or "
                "sd15-shaped-instantbooth"
            )
        repeats = args.repeats or (10 if device != "cpu" else 5)

        async def encoded(name: str) -> tuple[Any, bytes]:
            features = await engine.encode(ctx.photos, ConceptKind.PERSON, personalizer=name)
            return features, features.to_bytes()  # tensors are on the CPU: the device is done

        async def encode(name: str) -> Timed[tuple[Any, bytes]]:
            return await timed_async(functools.partial(encoded, name), device)

        # A warm-up round (allocator, kernels, lazy imports), then alternating timed rounds.
        facts: dict[str, dict[str, Any]] = {}
        for name in PERSONALIZERS:
            features, blob = (await encode(name)).value
            facts[name] = {
                "encoder_id": features.encoder_id,
                "feature_bytes": len(blob),
                "tensors": {k: list(v.shape) for k, v in features.tensors.items()},
            }
        first, second = (functools.partial(encode, name) for name in PERSONALIZERS)
        pairs = await alternate(repeats, first, second)
        times = {
            PERSONALIZERS[0]: [sample.wall_s for sample in pairs.first],
            PERSONALIZERS[1]: [sample.wall_s for sample in pairs.second],
        }
        return {
            "times": {name: summary(values) for name, values in times.items()},
            "facts": facts,
            "repeats": repeats,
            "face_detector": engine.model.detector is not None,
        }
    finally:
        await engine.aclose()


async def run(args: argparse.Namespace) -> Path:
    ctx = prepare_context(args)
    measured = await measure(args, ctx)
    times, facts = measured["times"], measured["facts"]
    ratio = times["instantbooth"]["median_s"] / times["ip-adapter"]["median_s"]
    section = {
        "description": __doc__.split("\n\n")[1] if __doc__ else "",
        "headline": [
            headline(f"InstantBooth / IP-Adapter encode time ({args.photos} photos)", ratio)
        ],
        "table": [
            {
                "personalizer": name,
                "median_s": times[name]["median_s"],
                "min_s": times[name]["min_s"],
                "max_s": times[name]["max_s"],
                "per_photo_s": times[name]["median_s"] / args.photos,
                "feature_bytes": facts[name]["feature_bytes"],
                "tensors": " ".join(f"{k}{v}" for k, v in facts[name]["tensors"].items()),
            }
            for name in PERSONALIZERS
        ],
        "settings": {
            "photos": args.photos,
            "repeats": measured["repeats"],
            "face_detector": measured["face_detector"],
        },
        "notes": [
            "Through Engine.encode (worker thread, face detection and crops, image encoder, "
            "heads) plus ConceptFeatures.to_bytes; one warm-up round per personalizer, then "
            "alternating rounds.",
        ],
        "raw": times,
        "machine": ctx.machine,
    }
    return record(ctx.out, ctx.profile.name, ctx.device, NAME, section)


def main(argv: list[str] | None = None) -> None:
    run_main(parse_args, run, NAME, argv)


if __name__ == "__main__":
    main()
