"""Issue 27's encoder-based baseline in the toy world: IP-Adapter (non-Plus), trained here the
same way as InstantBooth (same data and subject views, same frozen base, same frozen tiny CLIP
image encoder "tiny:0", a similar step budget) by avatarbot_research.ipadapter, and rendered
through the real engine's ``ip-adapter`` personalizer.

``stage_ipadapter`` trains into ``paths.root / "ipadapter"`` (skipped when its weights exist);
``render_ipadapter`` renders the held-out subjects as a ``BaselineResult``. The engine runs
the ``tiny`` profile (CPU, 64 px) with the base and the adapter replaced through
``EngineSettings`` (``base_model``, ``ip_adapter``), the way an operator points a profile at
local weights; no toy-world profile is needed.

Prompts are InstantBooth's arm's without the identifier: "a photo of a toy in a forest". That
is the base's own training caption for a toy in that place, and the adapter was trained on
exactly those captions; IP-Adapter carries identity through the image tokens, not a word.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.toyworld_plan import (
    BaselineInputs,
    BaselineResult,
    _summary,
    frozen_base,
    onednn,
    toy_request,
)

if TYPE_CHECKING:
    from bench.toyworld_plan import Paths, Plan
    from engine.config import EngineSettings

ARM = "IP-Adapter (trained here)"
PROFILE = "tiny"


def ipadapter_weights(paths: Paths) -> Path:
    """The adapter file ``stage_ipadapter`` writes (its folder also holds the image encoder)."""
    from avatarbot_research.ipadapter import WEIGHT_NAME

    return paths.root / "ipadapter" / "weights" / WEIGHT_NAME


@onednn(True)
def stage_ipadapter(plan: Plan, paths: Paths, seed: int) -> dict[str, Any]:
    """Train the adapter on the base (skipped when its weights exist)."""
    from avatarbot_research.ipadapter import IPAdapterOptions, train_ip_adapter

    weights = ipadapter_weights(paths)
    if weights.is_file():
        return {"skipped": True, "weights": str(weights)}
    options = IPAdapterOptions(
        data=paths.data,
        out=weights.parent,
        steps=plan.ip_steps,
        batch_size=plan.ip_batch,
        lr=plan.ip_lr,
        drop_rate=plan.ip_drop,
        resolution=plan.size,
        seed=seed,
    )
    result = train_ip_adapter(options, frozen_base(paths.base))
    return {
        **_summary(result.losses),
        "train_seconds": round(result.seconds, 1),
        "weights": str(result.weights),
    }


def prompt_for(place: str) -> str:
    from avatarbot_research.toyworld import PLACES

    return f"a photo of a toy {PLACES[place][0]}"


def arm_name(strength: float) -> str:
    return ARM if strength == 1.0 else f"{ARM}, scale {strength:g}"


def engine_settings(paths: Paths) -> EngineSettings:
    from engine.config import EngineSettings

    return EngineSettings(
        profile=PROFILE,
        base_model=str(paths.base.resolve()),
        ip_adapter=str(ipadapter_weights(paths).resolve()),
        device="cpu",
        dtype="float32",
        offline=True,
        max_batch=8,
        gather_window_ms=50,
    )


def render_ipadapter(
    plan: Plan, paths: Paths, inputs: BaselineInputs, strength: float = 1.0
) -> BaselineResult:
    """Every (subject, place, seed) rendered at one identity strength (the adapter's scale)."""
    return render_ipadapter_arms(plan, paths, inputs, (strength,))[0]


def render_ipadapter_arms(
    plan: Plan, paths: Paths, inputs: BaselineInputs, strengths: Sequence[float]
) -> list[BaselineResult]:
    """One arm per strength, all from one engine and one encoding per subject."""
    # The tiny profile pins torch to one thread, process-wide: give the caller its own back.
    threads = torch.get_num_threads()
    try:
        return asyncio.run(_render(plan, paths, inputs, strengths))
    finally:
        torch.set_num_threads(threads)


async def _render(
    plan: Plan, paths: Paths, inputs: BaselineInputs, strengths: Sequence[float]
) -> list[BaselineResult]:
    from engine.engine import create_engine

    engine = await create_engine(engine_settings(paths))
    images: dict[float, dict[tuple[int, str, int], Any]] = {s: {} for s in strengths}
    encode_seconds: dict[int, float] = {}
    started = time.monotonic()
    try:
        for sid in inputs.subjects:
            encode_started = time.monotonic()
            features = await engine.encode(inputs.references[sid], "object", "ip-adapter")
            encode_seconds[sid] = time.monotonic() - encode_started
            jobs = []
            for strength in strengths:
                for place in inputs.places:
                    for seed in inputs.seeds:
                        request = toy_request(
                            plan,
                            prompt_for(place),
                            seed,
                            "ip-adapter",
                            identity_strength=strength,
                            features=features,
                        )
                        key = (sid, place, seed)
                        jobs.append((strength, key, asyncio.ensure_future(engine.render(request))))
            for strength, key, job in jobs:
                images[strength][key] = (await job).images[0]
    finally:
        await engine.aclose()
    notes = {
        "prompt": "a photo of a toy <place phrase>",
        "profile": PROFILE,
        "weights": str(ipadapter_weights(paths)),
        "steps": plan.eval_steps,
        "guidance": plan.guidance,
        "render_seconds": round(time.monotonic() - started, 1),
    }
    return [
        BaselineResult(
            arm=arm_name(s),
            images=images[s],
            seconds_per_subject=dict(encode_seconds),
            notes={**notes, "identity_strength": s},
        )
        for s in strengths
    ]
