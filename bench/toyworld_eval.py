"""The toy world's evaluation stage: held-out subjects rendered through the real engine.

Arms (same prompts, same seeds): no personalization (the ``none`` personalizer), InstantBooth
at the paper's α/β and at β = 1.0, and InstantBooth with β = 0 (concept token only). With
``--diagnostics`` also a small α/β sweep and the inference-side choices issue 15 asks about:
one reference photo instead of several, the references as masked subject crops (as the encoders
see them in training) and the concept token without α's renormalisation (as in training).
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

from bench.toyworld_plan import BaselineResult, _mean, toy_request

if TYPE_CHECKING:
    from PIL.Image import Image

    from bench.toyworld_identity import Margins
    from bench.toyworld_plan import Paths, Plan

logger = logging.getLogger(__name__)

PROFILE = "toyworld-instantbooth"
STEM = "toyworld-cpu"
DIAGNOSTICS_STEM = "toyworld-diagnostics-cpu"  # ``--diagnostics``: the table plus 5 arms
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


def arms(diagnostics: bool) -> list[Arm]:
    """The comparison table's arms; with ``diagnostics`` also the α/β sweep and the
    inference-side choices issue 15 asks about."""
    ib = "instantbooth"
    out = [
        Arm("no personalization", "none"),
        Arm("InstantBooth α=0.4 β=0.3", ib, 0.4, 0.3),
        Arm("InstantBooth α=0.4 β=1.0", ib, 0.4, 1.0),
        Arm("InstantBooth β=0 (token only)", ib, 0.4, 0.0),
    ]
    if diagnostics:
        out += [
            Arm("InstantBooth α=0.4 β=0.6", ib, 0.4, 0.6),
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
    from engine.types import ConceptFeatures

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
    encode_seconds: dict[int, float] = {}
    started = time.monotonic()
    total = len(heldout) * len(all_arms) * len(places) * plan.eval_seeds
    try:
        bar = tqdm(total=total, desc="eval", unit="image")
        with bar:
            for sid in heldout:
                features: dict[str, ConceptFeatures] = {}
                for view in {a.references for a in all_arms if a.personalizer != "none"}:
                    photos = views[view][sid]
                    begun = time.monotonic()
                    features[view] = await engine.encode(photos, "object", "instantbooth")
                    if view == PHOTOS:  # what a new subject costs: one encode of its photos
                        encode_seconds[sid] = time.monotonic() - begun
                jobs = []
                for arm in all_arms:
                    for place in places:
                        personal = arm.personalizer != "none"
                        request = toy_request(
                            plan,
                            prompt_for(place),
                            0,
                            arm.personalizer,
                            count=plan.eval_seeds,
                            identity_strength=0.7 if personal else 0.0,
                            features=features.get(arm.references) if personal else None,
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
        "encode_seconds": encode_seconds,
        "images": len(renders),
    }


def _scene_rate(images: list[Any], places: list[str]) -> float | None:
    from avatarbot_research.toyworld import scene_class

    hits = [scene_class(i) == p for i, p in zip(images, places, strict=True)]
    return _mean([float(h) for h in hits])


def comparison(
    evaluation: dict[str, Any],
    baselines: list[BaselineResult],
    groups: dict[int, str],
    plan: Plan,
    seed: int,
    fakes: list[Margins] | None = None,
) -> dict[str, Any]:
    """The paper's table in miniature: every method on the same held-out subjects (those every
    baseline rendered: the per-subject ones train on fewer), places and seeds, with the fakes as
    reference lines. Seconds per new subject: InstantBooth's encode of the photos, each
    baseline's own figure (training for the per-subject ones), none for no personalization."""
    from bench.toyworld_identity import fake_margins, margins, shots

    subjects = set(evaluation["heldout"])
    for b in baselines:
        subjects &= {sid for sid, _, _ in b.images}
    chosen = sorted(subjects)
    refs = {sid: evaluation["references"][sid] for sid in chosen}
    by_arm: dict[str, list[Render]] = {}
    for r in evaluation["renders"]:
        if r.subject in subjects:
            by_arm.setdefault(r.arm, []).append(r)
    encode = [evaluation["encode_seconds"][sid] for sid in chosen]
    rows: list[dict[str, Any]] = []

    def add(name: str, rendered: list[Any], seconds: float | None, kind: str) -> None:
        if len(chosen) < 2:
            return  # a margin needs another subject
        m = margins(name, rendered, refs, seed=seed, groups=groups)
        scene = _scene_rate([r.image for r in rendered], [r.place for r in rendered])
        facts = {"arm": name, "kind": kind, "seconds_per_subject": seconds}
        rows.append({**facts, "scene_accuracy": scene, "renders": len(rendered), **m.to_json()})

    add("no personalization", by_arm.get("no personalization", []), 0.0, "method")
    for b in baselines:
        per = [b.seconds_per_subject[sid] for sid in chosen if sid in b.seconds_per_subject]
        kept = [s for s in shots(b.images) if s.subject in subjects]
        add(b.arm, kept, _mean(per), "method")
    for name in COMPARED:
        if name in by_arm:
            add(name, by_arm[name], _mean(encode), "method")
    seeds = list(range(plan.eval_seeds))
    if len(chosen) >= 2:
        if chosen == sorted(evaluation["heldout"]) and fakes is not None:
            lines = fakes  # the same subjects: already measured
        else:
            lines = fake_margins(refs, seeds, size=plan.size, seed=seed, groups=groups)
        for fake in lines:
            rows.append({**fake.to_json(), "arm": f"fake: {fake.arm}", "kind": "reference line"})
    return {"subjects": chosen, "rows": rows}


