"""`python -m bench.toyworld --quick` trains the whole toy-world stack end to end and
evaluates it through the engine. Quality and speed are never asserted here (the quick sizes
learn nothing); what is checked is the results' structure, resumability and that the trained
base loads as an ordinary base model."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench import toyworld, toyworld_plan
from bench.toyworld_ablations import ABLATION_STEM, BETA_1, TOKEN, variants
from bench.toyworld_eval import COMPARED, DIAGNOSTICS_STEM, STEM, arms
from bench.toyworld_identity import FAKES


@pytest.fixture(autouse=True)
def torch_globals() -> Iterator[None]:
    """The engine turns oneDNN off and may change torch's thread count: put both back."""
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    yield
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = onednn


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("toyworld")
    work, out = root / "work", root / "out"
    every = ",".join(toyworld.STAGES)
    code = toyworld.main(
        ["--quick", "--workdir", str(work), "--out", str(out), "--threads", "1", "--stages", every]
    )
    assert code == 0
    return work, out


def test_quick_run_writes_results(quick_run: tuple[Path, Path]) -> None:
    work, out = quick_run
    document = json.loads((out / f"{STEM}.json").read_text())
    assert document["benchmark"] == "toyworld"
    assert document["plan"]["quick"] is True
    arms = {row["arm"]: row for row in document["arms"]}
    assert "no personalization" in arms
    assert any(name.startswith("InstantBooth") for name in arms)
    n = len(document["heldout"]) * 5 * document["plan"]["eval_seeds"]  # 5 places
    for row in arms.values():
        assert row["renders"] == n
        assert {"identity_mean", "subject_found_rate", "scene_accuracy"} <= set(row)
        assert 0.0 <= row["scene_accuracy"] <= 1.0
    assert document["upper_bound"]["identity_mean"] is not None
    assert document["control"]["identity_mean"] is not None
    assert set(document["timings"]) == set(toyworld.STAGES) - {"ablations"}  # runs after
    assert all(info["seconds"] >= 0 for info in document["timings"].values())
    assert (out / f"{STEM}.md").read_text().startswith("# Toy world")
    plan = toyworld.QUICK
    usage = document["feature_use"]
    assert set(usage) == {f"{plan.ib_steps} steps", f"{plan.ablation_steps} steps"}
    for rows in usage.values():
        assert [r["t"] for r in rows] == [100, 300, 500, 700, 900]
        assert all(r[k] > 0 for r in rows for k in ("base", "token", "full", "shuffled"))
    assert (out / f"{STEM}-sheet.png").stat().st_size > 0
    # The comparison: every method and the fakes on the same subjects, each with its margins.
    compared = document["comparison"]
    assert len(compared["subjects"]) >= 2
    names = [row["arm"] for row in compared["rows"]]
    methods = [
        "no personalization",
        "IP-Adapter (trained here)",
        "DreamBooth-LoRA (per subject)",
        "Textual Inversion (per subject)",
        *COMPARED,  # the default arms hold every InstantBooth arm the table shows
    ]
    assert set(methods) <= set(names)
    assert {f"fake: {f}" for f in FAKES} <= set(names)
    for row in compared["rows"]:
        assert [s["subject"] for s in row["subjects"]] == compared["subjects"]
        for component in ("overall", "colour", "pattern", "shape"):
            cell = row["margin"][component]
            assert cell["low"] <= cell["mean"] <= cell["high"]
        if row["kind"] == "method":
            assert row["seconds_per_subject"] is not None
    # Renders that ignore the subject have a margin of exactly 0.
    none = next(r for r in compared["rows"] if r["arm"] == "no personalization")
    assert all(none["margin"][c]["mean"] == 0.0 for c in ("overall", "colour", "pattern", "shape"))
    assert {row["arm"] for row in document["identity"]} >= {"no personalization", *FAKES}
    split = json.loads((work / "split.json").read_text())
    assert not set(split["train"]) & set(split["heldout"])
    assert set(document["heldout"]) <= set(split["heldout"])


def test_diagnostic_arms_are_extra_to_the_tables_arms() -> None:
    default = [a.name for a in arms(diagnostics=False)]
    full = [a.name for a in arms(diagnostics=True)]
    assert set(COMPARED) <= set(default)
    assert full[: len(default)] == default
    extra = set(full) - set(default)
    assert len(extra) == 5
    assert not extra & set(COMPARED)
    assert any("one photo" in name for name in extra)


