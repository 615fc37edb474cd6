"""The toy world's ablations (issues 15 and 27): InstantBooth retrained with one training
choice changed, each from ``plan.ablation_seeds`` training seeds at the same step budget
(``plan.ablation_steps``), rendered for the held-out subjects and scored by the render-level
identity margins (bench.toyworld_identity); ``python -m bench.toyworld --stages ablations``.

The adapters' learning rate is a sweep at that equal budget (with Adam a weight moves by at most
about the learning rate per step, so a rate too small for the budget leaves the gates shut
whatever it would do over the paper's 320k steps)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.toyworld_eval import Arm, _evaluate
from bench.toyworld_identity import Margins
from bench.toyworld_plan import Paths, Plan, seed_everything, snapshot_weights, stage_instantbooth
from bench.toyworld_report import _interval, _seconds

ABLATION_STEM = "toyworld-ablations-cpu"
BETA_1, TOKEN = "β=1.0", "β=0 (token only)"


@dataclass(frozen=True)
class Variant:
    """The main recipe with ``changes`` (fields of ``Plan``) applied."""

    name: str
    slug: str
    changes: dict[str, Any] = field(default_factory=dict)


def variants(plan: Plan) -> list[Variant]:
    """The main recipe, the adapters' learning-rate sweep around it, the concept token's other
    source, the other image-encoder choice."""
    out = [Variant("main recipe", "main")]
    for lr in plan.ablation_lr_sweep:
        if lr != plan.ib_lr_adapter:
            out.append(Variant(f"adapters at {lr:g}", f"lr-adapter-{lr:g}", {"ib_lr_adapter": lr}))
    other = "image_embeds" if plan.ib_concept_source == "patches" else "patches"
    out.append(
        Variant(f"concept token from {other}", f"concept-{other}", {"ib_concept_source": other})
    )
    encoder = not plan.ib_train_encoder
    out.append(
        Variant(
            "image encoder fine-tuned" if encoder else "image encoder frozen",
            "encoder-trained" if encoder else "encoder-frozen",
            {"ib_train_encoder": encoder},
        )
    )
    return out


def chosen_variants(plan: Plan, only: list[str] | None) -> list[Variant]:
    """Every variant, or those whose slugs ``only`` names; ValueError naming the known slugs
    for an unknown one."""
    every = variants(plan)
    if only is None:
        return every
    known = [v.slug for v in every]
    unknown = [slug for slug in only if slug not in known]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {unknown} (known: {', '.join(known)})")
    return [v for v in every if v.slug in only]


@dataclass(frozen=True)
class Run:
    """One training seed of a variant, scored."""

    seed: int
    train_seconds: float
    gate_mean: float
    arms: dict[str, Margins]


def ablation_arms() -> list[Arm]:
    return [
        Arm(BETA_1, "instantbooth", 0.4, 1.0),
        Arm(TOKEN, "instantbooth", 0.4, 0.0),
    ]


def ablation_stem(tag: str = "") -> str:
    """The results' file stem: ``toyworld-ablations-cpu`` at the plan's budget; another budget
    (``tag`` "-2500") writes files of its own, so a longer sweep never overwrites that one."""
    return ABLATION_STEM.replace("-cpu", f"{tag}-cpu")


def _weights(
    plan: Plan, paths: Paths, variant: Variant, seed: int, base_seed: int, tag: str
) -> Path:
    """The variant's weights for one training seed; the main recipe's first seed is the main
    run's own weights at the ablations' step count when they exist (its snapshot, or its final
    weights when the budgets are equal)."""
    snapshot = snapshot_weights(paths.instantbooth, plan.ablation_steps)
    if plan.ablation_steps == plan.ib_steps:
        snapshot = paths.weights
    if not variant.changes and seed == base_seed and snapshot.is_dir():
        return snapshot
    # Another budget trains in folders of its own: resuming the default budget's runs would
    # carry them on to the new step count and overwrite their weights.
    folder = paths.root / "ablations" / f"{variant.slug}{tag}-seed-{seed}"
    vplan = replace(plan, ib_steps=plan.ablation_steps, **variant.changes)
    seed_everything(seed)
    stage_instantbooth(vplan, paths, seed, resume=True, out=folder)
    return folder / "weights"


def stage_ablations(
    plan: Plan,
    paths: Paths,
    out: Path,
    seed: int,
    *,
    only: list[str] | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """Every variant (or those whose slugs ``only`` names), from ``plan.ablation_seeds`` seeds
    each; raises ValueError naming the known slugs for an unknown one. ``tag`` marks a budget
    other than the plan's (its training folders and results files)."""
    from bench.toyworld_identity import bootstrap_interval, margins
    from engine.personalizers.instantbooth.model import InstantBoothModel
    from engine.tiny import tiny_image_encoder

    one_seed = replace(plan, eval_seeds=1)
    split = json.loads(paths.split.read_text())
    groups = {int(k): str(v) for k, v in split.get("groups", {}).items()}
    rows = []
    for variant in chosen_variants(plan, only):
        runs = []
        for seed_i in range(seed, seed + plan.ablation_seeds):
            started = time.monotonic()
            weights = _weights(plan, paths, variant, seed_i, seed, tag)
            trained = round(time.monotonic() - started, 1)
            # Same subjects, places and render seed for every training seed: only training varies.
            evaluation = asyncio.run(
                _evaluate(one_seed, paths, seed, weights.resolve(), ablation_arms())
            )
            refs = evaluation["references"]
            gates = InstantBoothModel.from_pretrained(weights, tiny_image_encoder(0)).gates()
            arms = {}
            for arm in ablation_arms():
                mine = [r for r in evaluation["renders"] if r.arm == arm.name]
                arms[arm.name] = margins(arm.name, mine, refs, seed=seed, groups=groups)
            runs.append(Run(seed_i, trained, sum(gates.values()) / len(gates), arms))
        summary: dict[str, Any] = {}
        for arm in ablation_arms():
            summary[arm.name] = {}
            for component in ("overall", "colour", "pattern", "shape"):
                # Per subject: the mean over training seeds; the interval resamples subjects.
                per_subject: dict[int, list[float]] = {}
                for run in runs:
                    for s in run.arms[arm.name].subjects:
                        per_subject.setdefault(s.subject, []).append(s.margin(component))
                values = [sum(v) / len(v) for v in per_subject.values()]
                summary[arm.name][component] = {
                    **bootstrap_interval(values, seed).__dict__,
                    "per_seed": [run.arms[arm.name].margin[component].mean for run in runs],
                }
        rows.append(
            {
                "variant": variant.name,
                "changes": variant.changes,
                "steps": plan.ablation_steps,
                "seeds": [run.seed for run in runs],
                "gate_mean": [run.gate_mean for run in runs],
                "train_seconds": [run.train_seconds for run in runs],
                "arms": summary,
            }
        )
    from bench.common import machine_info

    document = {
        "benchmark": "toyworld-ablations",
        "machine": machine_info("cpu"),
        "plan": plan.to_json(),
        "stem": ablation_stem(tag),
        "variants": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = ablation_stem(tag)
    (out / f"{stem}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(ablations_markdown(document))
    return {"variants": len(rows), "results": f"{stem}.json"}


# Identity lives in pattern and shape as much as in colour (issue 27), so the adapters' arm shows
# every component; the token-only arm's overall margin says whether the token carries anything.
_SHOWN = [(BETA_1, c) for c in ("overall", "colour", "pattern", "shape")] + [(TOKEN, "overall")]


def _gate(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.4f}" if abs(mean) >= 1e-3 else f"{mean:.1e}"


def ablations_markdown(document: dict[str, Any]) -> str:
    plan = document["plan"]
    stem = document.get("stem", ABLATION_STEM)
    command = "python -m bench.toyworld --stages ablations" + (
        "" if stem == ABLATION_STEM else f" --ablation-steps {plan['ablation_steps']} ..."
    )
    lines = [
        "# Toy world: InstantBooth's training choices (CPU)",
        "",
        f"Generated by `{command}` (issues 15 and 27): "
        "InstantBooth trained again with one choice changed, on the same base and data, at the "
        f"same budget ({plan['ablation_steps']} steps), from {plan['ablation_seeds']} training "
        f"seeds each; rendered for {plan['eval_subjects']} held-out subjects × 5 places, render "
        "seed 0. Identity margin as in `toyworld-cpu.md` (own − other at render level); per "
        "subject the mean over training seeds, then the mean over subjects with a 95 % "
        "subject-bootstrap interval; the per-seed means show the spread between training runs. "
        "`tanh(gate)`: the adapters' mean gate after training (mean over seeds)."
        + (" **Quick run: sizes shrunk, numbers meaningless.**" if plan["quick"] else ""),
        "",
        "| variant | tanh(gate) | "
        + " | ".join(f"{arm}: {c} margin" for arm, c in _SHOWN)
        + f" | {BETA_1}: overall per seed | {TOKEN}: overall per seed |",
        "|---|---:|" + "---:|" * (len(_SHOWN) + 2),
    ]
    for row in document["variants"]:
        shown = [row["arms"][a][c] for a, c in _SHOWN]
        cells = [_interval(cell) for cell in shown]
        seeds = [
            ", ".join(f"{v:+.3f}" for v in row["arms"][a]["overall"]["per_seed"])
            for a in (BETA_1, TOKEN)
        ]
        lines.append(
            f"| {row['variant']} | {_gate(row['gate_mean'])} | " + " | ".join(cells + seeds) + " |"
        )
    trained = [t for r in document["variants"] for t in r["train_seconds"]]
    lines += [
        "",
        "Each run's margins and training time: "
        f"`{stem}.json` "
        f"(median {_seconds(_median(trained))} s per training run; a run "
        "kept from an earlier invocation counts only its loading time).",
    ]
    return "\n".join(lines) + "\n"


def _median(values: list[float]) -> float | None:
    import statistics

    return statistics.median(values) if values else None
