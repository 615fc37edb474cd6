"""The toy world's per-subject fine-tuning baselines (bench.toyworld_finetune) on the quick
base: what they return, that a seed fixes their renders and that the base stays as it was.
Quality is never asserted (the quick base learns nothing)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bench import toyworld, toyworld_finetune
from bench.toyworld_plan import QUICK, BaselineInputs, BaselineResult, Paths, Plan

Baseline = Callable[[Plan, Paths, BaselineInputs], BaselineResult]
PLACES = ["beach", "snow"]
SEEDS = [0, 3]


@pytest.fixture(scope="module")
def quick_base(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    work = tmp_path_factory.mktemp("toyworld") / "work"
    argv = ["--quick", "--workdir", str(work), "--threads", "1", "--stages", "data,vae,unet"]
    threads = torch.get_num_threads()
    try:
        assert toyworld.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return Paths(work)


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _run(baseline: Baseline, paths: Paths, plan: Plan = QUICK) -> BaselineResult:
    from avatarbot_research.toyworld import reference_photos, subject

    subjects = json.loads(paths.split.read_text())["heldout"][: plan.finetune_subjects]
    references = {
        sid: reference_photos(subject(sid), plan.references, plan.size) for sid in subjects
    }
    return baseline(plan, paths, BaselineInputs(subjects, references, PLACES, SEEDS))


@pytest.mark.parametrize(
    ("baseline", "arm"),
    [
        (toyworld_finetune.textual_inversion, toyworld_finetune.TI_ARM),
        (toyworld_finetune.dreambooth_lora, toyworld_finetune.LORA_ARM),
    ],
)
def test_baseline_renders_every_subject_place_and_seed_and_leaves_the_base_alone(
    quick_base: Paths, baseline: Baseline, arm: str
) -> None:
    before = _fingerprint(quick_base.base)
    first = _run(baseline, quick_base)
    again = _run(baseline, quick_base)
    assert _fingerprint(quick_base.base) == before
    subjects = json.loads(quick_base.split.read_text())["heldout"][: QUICK.finetune_subjects]
    assert first.arm == arm
    assert set(first.images) == {(s, p, seed) for s in subjects for p in PLACES for seed in SEEDS}
    assert all(image.size == (QUICK.size, QUICK.size) for image in first.images.values())
    assert set(first.seconds_per_subject) == set(subjects)
    assert all(seconds > 0 for seconds in first.seconds_per_subject.values())
    assert set(first.notes["loss"]) == {str(s) for s in subjects}
    for key, image in first.images.items():  # a seed fixes the training and the render
        assert image.tobytes() == again.images[key].tobytes()
    # Seeds are per image: the two seeds of one prompt differ.
    sid = subjects[0]
    assert first.images[(sid, "beach", 0)].tobytes() != first.images[(sid, "beach", 3)].tobytes()


def test_textual_inversion_learns_only_the_new_token(quick_base: Paths) -> None:
    from avatarbot_research.toyworld import reference_photos, subject

    components = toyworld_finetune.load_base(quick_base.base)
    start = components["text_encoder"].get_input_embeddings().weight.detach().clone()
    photos = reference_photos(subject(0), 2, QUICK.size)
    losses = toyworld_finetune.train_textual_inversion(
        components, photos, steps=2, learning_rate=1e-2, resolution=QUICK.size, seed=0
    )
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    tokenizer = components["tokenizer"]
    new_id = tokenizer.convert_tokens_to_ids(toyworld_finetune.PLACEHOLDER)
    (init_id,) = tokenizer.encode(toyworld_finetune.INITIALIZER, add_special_tokens=False)
    after = components["text_encoder"].get_input_embeddings().weight
    assert after.shape[0] == start.shape[0] + 1
    assert torch.equal(after[: start.shape[0]], start)
    assert not torch.equal(after[new_id], start[init_id])  # it moved from "toy"
    prompt = toyworld_finetune.place_prompt(toyworld_finetune.PLACEHOLDER, "beach")
    assert new_id in tokenizer(prompt).input_ids


def test_the_tiny_tokenizer_keeps_the_identifier_whole(quick_base: Paths) -> None:
    assert toyworld_finetune.identifier_tokens(quick_base.base) == ["sks</w>"]


class _Stop(Exception):
    pass


def test_trainings_run_with_onednn_after_the_engine_turned_it_off(
    quick_base: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine turns oneDNN off for the whole process when it loads; a fine-tune trained
    later in the same process must not be timed on the slower kernels, and its renders run as
    the engine's do. Both settings are put back afterwards."""
    from avatarbot_research.instantbooth import trainer

    from bench import toyworld_plan

    seen: dict[str, bool] = {}

    def personalise(components: object, refs: object, sid: int) -> tuple[str, list[float]]:
        seen["train"] = bool(torch.backends.mkldnn.enabled)
        return "toy", [0.0]

    def render(*args: object) -> dict[tuple[str, int], object]:
        seen["render"] = bool(torch.backends.mkldnn.enabled)
        return {}

    def train(*args: object, **kwargs: object) -> None:
        seen["instantbooth"] = bool(torch.backends.mkldnn.enabled)
        raise _Stop

    monkeypatch.setattr(toyworld_finetune, "render", render)
    monkeypatch.setattr(trainer, "train", train)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    subjects = json.loads(quick_base.split.read_text())["heldout"][:1]
    inputs = BaselineInputs(subjects, {subjects[0]: []}, PLACES, SEEDS)
    toyworld_finetune._per_subject("arm", QUICK, quick_base, inputs, personalise, {})
    with pytest.raises(_Stop):
        toyworld_plan.stage_instantbooth(
            QUICK, quick_base, 0, resume=True, out=quick_base.root / "probe"
        )

    assert seen == {"train": True, "render": False, "instantbooth": True}
    assert torch.backends.mkldnn.enabled is False
