"""`avatarbot train instantbooth`: train InstantBooth's heads and adapters on a dataset.

Single process by default; for several GPUs run it under accelerate, e.g.
``accelerate launch --multi_gpu --num_processes 4 -m bot train instantbooth ...``.
See docs/instantbooth.md for the dataset layout and the paper's setup.
"""

from __future__ import annotations

import argparse
import logging
import sys

from bot.config import Settings

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from avatarbot_research.instantbooth.trainer import TrainOptions, train
    from engine.errors import EngineError

    if args.steps < 1 or args.batch_size < 1 or args.grad_accum < 1:
        print(
            "avatarbot: --steps, --batch-size and --grad-accum must be at least 1", file=sys.stderr
        )
        return 2
    options = TrainOptions(
        data=args.data,
        out=args.out,
        profile=args.profile,
        kind=args.kind,
        steps=args.steps,
        batch_size=args.batch_size,
        lr_linear=args.lr_linear,
        lr_adapter=args.lr_adapter,
        train_image_encoder=args.train_image_encoder,
        lr_image_encoder=args.lr_image_encoder,
        concept_source=args.concept_source,
        grad_accum=args.grad_accum,
        mixed_precision=args.mixed_precision,
        resume=args.resume,
        validate_every=args.validate_every,
        save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints,
        max_images=args.max_images,
        resolution=args.resolution,
        seed=args.seed,
        num_workers=args.num_workers,
        log_every=args.log_every,
        base_model=args.base_model or settings.engine.base_model,
        image_encoder=args.image_encoder,
        init_weights=args.init_weights,
        offline=settings.engine.offline,
        cache_dir=str(settings.engine.cache_dir) if settings.engine.cache_dir else None,
    )
    try:
        result = train(options)
    except (EngineError, FileNotFoundError, ValueError) as exc:
        print(f"avatarbot: training failed: {exc}", file=sys.stderr)
        return 1
    last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
    print(f"trained {result.step} steps (last loss {last}); weights: {result.weights}")
    print(f"use them with AVATARBOT_ENGINE__INSTANTBOOTH_WEIGHTS={result.weights}")
    return 0
