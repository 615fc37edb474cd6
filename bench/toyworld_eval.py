"""The toy world's evaluation stage: held-out subjects rendered through the real engine.

Arms (same prompts, same seeds): no personalization (the ``none`` personalizer), InstantBooth
at the paper's α/β, InstantBooth with β = 0 (concept token only), a small α/β sweep, and the
inference-side choices issue 15 asks about: one reference photo instead of several, the
references as masked subject crops (as the encoders see them in training) and the concept token
without α's renormalisation (as in training).
References: the subject's own photos scored against each other (leave one out: the upper
bound) and another held-out subject's photos scored against them (the control). A ceiling a
render can reach: the subject drawn by the world itself in each prompt's place, passed through
the base's VAE (the blur every render has). Identity is ``ToyIdentity``, text control is
``scene_accuracy`` (is the prompt's place drawn).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.toyworld_plan import _mean

if TYPE_CHECKING:
    from PIL.Image import Image

    from bench.toyworld_plan import Paths, Plan

logger = logging.getLogger(__name__)

PROFILE = "toyworld-instantbooth"
STEM = "toyworld-cpu"
SHEET_PLACES = 5  # places shown per arm on the contact sheet


# What the personalizer encodes: the uploaded-style photos, only the first of them, or the
# photos as masked subject crops on white (the view the encoders get in training).
PHOTOS, ONE_PHOTO, MASKED = "photos", "one photo", "masked crops"


@dataclass(frozen=True)
class Arm:
    name: str
    personalizer: str
    alpha: float | None = None
    beta: float | None = None
    references: str = PHOTOS
    raw_concept: bool = False  # the concept token as the head made it: no α renormalisation

    @property
    def extra(self) -> dict[str, float]:
        out = {}
        if self.alpha is not None:
            out["alpha"] = self.alpha
        if self.beta is not None:
            out["beta"] = self.beta
        if self.raw_concept:
            out["raw_concept"] = 1.0
        return out


def arms(sweep: bool) -> list[Arm]:
    ib = "instantbooth"
    out = [
        Arm("no personalization", "none"),
        Arm("InstantBooth α=0.4 β=0.3", ib, 0.4, 0.3),
        Arm("InstantBooth β=0 (token only)", ib, 0.4, 0.0),
    ]
    if sweep:
        out += [
            Arm("InstantBooth α=0.4 β=0.6", ib, 0.4, 0.6),
            Arm("InstantBooth α=0.4 β=1.0", ib, 0.4, 1.0),
            Arm("InstantBooth α=1.0 β=1.0", ib, 1.0, 1.0),
            Arm("InstantBooth β=1.0, one photo", ib, 0.4, 1.0, references=ONE_PHOTO),
            Arm("InstantBooth β=1.0, masked crops", ib, 0.4, 1.0, references=MASKED),
            Arm("InstantBooth β=1.0, raw token", ib, 0.4, 1.0, raw_concept=True),
        ]
    return out


def masked_crop(image: Image, mask: Image) -> Image:
    """The trainer's subject view without its random augmentation: the subject's box at its
    mean scale, background blanked to white."""
    import random

    import numpy as np
    from avatarbot_research.instantbooth.dataset import Augment, subject_view

    still = Augment(scale=(1.0, 1.0), rotation=0.0, flip=0.0, jitter=0.0, keep_background=0.0)
    return subject_view(image, np.asarray(mask) > 127, random.Random(0), still)


def prompt_for(place: str) -> str:
    """The trainer's identifier convention: "toy" is an object, named "sks object"."""
    from avatarbot_research.toyworld import PLACES

    return f"a photo of sks object {PLACES[place][0]}"


@dataclass
class Render:
    arm: str
    subject: int
    place: str
    seed: int
    identity: float | None
    scene_ok: bool
    image: Any = field(repr=False, default=None)


