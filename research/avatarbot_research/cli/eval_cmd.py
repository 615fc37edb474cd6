"""`avatarbot eval`: compare personalizers and identity strengths on fixed seeds.

    avatarbot eval --photos refs/ --kind person --prompt "a portrait in a forest" \\
        --prompts prompts.txt --personalizer ip-adapter --strength 0.3 --strength 0.7 \\
        --strength 1.0 --seeds 4 --baseline --clip clip-vit-large-patch14/ --out eval/

The references come from a folder (through the bot's photo intake, as an avatar's photos
would) or from a stored avatar (``--avatar NAME --user ID``, read through the services). The
engine encodes them once per personalizer, renders every personalizer x strength x prompt x
seed (seeds 0..N-1; ``--baseline`` adds the prompts without personalization), scores each
render (avatarbot_research.evaluation) and writes results.json, results.md, contact_sheet.png
and the renders under ``--out``. Operator mistakes end as one line on stderr and exit status 2.
Its arguments are registered by bot/cli/eval_cmd.py (so ``--help`` works without this package).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Settings
from engine.errors import EngineError
from engine.types import MAX_SIDE, MAX_STEPS, MIN_SIDE

if TYPE_CHECKING:
    from PIL.Image import Image

    from avatarbot_research.evaluation import IdentityMetric
    from engine import DiffusionEngine
    from engine.config import EngineSettings

logger = logging.getLogger(__name__)

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".gif"})
MAX_SEEDS = 64


class Refused(Exception):
    """An operator mistake: the message is printed as one line and the command exits 2."""


@dataclass
class References:
    images: list[Image]
    names: list[str]
    source: str
    kind: str


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return _run(args, settings)
    except Refused as exc:
        print(f"avatarbot eval: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from avatarbot_research.evaluation import MetricUnavailable, load_identity_metric
    from bot.cli import _check_weights_offline

    _check_numbers(args)
    prompts = _prompts(args)
    size = _size(args.size)
    if args.clip is not None and not (args.clip / "config.json").is_file():
        raise Refused(f"--clip {args.clip}: not a CLIP model folder (no config.json)")
    if args.out.exists() and not args.out.is_dir():
        raise Refused(f"--out {args.out}: not a folder")
    engine_settings = _engine_settings(args, settings)
    _check_profile(engine_settings.profile, args.personalizer)
    references = _references(args, settings)
    metric_name = args.metric or ("face" if references.kind == "person" else "none")
    try:
        metric = load_identity_metric(metric_name)
    except MetricUnavailable as exc:
        raise Refused(str(exc)) from None
    faces = _check_reference_faces(metric, references)
    logger.info(
        "references: %d photo(s) from %s (%s)%s",
        len(references.images),
        references.source,
        references.kind,
        f"; a face in {sum(faces)}" if faces is not None else "",
    )
    status = _check_weights_offline(settings.model_copy(update={"engine": engine_settings}))
    if status is not None:
        return status
    args.out.mkdir(parents=True, exist_ok=True)
    run = _Evaluation(args, prompts, size, references, metric, faces)
    return asyncio.run(run.main(engine_settings))


def _engine_settings(args: argparse.Namespace, settings: Settings) -> EngineSettings:
    """The configured engine settings, with this command's --profile, --device and --offline."""
    updates: dict[str, object] = {}
    if args.profile:
        updates["profile"] = args.profile
    if args.device:
        updates["device"] = args.device
    if args.offline:
        updates["offline"] = True
    return settings.engine.model_copy(update=updates)


def _check_numbers(args: argparse.Namespace) -> None:
    problems = []
    if not 1 <= args.seeds <= MAX_SEEDS:
        problems.append(f"--seeds must be 1 to {MAX_SEEDS}")
    if any(not 0.0 <= s <= 1.0 for s in args.strength):
        problems.append("--strength must be 0 to 1")
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        problems.append(f"--steps must be 1 to {MAX_STEPS}")
    if args.guidance is not None and not 0.0 <= args.guidance <= 30.0:
        problems.append("--guidance must be 0 to 30")
    if args.avatar is not None and args.user is None:
        problems.append("--avatar needs --user (the avatar's owner)")
    if problems:
        raise Refused("; ".join(problems))


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = [p.strip() for p in args.prompt]
    if args.prompts is not None:
        try:
            text = args.prompts.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise Refused(f"cannot read --prompts {args.prompts}: {_reason(exc)}") from None
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if any(not p for p in prompts):
        raise Refused("--prompt must not be empty")
    if not prompts:
        raise Refused("no prompts: pass --prompt TEXT (repeatable) or --prompts FILE")
    return list(dict.fromkeys(prompts))


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise Refused(f"--size {text}: expected WxH or one side, e.g. 512x768 or 512")
    width, height = parts[0], parts[-1]
    if not all(MIN_SIDE <= side <= MAX_SIDE and side % 8 == 0 for side in (width, height)):
        raise Refused(f"--size {text}: each side must be a multiple of 8 in {MIN_SIDE}..{MAX_SIDE}")
    return width, height


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _references(args: argparse.Namespace, settings: Settings) -> References:
    if args.photos is not None:
        data, source = _folder_photos(args.photos, settings), str(args.photos)
        kind = args.kind or "person"
    else:
        stored_kind, data = asyncio.run(_avatar_photos(settings, args.user, args.avatar))
        source, kind = f"avatar {args.avatar!r} of user {args.user}", args.kind or stored_kind
    from PIL import Image as PILImage

    images = []
    for _, blob in data:
        with PILImage.open(io.BytesIO(blob)) as image:
            images.append(image.convert("RGB"))
    return References(images, [name for name, _ in data], source, kind)


