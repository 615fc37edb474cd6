"""The toy world's ablations (issue 15): InstantBooth retrained with one training choice
changed (the adapters' learning rate, a fine-tuned image encoder) and rendered beside the main
recipe; ``python -m bench.toyworld --stages ablations``."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.toyworld_eval import STEM, Arm, Render, _evaluate, _fmt, summarise
from bench.toyworld_plan import Paths, Plan, seed_everything, snapshot_weights, stage_instantbooth

# -- training -------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """InstantBooth trained once more with one training choice changed (issue 15's list)."""

    name: str
    slug: str
    lr_adapter: float | None = None
    train_encoder: bool | None = None


def variants(plan: Plan) -> list[Variant]:
    return [
        Variant("adapters at 1e-6 (the paper's rate)", "lr-adapter-1e-6", lr_adapter=1e-6),
        Variant("adapters at 1e-4 (the heads' rate)", "lr-adapter-1e-4", lr_adapter=1e-4),
        Variant(
            "image encoder frozen" if plan.ib_train_encoder else "image encoder fine-tuned",
            "encoder-frozen" if plan.ib_train_encoder else "encoder-trained",
            train_encoder=not plan.ib_train_encoder,
        ),
    ]


def stage_ablations(plan: Plan, paths: Paths, out: Path, seed: int) -> dict[str, Any]:
    trained = []
    for variant in variants(plan):
        folder = paths.root / "ablations" / variant.slug
        vplan = replace(
            plan,
            ib_steps=plan.ablation_steps,
            ib_lr_adapter=variant.lr_adapter
            if variant.lr_adapter is not None
            else plan.ib_lr_adapter,
            ib_train_encoder=(
                variant.train_encoder
                if variant.train_encoder is not None
                else plan.ib_train_encoder
            ),
        )
        seed_everything(seed)
        started = time.monotonic()
        info = stage_instantbooth(vplan, paths, seed, resume=True, out=folder)
        info["seconds"] = round(time.monotonic() - started, 1)
        trained.append((variant.name, vplan, folder / "weights", info))
    return write_ablations(plan, paths, out, seed, trained)


# -- rendering and reporting --------------------------------------------------------

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
    from bench.common import machine_info
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