def summarise(renders: list[Render], names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        mine = [r for r in renders if r.arm == name]
        scored = [r.identity for r in mine if r.identity is not None]
        rows.append(
            {
                "arm": name,
                "renders": len(mine),
                "identity_mean": _mean(scored),
                "identity_median": statistics.median(scored) if scored else None,
                "subject_found_rate": len(scored) / len(mine) if mine else None,
                "scene_accuracy": _mean([float(r.scene_ok) for r in mine]),
            }
        )
    return rows


async def _evaluate(
    plan: Plan, paths: Paths, seed: int, weights: Path, all_arms: list[Arm]
) -> dict[str, Any]:
    from avatarbot_research.toyworld import (
        PLACES,
        ToyIdentity,
        reference_shots,
        scene_class,
        subject,
    )
    from tqdm import tqdm

    from engine.config import EngineSettings
    from engine.engine import create_engine
    from engine.types import ConceptFeatures, RenderRequest

    split = json.loads(paths.split.read_text())
    heldout: list[int] = split["heldout"][: plan.eval_subjects]
    settings = EngineSettings(
        profile=PROFILE,
        base_model=str(paths.base.resolve()),
        instantbooth_weights=str(weights),  # resolved by the callers
        device="cpu",
        dtype="float32",
        offline=True,
        max_batch=8,
        gather_window_ms=50,
    )
    metric = ToyIdentity()
    places = list(PLACES)
    shots = {
        sid: reference_shots(subject(sid), plan.references, plan.size, seed) for sid in heldout
    }
    refs = {sid: [image for image, _ in shots[sid]] for sid in heldout}
    views = {
        PHOTOS: refs,
        ONE_PHOTO: {sid: refs[sid][:1] for sid in heldout},
        MASKED: {sid: [masked_crop(i, m) for i, m in shots[sid]] for sid in heldout},
    }
    engine = await create_engine(settings)
    renders: list[Render] = []
    started = time.monotonic()
    total = len(heldout) * len(all_arms) * len(places) * plan.eval_seeds
    try:
        bar = tqdm(total=total, desc="eval", unit="image")
        with bar:
            for sid in heldout:
                features: dict[str, ConceptFeatures] = {}
                for view in {a.references for a in all_arms if a.personalizer != "none"}:
                    photos = views[view][sid]
                    features[view] = await engine.encode(photos, "object", "instantbooth")
                jobs = []
                for arm in all_arms:
                    for place in places:
                        request = RenderRequest(
                            prompt=prompt_for(place),
                            width=plan.size,
                            height=plan.size,
                            steps=plan.eval_steps,
                            guidance=plan.guidance,
                            seed=0,
                            count=plan.eval_seeds,
                            identity_strength=0.0 if arm.personalizer == "none" else 0.7,
                            personalizer=arm.personalizer,
                            features=features.get(arm.references)
                            if arm.personalizer != "none"
                            else None,
                            extra=arm.extra,
                        )
                        jobs.append((arm, place, asyncio.ensure_future(engine.render(request))))
                for arm, place, job in jobs:
                    result = await job
                    for s, image in zip(result.seeds, result.images, strict=True):
                        renders.append(
                            Render(
                                arm=arm.name,
                                subject=sid,
                                place=place,
                                seed=s,
                                # Always against the photos as uploaded, whatever was encoded.
                                identity=metric.similarity(image, refs[sid]),
                                scene_ok=scene_class(image) == place,
                                image=image,
                            )
                        )
                        bar.update(1)
    finally:
        await engine.aclose()
    render_seconds = time.monotonic() - started
    from bench.toyworld_diagnostics import reference_bounds, scene_ceiling

    upper, control = reference_bounds(metric, refs)
    ceiling = scene_ceiling(metric, paths, refs, plan, seed)
    return {
        "heldout": heldout,
        "arms": all_arms,
        "renders": renders,
        "references": refs,
        "upper": upper,
        "control": control,
        "ceiling": ceiling,
        "render_seconds": render_seconds,
        "images": len(renders),
    }


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.0f} %" if pct else f"{value:.3f}"