def _folder_photos(folder: Path, settings: Settings) -> list[tuple[str, bytes]]:
    """The folder's photos through the bot's intake (upright, sRGB, bounded as stored photos
    are), by name; small ones are allowed (toy worlds, tests), the operator chose them."""
    from bot.errors import InvalidPhoto
    from bot.services.photo_intake import normalize_photo

    if not folder.is_dir():
        raise Refused(f"--photos {folder}: not a folder")
    try:
        paths = sorted(
            p
            for p in folder.iterdir()
            if p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        files = [(p.name, p.read_bytes()) for p in paths]
    except OSError as exc:
        raise Refused(f"cannot read {exc.filename or folder}: {_reason(exc)}") from None
    if not files:
        kinds = ", ".join(sorted(PHOTO_SUFFIXES))
        raise Refused(f"no photos in {folder} (looked for {kinds})")
    limits = settings.photos.model_copy(update={"min_side": 16})
    out = []
    for name, blob in files:
        try:
            out.append((name, normalize_photo(blob, name, limits).data))
        except InvalidPhoto as exc:
            raise Refused(f"photo {folder / name}: {exc.message}") from None
    return out


async def _avatar_photos(
    settings: Settings, user: int, name: str
) -> tuple[str, list[tuple[str, bytes]]]:
    from bot.cli.avatar_cmd import _services
    from bot.errors import AvatarbotError

    async with _services(settings, with_engine=False) as services:
        try:
            avatar = await services.avatars.get(user, name)
            photos = await services.avatars.photos(user, name)
        except AvatarbotError as exc:
            raise Refused(f"avatar {name!r} of user {user}: {exc.message}") from None
    if not photos:
        raise Refused(f"avatar {name!r} of user {user} has no photos")
    kind = str(getattr(avatar.kind, "value", avatar.kind))
    return kind, [(f"{avatar.name} photo {i + 1}", blob) for i, blob in enumerate(photos)]


def _check_reference_faces(metric: IdentityMetric | None, refs: References) -> list[bool] | None:
    from avatarbot_research.evaluation import FaceIdentity

    if not isinstance(metric, FaceIdentity):
        return None
    faces = metric.faces_found(refs.images)
    if not any(faces):
        raise Refused(
            f"no face found in any reference photo ({refs.source}); the face metric needs "
            "them (pass --metric none, or another --kind)"
        )
    return faces


def _check_profile(name: str, personalizers: list[str]) -> None:
    """The profile exists and has the personalizers asked for (before any model loads)."""
    from engine.profiles import get_profile, known_profiles

    try:
        available = get_profile(name).personalizer_names
    except EngineError:
        known = ", ".join(known_profiles())
        raise Refused(f"unknown engine profile {name!r}; known: {known}") from None
    unknown = [p for p in personalizers if p not in available]
    if unknown:
        raise Refused(
            f"personalizer {unknown[0]!r} is not in profile {name}; available: "
            + ", ".join(available)
        )


class _Evaluation:
    """One run once the inputs are read: the engine's part and the outputs."""

    def __init__(
        self,
        args: argparse.Namespace,
        prompts: list[str],
        size: tuple[int, int] | None,
        references: References,
        metric: IdentityMetric | None,
        faces: list[bool] | None,
    ) -> None:
        self.args = args
        self.prompts = prompts
        self.size = size
        self.references = references
        self.metric = metric
        self.faces = faces

    async def main(self, engine_settings: EngineSettings) -> int:
        from engine.engine import create_engine

        logger.info("loading engine profile %s", engine_settings.profile)
        engine = await create_engine(engine_settings)
        try:
            return await self.evaluate(engine)
        finally:
            await engine.aclose()

    async def evaluate(self, engine: DiffusionEngine) -> int:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        from avatarbot_research.evaluation import (
            Scorer,
            aggregate,
            evaluation_sheet,
            run_grid,
            write_outputs,
        )
        from avatarbot_research.evaluation.metrics import scene_classifier
        from avatarbot_research.evaluation.report import unscored_label

        plan = self.plan(engine)
        scorer = Scorer(
            self.references.images, self.metric, self.clip(engine), scene_classifier(self.metric)
        )
        out: Path = self.args.out
        logger.info(
            "rendering %d image(s): %d row(s) x %d prompt(s) x %d seed(s)",
            plan.total_images,
            len(plan.rows),
            len(plan.prompts),
            plan.seeds,
        )
        bar = tqdm(total=plan.total_images, unit="image", file=sys.stderr, desc="eval")
        with logging_redirect_tqdm(), bar:
            grid = await run_grid(engine, plan, scorer, out, on_image=lambda: bar.update(1))
        match = getattr(self.metric, "match_threshold", None)
        aggregates = aggregate(grid.records, plan.rows, match)
        logger.info("writing results to %s", out)
        meta = self.meta(engine, plan)
        captions = self.reference_captions()
        unscored = unscored_label(self.metric.name if self.metric is not None else None)
        sheet = evaluation_sheet(plan, self.references.images, captions, grid, unscored=unscored)
        paths = write_outputs(out, meta, grid, aggregates, sheet)
        _print_summary(aggregates, self.metric)
        for path in paths:
            print(path)
        if engine.is_noise:
            print(
                f"note: profile {engine.profile.name} runs random weights; its renders are "
                "noise and these scores mean nothing",
                file=sys.stderr,
            )
        return 0

    def plan(self, engine: DiffusionEngine) -> Any:
        from avatarbot_research.evaluation import BASELINE, EvalPlan
        from engine import ConceptKind

        wanted = list(dict.fromkeys(self.args.personalizer)) or [engine.default_personalizer]
        baseline = self.args.baseline or BASELINE in wanted
        if baseline and BASELINE not in engine.personalizers:
            logger.warning(
                "profile %s has no %r personalizer: no baseline", engine.profile.name, BASELINE
            )
            baseline = False
        limit = engine.max_prompt_tokens
        for prompt in self.prompts:
            used = engine.count_tokens(prompt)
            if used > limit:
                short = prompt if len(prompt) <= 40 else prompt[:39] + "…"
                raise Refused(f"prompt too long: {used} tokens, the limit is {limit}: {short!r}")
        width, height = self.size or (engine.native_size, engine.native_size)
        multiple = engine.size_multiple
        if width % multiple or height % multiple:
            raise Refused(f"--size {width}x{height}: sides must be multiples of {multiple} here")
        return EvalPlan(
            prompts=tuple(self.prompts),
            personalizers=tuple(name for name in wanted if name != BASELINE),
            strengths=tuple(dict.fromkeys(self.args.strength)) or (0.7,),
            seeds=self.args.seeds,
            kind=ConceptKind(self.references.kind),
            width=width,
            height=height,
            steps=self.args.steps or engine.default_steps,
            guidance=(
                self.args.guidance if self.args.guidance is not None else engine.default_guidance
            ),
            baseline=baseline,
            negative_prompt=self.args.negative_prompt,
        )

    def clip(self, engine: DiffusionEngine) -> Any:
        from avatarbot_research.evaluation import ClipScorer, MetricUnavailable

        if self.args.clip is None:
            return None
        logger.info("loading CLIP from %s", self.args.clip)
        try:
            return ClipScorer.load(self.args.clip, engine.device)
        except MetricUnavailable as exc:
            raise Refused(str(exc)) from None

    def reference_captions(self) -> list[str]:
        if self.faces is None:
            return list(self.references.names)
        return [
            f"{name} · {'face' if found else 'no face'}"
            for name, found in zip(self.references.names, self.faces, strict=True)
        ]

    def meta(self, engine: DiffusionEngine, plan: Any) -> dict[str, Any]:
        faces: list[bool | None] = [None] * len(self.references.names)
        if self.faces is not None:
            faces = list(self.faces)
        return {
            "profile": engine.profile.name,
            "is_noise": engine.is_noise,
            "kind": self.references.kind,
            "source": self.references.source,
            "references": [
                {"name": name, "face": face}
                for name, face in zip(self.references.names, faces, strict=True)
            ],
            "metric": self.metric.name if self.metric is not None else None,
            "metric_definition": getattr(self.metric, "description", None),
            "match_threshold": getattr(self.metric, "match_threshold", None),
            "clip": str(self.args.clip) if self.args.clip is not None else None,
            "settings": {
                "prompts": list(plan.prompts),
                "personalizers": list(plan.personalizers),
                "strengths": list(plan.strengths),
                "baseline": plan.baseline,
                "seeds": plan.seeds,
                "width": plan.width,
                "height": plan.height,
                "steps": plan.steps,
                "guidance": plan.guidance,
                "negative_prompt": plan.negative_prompt,
            },
        }


def _print_summary(aggregates: list[dict[str, Any]], metric: IdentityMetric | None) -> None:
    found = "face" if metric is not None and metric.name == "face" else "found"
    print(f"{'row':<24} {'renders':>7} {'identity':>8} {found:>6} {'clip-t':>7} {'clip-i':>7}")
    for a in aggregates:
        label = "baseline" if a["baseline"] else f"{a['personalizer']} {a['strength']:g}"
        print(
            f"{label:<24} {a['renders']:>7} {_fmt(a['identity_mean']):>8} "
            f"{_fmt(a['found_rate'], '.0%'):>6} {_fmt(a['clip_text_mean']):>7} "
            f"{_fmt(a['clip_image_mean']):>7}"
        )


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)
