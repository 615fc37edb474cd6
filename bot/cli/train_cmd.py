"""`avatarbot train instantbooth`: train InstantBooth's heads and adapters on a dataset.

Single process by default; for several GPUs run it under accelerate, e.g.
``accelerate launch --multi_gpu --num_processes 4 -m bot train instantbooth ...``.
Only the arguments live here; the trainer is research code (avatarbot_research, installed with
``pip install . ./research``). See docs/instantbooth.md for the dataset layout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.cli.research import INSTALL, research_command


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train a personalizer's encoders (InstantBooth)")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    ib = targets.add_parser(
        "instantbooth",
        help="train InstantBooth's concept/patch heads and gated adapters",
        description="Train InstantBooth on image-caption pairs (a folder with sidecar .txt "
        "captions and optional .mask.png subject masks, or a JSONL manifest). Research code: "
        f"needs the avatarbot-research package ({INSTALL}).",
    )
    ib.add_argument("--data", type=Path, required=True, help="dataset folder or JSONL manifest")
    ib.add_argument("--out", type=Path, required=True, help="output folder (weights/, ...)")
    ib.add_argument("--profile", choices=["tiny", "sd15"], default="sd15")
    ib.add_argument("--kind", choices=["person", "pet", "object"], default="person")
    ib.add_argument("--steps", type=int, default=1000, help="optimiser steps")
    ib.add_argument("--batch-size", type=int, default=4, help="per process and micro-batch")
    ib.add_argument("--lr-linear", type=float, default=1e-4, help="concept/patch heads")
    ib.add_argument("--lr-adapter", type=float, default=1e-4, help="gated adapters")
    ib.add_argument(
        "--train-image-encoder",
        action="store_true",
        help="fine-tune the CLIP image encoder too (the paper's recipe; saved with the weights)",
    )
    ib.add_argument("--lr-image-encoder", type=float, default=1e-5, help="with the above")
    ib.add_argument(
        "--concept-source",
        choices=["image_embeds", "patches"],
        default="image_embeds",
        help="the concept token from the global image embedding (the paper's) or from the "
        "pooled patch tokens through an MLP",
    )
    ib.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    ib.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    ib.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    ib.add_argument("--validate-every", type=int, default=0, help="steps (0: at the end)")
    ib.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps")
    ib.add_argument("--keep-checkpoints", type=int, default=3)
    ib.add_argument("--max-images", type=int, default=None, help="use only the first N")
    ib.add_argument("--resolution", type=int, default=None, help="default: 64 tiny, 512 sd15")
    ib.add_argument("--seed", type=int, default=0)
    ib.add_argument("--num-workers", type=int, default=2, help="data loader processes")
    ib.add_argument("--log-every", type=int, default=10)
    ib.add_argument("--base-model", default=None, help="override the sd15 base model")
    ib.add_argument("--image-encoder", default=None, help="override the CLIP image encoder")
    ib.add_argument("--init-weights", type=Path, default=None, help="start from these weights")
    ib.set_defaults(handler=research_command("train_cmd", "train"))
