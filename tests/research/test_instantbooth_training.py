"""Training InstantBooth on tiny models and a tiny synthetic dataset, and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from avatarbot_research.instantbooth.trainer import TrainOptions, train
from safetensors.torch import load_file

from bot.cli import main
from engine.personalizers.instantbooth.frozen import load_frozen
from engine.personalizers.instantbooth.model import InstantBoothModel
from tests.research.test_instantbooth_dataset import make_shapes_dataset


def test_training_lowers_the_loss_and_changes_only_trainable_parts(tmp_path: Path) -> None:
    frozen = load_frozen("tiny")
    before = {
        f"{name}.{key}": value.clone()
        for name, module in frozen.modules().items()
        for key, value in module.state_dict().items()
    }
    torch.manual_seed(1)
    initial = InstantBoothModel.for_unet(frozen.unet, frozen.image_encoder)
    initial.save_pretrained(tmp_path / "init")
    options = TrainOptions(
        data=make_shapes_dataset(tmp_path / "data", count=8),
        out=tmp_path / "out",
        kind="object",
        steps=30,
        batch_size=2,
        resolution=32,
        lr_linear=1e-2,
        lr_adapter=1e-2,
        save_every=0,
        validation_samples=1,
        init_weights=tmp_path / "init",
    )
    result = train(options, frozen=frozen)

    assert result.step == 30 and len(result.losses) == 30
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first * 0.97, (first, last)
    logged = [json.loads(line) for line in (tmp_path / "out/loss.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == list(range(1, 31))
    assert [row["loss"] for row in logged] == pytest.approx(result.losses)

    # The frozen models are bit-identical and still frozen.
    for name, module in frozen.modules().items():
        assert not any(p.requires_grad for p in module.parameters()), name
        for key, value in module.state_dict().items():
            assert torch.equal(value, before[f"{name}.{key}"]), f"{name}.{key} changed"
    # Every trainable tensor moved: heads, adapters and their gates.
    trained = load_file(str(result.weights / "instantbooth.safetensors"))
    start = initial.state_dict()
    assert trained.keys() == start.keys()
    unchanged = [k for k in trained if torch.equal(trained[k], start[k])]
    assert not unchanged
    assert InstantBoothModel.from_pretrained(result.weights).encoder_id != initial.encoder_id
    assert result.validation_images and result.validation_images[0].is_file()


def test_fine_tuned_image_encoder_trains_saves_and_loads(tmp_path: Path) -> None:
    from avatarbot_research.instantbooth.validation import validation_pipeline

    from engine.personalizers import personalizer_factory
    from engine.tiny import tiny_image_encoder
    from tests.engine.test_instantbooth_personalizer import _context

    frozen = load_frozen("tiny")
    options = TrainOptions(
        data=make_shapes_dataset(tmp_path / "data", count=4),
        out=tmp_path / "out",
        kind="object",
        steps=3,
        batch_size=2,
        resolution=32,
        lr_image_encoder=1e-3,
        train_image_encoder=True,
        save_every=0,
        validation_samples=0,
    )
    result = train(options, frozen=frozen)
    saved = load_file(str(result.weights / "instantbooth.safetensors"))
    backbone = {
        k.removeprefix("backbone."): v for k, v in saved.items() if k.startswith("backbone.")
    }
    start = tiny_image_encoder(0).state_dict()
    assert backbone.keys() == start.keys()
    assert any(not torch.equal(v, start[k]) for k, v in backbone.items())
    # The personalizer loads the fine-tuned encoder over the architecture the config names
    # and encodes with it, not with the random one.
    ctx = _context(validation_pipeline(load_frozen("tiny")), weights=str(result.weights))
    booth = personalizer_factory("instantbooth")(ctx)
    assert booth.model.backbone is booth.image_encoder  # type: ignore[attr-defined]
    loaded = booth.image_encoder.state_dict()  # type: ignore[attr-defined]
    assert all(torch.equal(loaded[k], v) for k, v in backbone.items())
    assert (
        booth.encoder_id
        == InstantBoothModel.from_pretrained(result.weights, tiny_image_encoder(0)).encoder_id
    )


def test_patch_concept_head_trains_saves_and_loads(tmp_path: Path) -> None:
    from engine.personalizers.instantbooth.encoders import ConceptMLP
    from engine.tiny import tiny_image_encoder

    frozen = load_frozen("tiny")
    options = TrainOptions(
        data=make_shapes_dataset(tmp_path / "data", count=4),
        out=tmp_path / "out",
        kind="object",
        steps=1,
        batch_size=2,
        resolution=32,
        concept_source="patches",
        save_every=0,
        validation_samples=0,
    )
    result = train(options, frozen=frozen)
    loaded = InstantBoothModel.from_pretrained(result.weights, tiny_image_encoder(0))
    assert loaded.config.concept_source == "patches"
    assert isinstance(loaded.concept, ConceptMLP)
    saved = load_file(str(result.weights / "instantbooth.safetensors"))
    torch.manual_seed(0)
    fresh = InstantBoothModel.for_unet(frozen.unet, frozen.image_encoder, concept_source="patches")
    concept = [k for k in saved if k.startswith("concept.")]
    assert concept and all(not torch.equal(saved[k], fresh.state_dict()[k]) for k in concept)


def _cli(data: Path, out: Path, steps: int, *extra: str) -> int:
    return main(
        [
            "train", "instantbooth", "--profile", "tiny", "--kind", "object",
            "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--batch-size", "2", "--resolution", "16", "--lr-adapter", "1e-3",
            "--save-every", "3", "--num-workers", "0", "--grad-accum", "2", *extra,
        ]
    )  # fmt: skip


def test_cli_trains_checkpoints_and_resumes_exactly(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", count=6)
    assert _cli(data, tmp_path / "a", 3) == 0
    assert (tmp_path / "a/checkpoints/step-3/trainer_state.json").is_file()
    assert (tmp_path / "a/weights/config.json").is_file()
    assert (tmp_path / "a/validation/step-3-0.png").is_file()
    assert _cli(data, tmp_path / "a", 5, "--resume") == 0
    steps = [json.loads(x)["step"] for x in (tmp_path / "a/loss.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # resumed at 4, not restarted
    assert (tmp_path / "a/checkpoints/step-5").is_dir()
    # Resuming gives the same weights as training straight through (RNG, optimiser and data
    # order all restored).
    assert _cli(data, tmp_path / "b", 5) == 0
    resumed = load_file(str(tmp_path / "a/weights/instantbooth.safetensors"))
    straight = load_file(str(tmp_path / "b/weights/instantbooth.safetensors"))
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key


def test_cli_reports_a_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(tmp_path / "nothing", tmp_path / "out", 1) == 1
    assert "training data not found" in capsys.readouterr().err


def test_cli_concept_source_reaches_the_weights(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", count=2)
    assert _cli(data, tmp_path / "out", 1, "--concept-source", "patches") == 0
    config = json.loads((tmp_path / "out/weights/config.json").read_text())
    assert config["concept_source"] == "patches"


def test_resume_reindexes_a_moved_dataset(tmp_path: Path) -> None:
    """The cached index names images by path: after the data folder moved, resuming indexes
    the folder it is given again instead of failing on the first missing image."""
    from avatarbot_research.instantbooth.trainer import prepare_samples

    data = make_shapes_dataset(tmp_path / "old", count=4)
    options = TrainOptions(data=data, out=tmp_path / "out", kind="object", resume=True)
    first = prepare_samples(options)
    moved = data.rename(tmp_path / "new")

    again = prepare_samples(TrainOptions(data=moved, out=options.out, kind="object", resume=True))

    assert [s.image.name for s in again] == [s.image.name for s in first]
    assert all(s.image.is_file() and s.image.parent == moved for s in again)
    cached = [json.loads(line)["image"] for line in (options.out / "samples.jsonl").open()]
    assert cached == [str(s.image) for s in again]
