"""The comparison's baseline stages (issue 27): each renders the held-out subjects with another
personalization method on the same toy base and saves the renders
(``bench.toyworld_plan.save_baseline``) under ``<workdir>/baselines/``, where the evaluation
stage finds them.

- ``ipadapter``: IP-Adapter trained on the same data and base as InstantBooth
  (bench.toyworld_ipadapter), then every evaluated held-out subject rendered through the engine.
- ``finetune``: the per-subject methods (bench.toyworld_finetune), Textual Inversion and
  DreamBooth-LoRA, on ``plan.finetune_subjects`` of them (minutes per subject).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.toyworld_plan import (
    BaselineInputs,
    Paths,
    Plan,
    baseline_saved,
    comparison_subjects,
    save_baseline,
)

IP_ADAPTER, TEXTUAL_INVERSION, DREAMBOOTH_LORA = (
    "ip-adapter",
    "textual-inversion",
    "dreambooth-lora",
)


def baseline_folder(paths: Paths, slug: str) -> Path:
    return paths.root / "baselines" / slug


def _inputs(plan: Plan, seed: int, subjects: list[int]) -> BaselineInputs:
    """The subjects with their reference photos (the very ones InstantBooth's evaluation
    encodes), the places and the seeds every method renders."""
    from avatarbot_research.toyworld import PLACES, reference_photos, subject

    refs = {
        sid: reference_photos(subject(sid), plan.references, plan.size, seed) for sid in subjects
    }
    return BaselineInputs(subjects, refs, list(PLACES), list(range(plan.eval_seeds)))


def _heldout(paths: Paths) -> dict[str, Any]:
    split: dict[str, Any] = json.loads(paths.split.read_text())
    return split


def ipadapter_done(paths: Paths) -> bool:
    return baseline_saved(baseline_folder(paths, IP_ADAPTER))


def finetune_done(paths: Paths) -> bool:
    return all(
        baseline_saved(baseline_folder(paths, slug))
        for slug in (TEXTUAL_INVERSION, DREAMBOOTH_LORA)
    )


def stage_ipadapter(plan: Plan, paths: Paths, seed: int) -> dict[str, Any]:
    from bench.toyworld_ipadapter import render_ipadapter
    from bench.toyworld_ipadapter import stage_ipadapter as train_ipadapter

    info = train_ipadapter(plan, paths, seed)
    subjects = _heldout(paths)["heldout"][: plan.eval_subjects]
    result = render_ipadapter(plan, paths, _inputs(plan, seed, subjects))
    save_baseline(result, baseline_folder(paths, IP_ADAPTER))
    return {**info, "renders": len(result.images)}


def stage_finetune(plan: Plan, paths: Paths, seed: int) -> dict[str, Any]:
    from bench.toyworld_finetune import dreambooth_lora, textual_inversion

    subjects = comparison_subjects(_heldout(paths), plan.finetune_subjects)
    inputs = _inputs(plan, seed, subjects)
    info: dict[str, Any] = {"subjects": subjects}
    for slug, method in (
        (TEXTUAL_INVERSION, textual_inversion),
        (DREAMBOOTH_LORA, dreambooth_lora),
    ):
        folder = baseline_folder(paths, slug)
        if baseline_saved(folder):
            continue  # resumable per method: each costs minutes
        result = method(plan, paths, inputs)
        save_baseline(result, folder)
        per = result.seconds_per_subject.values()
        info[f"{slug}_seconds_per_subject"] = round(sum(per) / max(1, len(per)), 1)
    return info
