"""`python -m bench.toyworld --quick` trains the whole toy-world stack end to end and
evaluates it through the engine. Quality and speed are never asserted here (the quick sizes
learn nothing); what is checked is the results' structure, resumability and that the trained
base loads as an ordinary base model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench import toyworld
from bench.toyworld_eval import STEM


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
    code = toyworld.main(["--quick", "--workdir", str(work), "--out", str(out), "--threads", "1"])
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
    assert set(document["timings"]) == set(toyworld.STAGES)
    assert all(info["seconds"] >= 0 for info in document["timings"].values())
    assert (out / f"{STEM}.md").read_text().startswith("# Toy world")
    assert (out / f"{STEM}-sheet.png").stat().st_size > 0
    split = json.loads((work / "split.json").read_text())
    assert not set(split["train"]) & set(split["heldout"])
    assert set(document["heldout"]) <= set(split["heldout"])


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
