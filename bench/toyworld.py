"""Train the whole stack small on the synthetic toy world, then compare InstantBooth with the
other ways to personalise on it (issues 15 and 27).

    python -m bench.toyworld                     # the comparison table, under an hour on 2 cores
    python -m bench.toyworld --stages ablations  # then the training-choice ablations (3 seeds)
    python -m bench.toyworld --quick             # seconds: checks that it runs, not quality
    python -m bench.toyworld --stages eval       # one stage (earlier ones must have run)
    python -m bench.toyworld --stages eval --force --diagnostics  # plus the diagnostic arms

Stages, each skipped when its output exists (``--force`` redoes them), all seeded:

1. ``data``: training-split subjects written in the trainer's format (avatarbot_research.toyworld);
   held-out subjects have a shape or a colour pair that no training subject has
   (``unseen_split``) and are never written.
2. ``vae`` (bench.toyworld_base): a small AutoencoderKL (f = 4) trained on the images (MSE +
   small KL).
3. ``unet`` (bench.toyworld_base): a small text-to-image UNet and a tiny CLIP text encoder
   trained together with the DDPM epsilon objective (min-SNR weighted, EMA) on the VAE's
   latents; saved with the VAE, tokenizer and scheduler as a diffusers
   StableDiffusionPipeline folder: the base.
4. ``instantbooth``: our trainer (avatarbot_research.instantbooth.trainer) on that base.
5. ``ipadapter`` (bench.toyworld_baselines): IP-Adapter trained the same way on the same base,
   the held-out subjects rendered through the engine.
6. ``finetune`` (bench.toyworld_baselines): Textual Inversion and DreamBooth-LoRA trained per
   subject on a few held-out subjects.
7. ``eval`` (bench.toyworld_eval, bench.toyworld_identity, bench.toyworld_report): held-out
   subjects rendered through the real engine (profile ``toyworld-instantbooth`` over the
   trained base and weights), every method scored by render-level identity margins; results
   under ``--out``.
8. ``ablations`` (only when asked for): InstantBooth retrained with one training choice
   changed, from several seeds (bench.toyworld_ablations).

Long stages checkpoint every ``--save-every`` steps and resume from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS_DIR
from bench.toyworld_baselines import (
    finetune_done,
    ipadapter_done,
    stage_finetune,
    stage_ipadapter,
)
from bench.toyworld_plan import (
    QUICK,
    Paths,
    Plan,
    seed_everything,
    stage_data,
    stage_instantbooth,
)

logger = logging.getLogger(__name__)

STAGES = ("data", "vae", "unet", "instantbooth", "ipadapter", "finetune", "eval", "ablations")
# The comparison; the ablations take one more command.
DEFAULT_STAGES = STAGES[:-1]
DEFAULT_WORKDIR = Path(".toyworld")
TIMINGS = "timings.json"


# -- driver -----------------------------------------------------------------------------------


def stage_done(stage: str, paths: Paths, timings: dict[str, Any]) -> bool:
    """Training stages are done when their output exists; the evaluations when this workdir
    recorded them (the results folder already holds the committed results of earlier runs)."""
    return {
        "data": paths.split.is_file() and (paths.data / "world.jsonl").is_file(),
        "vae": (paths.vae / "final" / "config.json").is_file(),
        "unet": (paths.base / "model_index.json").is_file(),
        "instantbooth": (paths.weights / "config.json").is_file(),
        "ipadapter": ipadapter_done(paths),
        "finetune": finetune_done(paths),
        "eval": "eval" in timings,
        "ablations": "ablations" in timings,
    }[stage]


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else Plan()
    if args.diagnostics:
        plan = replace(plan, diagnostics=True)
    if args.eval_subjects is not None:
        plan = replace(plan, eval_subjects=args.eval_subjects)
    if args.ib_lr_adapter is not None:
        plan = replace(plan, ib_lr_adapter=args.ib_lr_adapter)
    if args.ib_train_encoder is not None:
        plan = replace(plan, ib_train_encoder=args.ib_train_encoder == "on")
    if args.ablation_steps is not None:
        plan = replace(plan, ablation_steps=args.ablation_steps)
    if args.ablation_seeds is not None:
        plan = replace(plan, ablation_seeds=args.ablation_seeds)
    paths = Paths(args.workdir)
    paths.root.mkdir(parents=True, exist_ok=True)
    out: Path = args.out
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"unknown stage(s) {unknown} (known: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    wanted: str | None = args.ablation_variants
    only = [v.strip() for v in wanted.split(",")] if wanted else None
    if "ablations" in stages:
        from bench.toyworld_ablations import chosen_variants

        try:  # before any stage runs: an operator's typo costs nothing
            chosen_variants(plan, only)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    timings_path = paths.root / TIMINGS
    timings: dict[str, Any] = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    if args.threads:
        torch.set_num_threads(args.threads)
    for stage in STAGES:
        if stage not in stages:
            continue
        if stage_done(stage, paths, timings) and not args.force:
            logger.info("stage %s: done already (--force redoes it)", stage)
            continue
        logger.info("stage %s", stage)
        seed_everything(args.seed)
        started = time.monotonic()
        if stage == "data":
            info = stage_data(plan, paths, args.seed)
        elif stage == "vae":
            from bench.toyworld_base import stage_vae

            if args.force:
                (paths.vae / "checkpoint.pt").unlink(missing_ok=True)
            info = stage_vae(plan, paths, args.seed)
        elif stage == "unet":
            from bench.toyworld_base import stage_unet

            if args.force:
                (paths.unet / "checkpoint.pt").unlink(missing_ok=True)
            info = stage_unet(plan, paths, args.seed)
        elif stage == "instantbooth":
            info = stage_instantbooth(plan, paths, args.seed, resume=not args.force)
        elif stage == "ipadapter":
            info = stage_ipadapter(plan, paths, args.seed)
        elif stage == "finetune":
            info = stage_finetune(plan, paths, args.seed)
        elif stage == "eval":
            from bench.toyworld_eval import stage_eval

            info = stage_eval(plan, paths, out, args.seed, timings)
        else:
            from bench.toyworld_ablations import stage_ablations

            tag = "" if args.ablation_steps is None else f"-{args.ablation_steps}"
            info = stage_ablations(plan, paths, out, args.seed, only=only, tag=tag)
        seconds = time.monotonic() - started
        # When and under what load: stages resumed across invocations ran on different days,
        # and the shared CPU's speed and load vary (docs/instantbooth.md).
        timings[stage] = {
            "seconds": round(seconds, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_1m": round(os.getloadavg()[0], 2),
            **info,
        }
        timings_path.write_text(json.dumps(timings, indent=2, default=str) + "\n")
        logger.info("stage %s took %.1f s", stage, seconds)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: runs in seconds")
    parser.add_argument(
        "--stages",
        default=",".join(DEFAULT_STAGES),
        help=f"comma-separated, of {', '.join(STAGES)} (default: all but ablations)",
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="artefacts")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--force", action="store_true", help="redo stages whose output exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help="eval also renders the α/β sweep and the inference-side diagnostics (5 more arms)",
    )
    parser.add_argument("--eval-subjects", type=int, default=None, help="held-out subjects")
    parser.add_argument(
        "--ib-lr-adapter", type=float, default=None, help="InstantBooth adapters' learning rate"
    )
    parser.add_argument(
        "--ib-train-encoder",
        choices=["on", "off"],
        default=None,
        help="fine-tune InstantBooth's image encoder (the ablations train the other way too)",
    )
    parser.add_argument(
        "--ablation-steps",
        type=int,
        default=None,
        help="the ablations' training budget (default: the plan's; another budget writes "
        "results of its own, toyworld-ablations-<steps>-cpu.*)",
    )
    parser.add_argument("--ablation-seeds", type=int, default=None, help="seeds per variant")
    parser.add_argument(
        "--ablation-variants", default=None, help="comma-separated variant slugs (default: all)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("diffusers", "transformers", "accelerate", "httpx", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
