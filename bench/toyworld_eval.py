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
import contextlib
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

    from bench.toyworld import Paths, Plan

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

    from engine.personalizers.instantbooth.dataset import Augment, subject_view

    still = Augment(scale=(1.0, 1.0), rotation=0.0, flip=0.0, jitter=0.0, keep_background=0.0)
    return subject_view(image, np.asarray(mask) > 127, random.Random(0), still)


def prompt_for(place: str) -> str:
    """The trainer's identifier convention: "toy" is an object, named "sks object"."""
    from engine.toyworld import PLACES

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


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


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
    from tqdm import tqdm

    from engine.config import EngineSettings
    from engine.engine import create_engine
    from engine.toyworld import PLACES, ToyIdentity, reference_shots, scene_class, subject
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


def scene_ceiling(
    metric: Any, paths: Paths, refs: dict[int, list[Image]], plan: Plan, seed: int
) -> dict[str, Any]:
    """Each held-out subject drawn by the world in every place (as many as the renders), then
    encoded and decoded by the base's VAE, scored like a render: what perfect personalization
    would score through this VAE."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image as PILImage

    from engine.toyworld import PLACES, Scene, render_scene, scene_class, subject

    vae: Any = AutoencoderKL.from_pretrained(paths.base, subfolder="vae").eval()
    scores: list[float] = []
    hits: list[float] = []
    for sid, photos in refs.items():
        rng = np.random.default_rng([seed, sid, 7])
        for place in PLACES:
            for _ in range(plan.eval_seeds):
                image, _mask = render_scene(subject(sid), Scene(place), plan.size, rng)
                x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
                with torch.no_grad():
                    y = vae.decode(vae.encode(x).latent_dist.mean).sample[0]
                pixels = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
                decoded = PILImage.fromarray(pixels, "RGB")
                value = metric.similarity(decoded, photos)
                if value is not None:
                    scores.append(value)
                hits.append(float(scene_class(decoded) == place))
    return {
        "arm": "the subject drawn in the place (VAE round trip)",
        "identity_mean": _mean(scores),
        "scene_accuracy": _mean(hits),
        "n": len(hits),
    }


FEATURE_TIMESTEPS = (100, 300, 500, 700, 900)


def feature_use(paths: Paths, weights: Path, samples: int, seed: int) -> list[dict[str, Any]]:
    """Does the trained model use its features? The diffusion loss on training samples (the
    trainer's own batches: subject crop + caption), per timestep, for the base model, with the
    concept token only, with the token and the adapters (β = 1, as trained), and with another
    sample's features (shuffled: what features of the wrong subject do). Only a gap between
    "full" and both "base" and "shuffled" says identity flows through the features."""
    import torch

    from bench.toyworld import frozen_base
    from engine.personalizers.instantbooth.adapters import AdapterState
    from engine.personalizers.instantbooth.dataset import InstantBoothDataset, Sample, collate
    from engine.personalizers.instantbooth.model import InstantBoothModel
    from engine.personalizers.instantbooth.prompts import (
        identifier_ids,
        identifier_positions,
        inject_concept,
        tokenize,
    )
    from engine.tiny import tiny_image_encoder

    frozen = frozen_base(paths.base)
    frozen.freeze("cpu", torch.float32)
    model = InstantBoothModel.from_pretrained(weights, tiny_image_encoder(0)).eval()
    encoder = model.backbone if model.backbone is not None else frozen.image_encoder
    index = weights.parent / "samples.jsonl"
    rows = [json.loads(line) for line in index.read_text().splitlines()][:samples]
    chosen = [Sample(Path(r["image"]), r["caption"], Path(r["mask"]), r["kind"]) for r in rows]
    dataset = InstantBoothDataset(chosen, model.config, paths_size(paths), seed=seed)
    batch = collate([dataset[i] for i in range(len(chosen))])
    n = len(chosen)
    shuffle = torch.roll(torch.arange(n), 1)  # every sample gets its neighbour's features
    hooks = model.install(frozen.unet)
    out = []
    try:
        with torch.no_grad():
            ids = tokenize(frozen.tokenizer, batch["prompt"])
            scale = frozen.vae.config.scaling_factor
            latents = frozen.vae.encode(batch["pixel_values"]).latent_dist.mean * scale
            text = frozen.text_encoder(ids)[0]
            image = encoder(pixel_values=batch["subject_pixels"])
            concepts, patches = (
                model.concept(image.image_embeds),
                model.patch(image.last_hidden_state),
            )
            where = identifier_positions(
                ids, identifier_ids(frozen.tokenizer, model.config.identifier)
            )
            own = inject_concept(text, where, concepts)
            other = inject_concept(text, where, concepts[shuffle])
            for t in FEATURE_TIMESTEPS:
                noise = torch.randn(
                    latents.shape, generator=torch.Generator().manual_seed(seed + t)
                )
                steps = torch.full((n,), t)
                noisy = frozen.noise_scheduler.add_noise(latents, noise, steps)
                losses = {}
                for arm, embeds, feats in (
                    ("base", text, None),
                    ("token", own, None),
                    ("full", own, patches),
                    ("shuffled", other, patches[shuffle]),
                ):
                    state = AdapterState.dense(feats, beta=1.0) if feats is not None else None
                    with hooks.active(state) if state is not None else contextlib.nullcontext():
                        pred = frozen.unet(noisy, steps, embeds).sample
                    losses[arm] = float(((pred - noise) ** 2).mean())
                out.append({"t": t, **losses})
    finally:
        hooks.remove()
    return out


def paths_size(paths: Paths) -> int:
    return int(json.loads(paths.split.read_text())["size"])


def reference_bounds(
    metric: Any, refs: dict[int, list[Image]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Upper bound: each reference against the subject's other references. Control: another
    held-out subject's references against this subject's."""
    ids = list(refs)
    upper: list[float] = []
    control: list[float] = []
    for i, sid in enumerate(ids):
        photos = refs[sid]
        for j, photo in enumerate(photos):
            others = photos[:j] + photos[j + 1 :]
            if others:
                value = metric.similarity(photo, others)
                if value is not None:
                    upper.append(value)
        if len(ids) > 1:
            other = refs[ids[(i + 1) % len(ids)]]
            for photo in other:
                value = metric.similarity(photo, photos)
                if value is not None:
                    control.append(value)
    return (
        {"arm": "references (own, leave-one-out)", "identity_mean": _mean(upper), "n": len(upper)},
        {"arm": "another subject's references", "identity_mean": _mean(control), "n": len(control)},
    )


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
    from engine.evaluation.report import SheetCell, contact_sheet
    from engine.toyworld import PLACES

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
    from bench.toyworld import snapshot_weights

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


# -- ablations: the training-side choices --------------------------------------------------------

ABLATION_STEM = "toyworld-ablations-cpu"


def ablation_arms() -> list[Arm]:
    return [
        Arm("InstantBooth α=0.4 β=0.3", "instantbooth", 0.4, 0.3),
        Arm("InstantBooth α=0.4 β=1.0", "instantbooth", 0.4, 1.0),
    ]


def _main_rows(out: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """The main run's figures for the same arms on seed 0 only (what the ablations render)."""
    document = json.loads((out / f"{STEM}.json").read_text())
    renders = [
        Render(r["arm"], r["subject"], r["place"], r["seed"], r["identity"], r["scene_ok"])
        for r in document["renders"]
        if r["seed"] == 0
    ]
    return {row["arm"]: row for row in summarise(renders, names)}


def write_ablations(
    plan: Plan,
    paths: Paths,
    out: Path,
    seed: int,
    trained: list[tuple[str, Plan, Path, dict[str, Any]]],
) -> dict[str, Any]:
    """The main recipe's weights at ``plan.ablation_steps`` (kept by the instantbooth stage)
    and each variant's, rendered like the main run but on seed 0 only (to keep the time), and
    the main run's own seed-0 figures; written as ``toyworld-ablations-cpu.{json,md}``."""
    from dataclasses import replace

    from bench.common import machine_info
    from bench.toyworld import snapshot_weights
    from engine.personalizers.instantbooth.model import InstantBoothModel
    from engine.tiny import tiny_image_encoder

    arms_list = ablation_arms()
    names = [a.name for a in arms_list]
    one_seed = replace(plan, eval_seeds=1)
    timings_path = paths.root / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    main_info = timings.get("instantbooth", {})

    def row(name: str, vplan: Plan, steps: int, info: dict[str, Any]) -> dict[str, Any]:
        return {
            "variant": name,
            "steps": steps,
            "lr_adapter": vplan.ib_lr_adapter,
            "image_encoder": "fine-tuned" if vplan.ib_train_encoder else "frozen",
            "gate_mean": info.get("gate_mean"),
            "loss_last": info.get("loss_last"),
            "train_seconds": info.get("seconds"),
        }

    runs = list(trained)
    snapshot = snapshot_weights(paths.instantbooth, plan.ablation_steps)
    if snapshot.is_dir():
        gates = InstantBoothModel.from_pretrained(snapshot, tiny_image_encoder(0)).gates()
        info = {"gate_mean": statistics.fmean(gates.values())}
        runs.insert(0, ("main recipe", plan, snapshot, info))
    rows: list[dict[str, Any]] = []
    for name, vplan, weights, info in runs:
        evaluation = asyncio.run(_evaluate(one_seed, paths, seed, weights.resolve(), arms_list))
        rows.append(
            {
                **row(name, vplan, plan.ablation_steps, info),
                "arms": summarise(evaluation["renders"], names),
            }
        )
    if (out / f"{STEM}.json").is_file():
        main = _main_rows(out, names)
        rows.append(
            {
                **row("main recipe (the main run)", plan, plan.ib_steps, main_info),
                "arms": [main.get(n) for n in names],
            }
        )
    document = {
        "benchmark": "toyworld-ablations",
        "machine": machine_info("cpu"),
        "plan": plan.to_json(),
        "variants": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{ABLATION_STEM}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    (out / f"{ABLATION_STEM}.md").write_text(ablations_markdown(document, names))
    return {"variants": len(trained), "results": str(out / f"{ABLATION_STEM}.json")}


def _gate(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.1e}"


def ablations_markdown(document: dict[str, Any], names: list[str]) -> str:
    plan = document["plan"]
    lines = [
        "# Toy world: InstantBooth's training choices (CPU)",
        "",
        "Generated by `python -m bench.toyworld` (stage `ablations`, issue 15): InstantBooth "
        "trained again with one choice changed, on the same base and data, rendered for "
        f"{plan['eval_subjects']} held-out subjects × 5 places, seed 0. Identity / scene "
        "accuracy per arm; `tanh(gate)` is the adapters' mean gate after training."
        + (" **Quick run: sizes shrunk, numbers meaningless.**" if plan["quick"] else ""),
        "",
        "| variant | steps | adapters' lr | image encoder | tanh(gate) | "
        + " | ".join(f"{n}: identity | scene" for n in names)
        + " |",
        "|---|---:|---:|---|---:|" + "---:|---:|" * len(names),
    ]
    for row in document["variants"]:
        cells = []
        for arm in row["arms"]:
            cells += ["–", "–"] if arm is None else [
                _fmt(arm["identity_mean"]), _fmt(arm["scene_accuracy"], True)
            ]  # fmt: skip
        lines.append(
            f"| {row['variant']} | {row['steps']} | {row['lr_adapter']:g} | "
            f"{row['image_encoder']} | {_gate(row['gate_mean'])} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"