def markdown(document: dict[str, Any]) -> str:
    lines = [
        "# Toy world: InstantBooth on a base trained from scratch (CPU)",
        "",
        "Generated by `python -m bench.toyworld` (issue 15); numbers from "
        f"{len(document['heldout'])} held-out subject(s), "
        f"{document['plan']['eval_seeds']} seed(s) per prompt, "
        f"{document['plan']['eval_steps']} denoising steps, guidance "
        f"{document['plan']['guidance']}."
        + (
            " **Quick run: sizes shrunk, numbers meaningless.**"
            if document["plan"]["quick"]
            else ""
        ),
        "",
        "## Identity and text control",
        "",
        "| arm | renders | identity (mean) | identity (median) | subject found | scene accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in document["arms"]:
        lines.append(
            f"| {row['arm']} | {row['renders']} | {_fmt(row['identity_mean'])} | "
            f"{_fmt(row['identity_median'])} | {_fmt(row['subject_found_rate'], True)} | "
            f"{_fmt(row['scene_accuracy'], True)} |"
        )
    ceiling = document["ceiling"]
    lines.append(
        f"| {ceiling['arm']} | {ceiling['n']} | {_fmt(ceiling['identity_mean'])} | – | – | "
        f"{_fmt(ceiling['scene_accuracy'], True)} |"
    )
    for row in (document["upper_bound"], document["control"]):
        lines.append(f"| {row['arm']} | {row['n']} | {_fmt(row['identity_mean'])} | – | – | – |")
    lines += [
        "",
        "## Does the model use its features?",
        "",
        "Diffusion loss (MSE on ε) on training samples, the trainer's own inputs, per timestep: "
        "the base model, with the concept token only, with token + adapters (β = 1, as "
        "trained), and with another sample's token + patches (shuffled).",
        "",
        "| weights | t | base | token only | token + adapters | shuffled |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rows in document.get("feature_use", {}).items():
        for r in rows:
            lines.append(
                f"| {name} | {r['t']} | {r['base']:.4f} | {r['token']:.4f} | "
                f"{r['full']:.4f} | {r['shuffled']:.4f} |"
            )
    lines += ["", "## Stages", "", "| stage | seconds | notes |", "|---|---:|---|"]
    for stage, info in document["timings"].items():
        notes = ", ".join(
            f"{k}={_fmt(v) if isinstance(v, float) else v}"
            for k, v in info.items()
            if k != "seconds" and not isinstance(v, list | dict)
        )
        lines.append(f"| {stage} | {info.get('seconds', '–')} | {notes} |")
    lines += ["", f"Contact sheet: `{STEM}-sheet.png` (references | no personalization | "
              "InstantBooth at β = 0.3 | at β = 1.0, seed 0)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def sheet(evaluation: dict[str, Any], plan: Plan) -> Image:
    from avatarbot_research.evaluation.report import SheetCell, contact_sheet
    from avatarbot_research.toyworld import PLACES

    places = list(PLACES)[:SHEET_PLACES]
    names = {a.name for a in evaluation["arms"]}
    # No personalization, the paper's β and the strongest β of the sweep (when it ran).
    labels = {"no personalization": "none", "InstantBooth α=0.4 β=0.3": "IB beta 0.3",
              "InstantBooth α=0.4 β=1.0": "IB beta 1.0"}  # fmt: skip
    shown = [name for name in labels if name in names]
    columns = [f"reference {i + 1}" for i in range(plan.references)]
    columns += [f"{labels[a]}\n{p}" for a in shown for p in places]
    index = {(r.arm, r.subject, r.place, r.seed): r for r in evaluation["renders"]}
    rows = []
    for sid in evaluation["heldout"]:
        cells = [SheetCell(img, f"subject {sid}") for img in evaluation["references"][sid]]
        for arm in shown:
            for place in places:
                r = index.get((arm, sid, place, 0))
                caption = ""
                if r is not None:  # ASCII only: PIL's default font has no dashes or ticks
                    score = "n/a" if r.identity is None else f"{r.identity:.2f}"
                    caption = f"id {score} {'scene ok' if r.scene_ok else 'scene x'}"
                cells.append(SheetCell(None if r is None else r.image, caption))
        rows.append((f"subject {sid}", cells))
    return contact_sheet(rows, columns, cell=96)


def stage_eval(
    plan: Plan, paths: Paths, out: Path, seed: int, timings: dict[str, Any]
) -> dict[str, Any]:
    from bench.common import machine_info

    started = time.monotonic()
    evaluation = asyncio.run(
        _evaluate(plan, paths, seed, paths.weights.resolve(), arms(plan.sweep))
    )
    from bench.toyworld_diagnostics import feature_use
    from bench.toyworld_plan import snapshot_weights

    usage = {
        f"{plan.ib_steps} steps": feature_use(paths, paths.weights, plan.feature_samples, seed)
    }
    snapshot = snapshot_weights(paths.instantbooth, plan.ablation_steps)
    if snapshot.is_dir():
        usage[f"{plan.ablation_steps} steps"] = feature_use(
            paths, snapshot, plan.feature_samples, seed
        )
    names = [a.name for a in evaluation["arms"]]
    table = summarise(evaluation["renders"], names)
    per_subject = {
        str(sid): summarise([r for r in evaluation["renders"] if r.subject == sid], names)
        for sid in evaluation["heldout"]
    }
    out.mkdir(parents=True, exist_ok=True)
    seconds = round(time.monotonic() - started, 1)
    document = {
        "benchmark": "toyworld",
        "machine": machine_info("cpu"),
        "plan": plan.to_json(),
        "profile": PROFILE,
        "base": str(paths.base),
        "weights": str(paths.weights),
        "heldout": evaluation["heldout"],
        "arms_config": [
            {
                "arm": a.name,
                "personalizer": a.personalizer,
                "alpha": a.alpha,
                "beta": a.beta,
                "references": a.references,
                "raw_concept": a.raw_concept,
            }
            for a in evaluation["arms"]
        ],
        "arms": table,
        "upper_bound": evaluation["upper"],
        "control": evaluation["control"],
        "ceiling": evaluation["ceiling"],
        "feature_use": usage,
        "per_subject": per_subject,
        "renders": [
            {k: v for k, v in r.__dict__.items() if k != "image"} for r in evaluation["renders"]
        ],
        "timings": {**timings, "eval": {"seconds": seconds, "images": evaluation["images"]}},
    }
    (out / f"{STEM}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    (out / f"{STEM}.md").write_text(markdown(document))
    # A 256-colour palette keeps the committed sheet at a few hundred KB (renders are noisy
    # and compress badly as truecolour); it is for looking at, the metrics use the renders.
    from PIL import Image as PILImage

    palette = sheet(evaluation, plan).quantize(colors=256, dither=PILImage.Dither.NONE)
    palette.save(out / f"{STEM}-sheet.png", optimize=True)
    return {
        "images": evaluation["images"],
        "render_seconds": round(evaluation["render_seconds"], 1),
        "results": str(out / f"{STEM}.json"),
    }