# InstantBooth's arms shown in the comparison: the paper's β, the strongest and the token alone.
COMPARED = ("InstantBooth α=0.4 β=0.3", "InstantBooth α=0.4 β=1.0", "InstantBooth β=0 (token only)")


def baseline_folders(paths: Paths) -> list[Path]:
    """The saved baselines (``bench.toyworld_plan.save_baseline``) of this workdir."""
    from bench.toyworld_plan import baseline_saved

    root = paths.root / "baselines"
    return sorted(f for f in root.iterdir() if baseline_saved(f)) if root.is_dir() else []


def stage_eval(
    plan: Plan, paths: Paths, out: Path, seed: int, timings: dict[str, Any]
) -> dict[str, Any]:
    from bench.common import machine_info

    started = time.monotonic()
    evaluation = asyncio.run(
        _evaluate(plan, paths, seed, paths.weights.resolve(), arms(plan.diagnostics))
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
    from bench.toyworld_identity import fake_margins, margins
    from bench.toyworld_plan import load_baseline

    split = json.loads(paths.split.read_text())
    groups = {int(k): str(v) for k, v in split.get("groups", {}).items()}
    refs = evaluation["references"]
    identity = [
        margins(n, [r for r in evaluation["renders"] if r.arm == n], refs, seed=seed, groups=groups)
        for n in names
    ]
    seeds = list(range(plan.eval_seeds))
    fakes = fake_margins(refs, seeds, size=plan.size, seed=seed, groups=groups)
    identity += fakes
    baselines = [load_baseline(f) for f in baseline_folders(paths)]
    compared = comparison(evaluation, baselines, groups, plan, seed, fakes)
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
        "groups": {str(k): v for k, v in groups.items()},
        "unseen": {k: split.get(k) for k in ("unseen_shapes", "unseen_pairs")},
        "comparison": compared,
        "identity": [m.to_json() for m in identity],
        "seconds_per_subject": {
            "InstantBooth (encode)": evaluation["encode_seconds"],
            **{b.arm: b.seconds_per_subject for b in baselines},
        },
        "baselines": {b.arm: b.notes for b in baselines},
        "arms": table,
        "upper_bound": evaluation["upper"],
        "control": evaluation["control"],
        "ceiling": evaluation["ceiling"],
        "feature_use": usage,
        "per_subject": per_subject,
        "renders": [
            {k: v for k, v in r.__dict__.items() if k != "image"} for r in evaluation["renders"]
        ],
        # The default command's stages only: the ablations are a command of their own, with
        # their own results file.
        "timings": {
            **{stage: info for stage, info in timings.items() if stage != "ablations"},
            "eval": {"seconds": seconds, "images": evaluation["images"]},
        },
    }
    # With the diagnostic arms the results go to files of their own: the default command's
    # table and its timings stay what that command measured.
    stem = DIAGNOSTICS_STEM if plan.diagnostics else STEM
    (out / f"{stem}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    from bench.toyworld_report import markdown, sheet

    (out / f"{stem}.md").write_text(markdown(document))
    if not plan.diagnostics:  # the sheet shows the table's arms only: the same either way
        # A 256-colour palette keeps the committed sheet at a few hundred KB (renders are
        # noisy and compress badly as truecolour); it is for looking at, the metrics use the
        # renders.
        from PIL import Image as PILImage

        image = sheet(evaluation, baselines, plan)
        image.quantize(colors=256, dither=PILImage.Dither.NONE).save(
            out / f"{STEM}-sheet.png", optimize=True
        )
    return {
        "images": evaluation["images"],
        "render_seconds": round(evaluation["render_seconds"], 1),
        "results": str(out / f"{stem}.json"),
    }
