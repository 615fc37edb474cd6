"""`avatarbot engine encode|render`: the engine alone, without Discord or a database.

    avatarbot engine encode a.jpg b.jpg --kind person --out me.features --profile tiny
    avatarbot engine render --features me.features --prompt "a photo of a person" \
        --seed 7 --count 2 --out renders/ --profile tiny
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Settings
from kinds import SUBJECT_KINDS, SubjectKind

if TYPE_CHECKING:
    from engine import DiffusionEngine


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("engine", help="encode photos and render with the engine alone")
    commands = parser.add_subparsers(dest="engine_command", metavar="ACTION", required=True)

    encode = commands.add_parser("encode", help="encode a concept's photos into features")
    encode.add_argument("photos", nargs="+", type=Path, metavar="PHOTO")
    encode.add_argument("--kind", choices=SUBJECT_KINDS, default=SubjectKind.PERSON)
    encode.add_argument("--out", type=Path, required=True, metavar="FEATURES")
    _common(encode)
    encode.set_defaults(handler=run_encode)

    render = commands.add_parser("render", help="render images from cached features")
    render.add_argument("--features", type=Path, metavar="FEATURES")
    render.add_argument("--prompt", required=True)
    render.add_argument("--negative-prompt", default="")
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--count", type=int, default=1)
    render.add_argument("--steps", type=int, help="default: the profile's")
    render.add_argument("--size", metavar="WxH", help="e.g. 512x512; default: the profile's")
    render.add_argument("--guidance", type=float)
    render.add_argument("--strength", type=float, default=0.7, help="identity strength 0..1")
    render.add_argument("--scheduler", default="dpmpp_2m")
    render.add_argument("--out", type=Path, required=True, metavar="DIR")
    _common(render)
    render.set_defaults(handler=run_render)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help="engine profile (default: from settings)")
    parser.add_argument("--personalizer", help="default: the profile's")
    parser.add_argument("--device", help="cuda, mps, cpu (default: from settings)")
    parser.add_argument("--offline", action="store_true", help="never download weights")


def _engine_settings(args: argparse.Namespace, settings: Settings) -> Any:
    updates: dict[str, Any] = {}
    if args.profile:
        updates["profile"] = args.profile
    if args.device:
        updates["device"] = args.device
    if args.offline:
        updates["offline"] = True
    return settings.engine.model_copy(update=updates)


def run_encode(args: argparse.Namespace, settings: Settings) -> int:
    from PIL import Image, ImageOps

    photos = []
    for path in args.photos:
        try:
            with Image.open(path) as image:
                photos.append(ImageOps.exif_transpose(image).convert("RGB"))
        except OSError as exc:
            print(f"avatarbot: cannot read {path}: {exc}", file=sys.stderr)
            return 1

    async def work(engine: DiffusionEngine) -> int:
        features = await engine.encode(photos, args.kind, args.personalizer)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(features.to_bytes())
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in features.tensors.items())
        print(f"{args.out}: {features.photo_count} photos, encoder {features.encoder_id}, {shapes}")
        return 0

    return _with_engine(args, settings, work)


def run_render(args: argparse.Namespace, settings: Settings) -> int:
    from engine import ConceptFeatures, EngineError, RenderRequest

    features = None
    if args.features:
        try:
            features = ConceptFeatures.from_bytes(args.features.read_bytes())
        except (OSError, EngineError) as exc:
            print(f"avatarbot: cannot use features {args.features}: {exc}", file=sys.stderr)
            return 1

    async def work(engine: DiffusionEngine) -> int:
        from tqdm import tqdm

        width = height = engine.native_size
        if args.size:
            width, height = (int(v) for v in args.size.lower().split("x", 1))
        request = RenderRequest(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            width=width,
            height=height,
            steps=args.steps or engine.default_steps,
            guidance=args.guidance if args.guidance is not None else engine.default_guidance,
            seed=args.seed,
            count=args.count,
            identity_strength=args.strength,
            scheduler=args.scheduler,
            personalizer=args.personalizer or engine.default_personalizer,
            features=features,
        )
        with tqdm(total=request.steps, unit="step", file=sys.stderr, desc="render") as bar:

            def progress(fraction: float) -> None:
                bar.update(round(fraction * request.steps) - bar.n)

            result = await engine.render(request, progress)
        args.out.mkdir(parents=True, exist_ok=True)
        for seed, image in zip(result.seeds, result.images, strict=True):
            path = args.out / f"seed-{seed}.png"
            image.save(path)
            print(path)
        if result.is_noise:
            print(
                f"note: profile {result.profile} runs random weights; these images are noise",
                file=sys.stderr,
            )
        return 0

    return _with_engine(args, settings, work)


def _with_engine(args: argparse.Namespace, settings: Settings, work: Any) -> int:
    from bot.cli import _check_weights_offline
    from engine import EngineError, UnknownPersonalizer, create_engine

    # This command's --profile/--offline flags apply: refuse missing weights before loading.
    status = _check_weights_offline(
        settings.model_copy(update={"engine": _engine_settings(args, settings)})
    )
    if status is not None:
        return status

    async def main() -> int:
        engine = await create_engine(_engine_settings(args, settings))
        try:
            return int(await work(engine))
        finally:
            await engine.aclose()

    try:
        return asyncio.run(main())
    except (EngineError, UnknownPersonalizer, ValueError) as exc:
        print(f"avatarbot: {exc}", file=sys.stderr)
        return 1