def test_diagnostics_write_files_of_their_own(quick_run: tuple[Path, Path], tmp_path: Path) -> None:
    """``--diagnostics`` renders the 5 extra arms into toyworld-diagnostics-cpu.*, leaving the
    default command's table (and its timings) as that command wrote them."""
    work, out = quick_run
    shutil.copytree(work, tmp_path / "work")
    shutil.copytree(out, tmp_path / "out")
    table = (tmp_path / "out" / f"{STEM}.json").read_bytes()
    argv = ["--quick", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    argv += ["--threads", "1", "--stages", "eval", "--force", "--diagnostics"]
    assert toyworld.main(argv) == 0
    assert (tmp_path / "out" / f"{STEM}.json").read_bytes() == table
    document = json.loads((tmp_path / "out" / f"{DIAGNOSTICS_STEM}.json").read_text())
    assert [row["arm"] for row in document["arms"]] == [a.name for a in arms(diagnostics=True)]
    assert document["plan"]["diagnostics"] is True
    assert (tmp_path / "out" / f"{DIAGNOSTICS_STEM}.md").is_file()
    assert not (tmp_path / "out" / f"{DIAGNOSTICS_STEM}-sheet.png").exists()


def test_ablations_train_each_variant_from_several_seeds(quick_run: tuple[Path, Path]) -> None:
    from engine.personalizers.instantbooth.model import InstantBoothModel
    from engine.tiny import tiny_image_encoder

    work, out = quick_run
    document = json.loads((out / f"{ABLATION_STEM}.json").read_text())
    rows = document["variants"]
    plan = toyworld.QUICK
    assert [r["variant"] for r in rows] == [v.name for v in variants(plan)]
    # The main recipe, the learning-rate sweep without the main recipe's own rate, the other
    # image-encoder choice.
    assert rows[0]["changes"] == {}
    swept = [r["changes"]["ib_lr_adapter"] for r in rows if "ib_lr_adapter" in r["changes"]]
    assert sorted(swept) == sorted(set(plan.ablation_lr_sweep) - {plan.ib_lr_adapter})
    for row in rows:
        assert row["steps"] == plan.ablation_steps
        assert len(row["seeds"]) == len(set(row["seeds"])) == plan.ablation_seeds
        assert set(row["arms"]) == {BETA_1, TOKEN}
        for arm in row["arms"].values():
            for cell in arm.values():
                assert len(cell["per_seed"]) == plan.ablation_seeds
                assert cell["low"] <= cell["mean"] <= cell["high"]
    snapshot = toyworld_plan.snapshot_weights(work / "instantbooth", plan.ablation_steps)
    assert (snapshot / "config.json").is_file()
    # The fine-tuned encoder is saved with the weights, so they load only over its
    # architecture and its weights differ from the random one it started from.
    tuned_dir = work / "ablations" / "encoder-trained-seed-1" / "weights"
    tuned = InstantBoothModel.from_pretrained(tuned_dir, tiny_image_encoder(0))
    assert tuned.config.image_encoder_trained and tuned.backbone is not None
    start = tiny_image_encoder(0).state_dict()
    assert any(
        not torch.equal(value, start[name]) for name, value in tuned.backbone.state_dict().items()
    )
    with pytest.raises(ValueError, match="fine-tuned image encoder"):
        InstantBoothModel.from_pretrained(tuned_dir)
    assert (out / f"{ABLATION_STEM}.md").read_text().startswith("# Toy world")


def test_stages_are_skipped_once_done(quick_run: tuple[Path, Path]) -> None:
    work, out = quick_run
    before = (work / "base" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    code = toyworld.main(
        ["--quick", "--workdir", str(work), "--out", str(out), "--stages", "data,vae,unet"]
    )
    assert code == 0
    after = (work / "base" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert before == after
    assert (work / "vae" / "checkpoint.pt").is_file()
    assert toyworld.main(["--quick", "--workdir", str(work), "--stages", "nope"]) == 2


def test_evaluations_run_in_a_new_workdir_even_when_results_exist(
    quick_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """A fresh clone's results folder holds the committed results: they must not make a new
    workdir skip its evaluation."""
    import shutil

    work, out = quick_run
    shutil.copytree(work, tmp_path / "work")
    shutil.copytree(out, tmp_path / "out")
    timings_path = tmp_path / "work" / "timings.json"
    timings = json.loads(timings_path.read_text())
    del timings["eval"]
    timings_path.write_text(json.dumps(timings))
    results = tmp_path / "out" / f"{STEM}.json"
    results.write_text("{}")  # stands for an earlier run's results
    argv = ["--quick", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert "ablations" in timings  # ran after the first evaluation, before this one
    assert toyworld.main([*argv, "--stages", "eval"]) == 0
    document = json.loads(results.read_text())
    assert document["benchmark"] == "toyworld"
    # The default command's stages only (the ablations have their own results), each with
    # when it finished and under what load.
    assert set(document["timings"]) == set(toyworld.STAGES) - {"ablations"}
    recorded = json.loads(timings_path.read_text())
    assert "eval" in recorded
    assert all({"finished", "load_1m"} <= set(info) for info in recorded.values())
    results.write_text("{}")
    assert toyworld.main([*argv, "--stages", "eval"]) == 0  # recorded now: skipped
    assert results.read_text() == "{}"


def test_trained_base_loads_through_the_engine(quick_run: tuple[Path, Path]) -> None:
    from engine.config import EngineSettings
    from engine.engine import create_engine
    from engine.types import RenderRequest

    work, _ = quick_run

    async def render() -> int:
        settings = EngineSettings(
            profile="tiny-instantbooth",
            base_model=str(work / "base"),
            instantbooth_weights=str(work / "instantbooth" / "weights"),
            device="cpu",
            dtype="float32",
        )
        engine = await create_engine(settings)
        try:
            assert not engine.is_noise
            result = await engine.render(
                RenderRequest(
                    prompt="a photo of a toy on the beach",
                    width=64,
                    height=64,
                    steps=2,
                    personalizer="none",
                )
            )
            return len(result.images)
        finally:
            await engine.aclose()

    assert asyncio.run(render()) == 1


def test_avatarbot_eval_on_the_toyworld_profile(
    quick_run: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What an operator runs on the toy world: `avatarbot eval --profile toyworld-instantbooth`
    over the trained base and weights, a held-out subject's photos, the toy metric."""
    from avatarbot_research.toyworld import reference_photos, subject

    from bot.cli import main

    work, _ = quick_run
    split = json.loads((work / "split.json").read_text())
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, photo in enumerate(reference_photos(subject(split["heldout"][0]), 2)):
        photo.save(refs / f"{i}.png")
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AVATARBOT_ENGINE__BASE_MODEL", str(work / "base"))
    monkeypatch.setenv("AVATARBOT_ENGINE__INSTANTBOOTH_WEIGHTS", str(work / "instantbooth/weights"))
    monkeypatch.delenv("AVATARBOT_DATABASE_URL", raising=False)
    monkeypatch.delenv("AVATARBOT_ENGINE__PROFILE", raising=False)
    out = tmp_path / "out"
    code = main(
        [
            "--log-level", "WARNING", "eval", "--profile", "toyworld-instantbooth",
            "--photos", str(refs), "--kind", "object", "--metric", "toy", "--baseline",
            "--prompt", "a photo of a toy on the beach", "--seeds", "1", "--steps", "2",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["profile"] == "toyworld-instantbooth"
    assert results["metric"].startswith("toy")
    personalizers = {r["personalizer"] for r in results["renders"]}
    assert personalizers == {"instantbooth", "none"}
    for render in results["renders"]:
        assert render["identity"] is None or 0.0 <= render["identity"] <= 1.0
        assert render["scene"] in ("beach", "snow", "forest", "night", "city")
    assert (out / "results.md").is_file() and (out / "contact_sheet.png").stat().st_size > 0


def test_ablations_at_another_budget_write_their_own_files(
    quick_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--ablation-steps`` at the main run's budget: the main recipe is the main run's own
    final weights, the chosen variants train in folders of their own, and the results go to
    files of their own, leaving the default budget's untouched; an unknown variant is refused."""
    import shutil

    work, out = quick_run
    shutil.copytree(work, tmp_path / "work")
    shutil.copytree(out, tmp_path / "out")
    default = (tmp_path / "out" / f"{ABLATION_STEM}.json").read_bytes()
    argv = ["--quick", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    argv += ["--stages", "ablations", "--force", "--threads", "1"]
    steps = toyworld_plan.QUICK.ib_steps
    swept = next(v.slug for v in variants(toyworld_plan.QUICK) if v.slug.startswith("lr-"))
    budget = ["--ablation-steps", str(steps), "--ablation-seeds", "1"]

    assert toyworld.main([*argv, *budget, "--ablation-variants", "main,nope"]) == 2
    assert toyworld.main([*argv, *budget, "--ablation-variants", f"main,{swept}"]) == 0

    document = json.loads((tmp_path / "out" / f"toyworld-ablations-{steps}-cpu.json").read_text())
    assert [row["seeds"] for row in document["variants"]] == [[0], [0]]
    assert all(row["steps"] == steps for row in document["variants"])
    trained = sorted(
        p.name for p in (tmp_path / "work" / "ablations").iterdir() if f"-{steps}-" in p.name
    )
    assert trained == [f"{swept}-{steps}-seed-0"]  # the main recipe: the main run's weights
    assert (tmp_path / "out" / f"{ABLATION_STEM}.json").read_bytes() == default
    md = (tmp_path / "out" / f"toyworld-ablations-{steps}-cpu.md").read_text()
    assert f"--ablation-steps {steps}" in md
