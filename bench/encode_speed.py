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
import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BenchContext,
    base_parser,
    headline,
    headline_text,
    prepare_context,
    record,
    setup_logging,
    summary,
    synchronize,
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
        photos = ctx.photos
        repeats = args.repeats or (10 if device != "cpu" else 5)
        times: dict[str, list[float]] = {name: [] for name in PERSONALIZERS}
        facts: dict[str, dict[str, Any]] = {}
        # A warm-up round (allocator, kernels, lazy imports), then alternating timed rounds.
        for round_ in range(repeats + 1):
            for name in PERSONALIZERS:
                synchronize(device)
                start = time.perf_counter()
                features = await engine.encode(photos, ConceptKind.PERSON, personalizer=name)
                blob = features.to_bytes()  # tensors are on the CPU: the device is done
                seconds = time.perf_counter() - start
                if round_ == 0:
                    facts[name] = {
                        "encoder_id": features.encoder_id,
                        "feature_bytes": len(blob),
                        "tensors": {k: list(v.shape) for k, v in features.tensors.items()},
                    }
                else:
                    times[name].append(seconds)
        return {
            "times": {name: summary(values) for name, values in times.items()},
            "facts": facts,
            "repeats": repeats,
            "face_detector": engine.model.detector is not None,
        }
    finally:
        await engine.aclose()


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    setup_logging(args.verbose)
    ctx = prepare_context(args)
    measured = asyncio.run(measure(args, ctx))
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
    path = record(ctx.out, ctx.profile.name, ctx.device, NAME, section)
    print(headline_text(path, NAME))
    return path


if __name__ == "__main__":
    main()
