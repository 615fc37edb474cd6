"""The benchmarks run end to end on `tiny` with their smallest settings and write results of
the documented shape. Speed is never asserted here (bench/results/ holds the measurements);
what is checked is what each benchmark claims about the work it timed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import batching, create_vs_finetune, engine_overhead, run_all
from bench.common import record, render_markdown, sample_photos

pytest.importorskip("peft", reason="the DreamBooth-LoRA baseline needs peft (the train extra)")

SMALLEST = ["--profile", "tiny", "--device", "cpu", "--quick", "--threads", "1"]
MACHINE_KEYS = {"nproc", "cpu_model", "ram_gib", "torch", "diffusers", "device"}
COMMITTED = Path(__file__).resolve().parents[2] / "bench" / "results"


def layout(value: Any) -> Any:
    """A results document's shape: its keys in order, all the way down; lists of records by
    their distinct record shapes; scalars (numbers, strings, None) alike."""
    if isinstance(value, dict):
        return [(key, layout(item)) for key, item in value.items()]
    if isinstance(value, list):
        shapes: list[Any] = []
        for item in value:
            if layout(item) not in shapes:
                shapes.append(layout(item))
        return ["list", *shapes] if value and isinstance(value[0], dict | list) else "list"
    return "scalar"


def assert_as_committed(document: dict[str, Any], committed: str, name: str) -> None:
    """The section just written has the shape of the committed one: bench/results/ holds what
    the code writes (keys, their order, the records' fields)."""
    reference = json.loads((COMMITTED / committed).read_text())
    assert list(document) == list(reference)
    assert layout(document["benchmarks"][name]) == layout(reference["benchmarks"][name])


@pytest.fixture(autouse=True)
def torch_globals() -> Iterator[None]:
    """The benchmarks set torch's thread count and the engine turns oneDNN off: put both back
    for the tests that follow."""
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    yield
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = onednn


def load_section(path: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    assert path.name == "engine-tiny-cpu.json"
    document = json.loads(path.read_text())
    assert document["format"] == 1
    assert (document["profile"], document["device"]) == ("tiny", "cpu")
    section = document["benchmarks"][name]
    assert set(section["machine"]) >= MACHINE_KEYS
    assert section["machine"]["device"] == "cpu"
    assert section["settings"]["profile"] == "tiny"
    assert section["settings"]["quick"] is True
    for head in section["headline"]:
        assert head["figure"]
        assert isinstance(head["ratio"], float) and head["ratio"] > 0
    markdown = path.with_suffix(".md").read_text()
    assert f"## {name}" in markdown
    assert "| benchmark | figure | ratio | target | met | measured |" in markdown
    assert_as_committed(document, "engine-tiny-cpu.json", name)
    return document, section


async def test_create_vs_finetune(tmp_path: Path) -> None:
    args = create_vs_finetune.parse_args([*SMALLEST, "--photos", "2", "--out", str(tmp_path)])
    path = await create_vs_finetune.run(args)
    _, section = load_section(path, create_vs_finetune.NAME)
    baseline, create = section["baseline"], section["create"]
    # The baseline really trained: its steps were timed and the estimate is the stated formula.
    assert baseline["measured_steps"] == len(baseline["step_s"]) == 3
    assert baseline["extrapolated"] is True
    assert baseline["estimated_total_s"] == pytest.approx(
        baseline["setup_s"] + 400 * baseline["median_step_s"]
    )
    assert baseline["trainable_parameters"] > 0
    assert all(loss == loss for loss in (baseline["first_loss"], baseline["last_loss"]))
    # The avatar went through the real face check: each astronaut photo has one face.
    assert create["faces_per_photo"] == [1, 1]
    assert create["photos_ok"] == [True, True]
    assert create["feature_bytes"] > 0
    assert section["ratio"] == pytest.approx(baseline["estimated_total_s"] / create["median_s"])


async def test_engine_overhead(tmp_path: Path) -> None:
    args = engine_overhead.parse_args(
        [*SMALLEST, "--photos", "2", "--steps", "2", "--out", str(tmp_path)]
    )
    path = await engine_overhead.run(args)
    _, section = load_section(path, engine_overhead.NAME)
    assert section["settings"]["steps"] == 2
    assert section["engine"]["runs"] == section["bare"]["runs"] == 2
    # The bare call did the same work: the same pixels from the same seed and settings.
    assert section["max_pixel_difference"] == 0
    assert section["progress_updates_seen"] >= 2
    assert section["ratio"] == pytest.approx(
        section["engine"]["median_s"] / section["bare"]["median_s"]
    )
    assert section["cpu_time_ratio"] == pytest.approx(
        section["engine_cpu"]["median_s"] / section["bare_cpu"]["median_s"]
    )
    figures = [head["figure"] for head in section["headline"]]
    assert any("CPU time" in figure for figure in figures)


async def test_flux2_overhead(tmp_path: Path) -> None:
    from bench import flux2_overhead

    args = flux2_overhead.parse_args(
        ["--device", "cpu", "--quick", "--threads", "1", "--photos", "2", "--out", str(tmp_path)]
    )
    path = await flux2_overhead.run(args)
    assert path.name == "flux2-overhead-cpu.json"
    document = json.loads(path.read_text())
    assert (document["profile"], document["device"]) == ("tiny-flux2", "cpu")
    assert_as_committed(document, path.name, flux2_overhead.NAME)
    section = document["benchmarks"][flux2_overhead.NAME]
    assert set(section["machine"]) >= MACHINE_KEYS
    assert section["settings"]["quick"] is True
    assert section["engine"]["runs"] == section["bare"]["runs"] >= 2
    assert section["progress_updates_seen"] >= 1
    for head in section["headline"]:
        assert head["figure"] and isinstance(head["ratio"], float) and head["ratio"] > 0


async def test_encode_speed(tmp_path: Path) -> None:
    from bench import encode_speed

    options = ["--device", "cpu", "--quick", "--threads", "1", "--photos", "2"]
    path = await encode_speed.run(encode_speed.parse_args([*options, "--out", str(tmp_path)]))
    assert path.name == "engine-tiny-instantbooth-cpu.json"
    document = json.loads(path.read_text())
    assert_as_committed(document, path.name, encode_speed.NAME)
    section = document["benchmarks"][encode_speed.NAME]
    raw = section["raw"]
    # Both personalizers were timed the same number of rounds, and the headline is theirs.
    assert raw["instantbooth"]["runs"] == raw["ip-adapter"]["runs"] == 2
    assert section["headline"][0]["ratio"] == pytest.approx(
        raw["instantbooth"]["median_s"] / raw["ip-adapter"]["median_s"]
    )
    assert all(row["feature_bytes"] > 0 for row in section["table"])


async def test_batching(tmp_path: Path) -> None:
    options = ["--photos", "2", "--steps", "1", "--concurrency", "1", "3"]
    args = batching.parse_args([*SMALLEST, *options, "--out", str(tmp_path)])
    path = await batching.run(args)
    _, section = load_section(path, batching.NAME)
    levels = {level["requests"]: level for level in section["levels"]}
    assert set(levels) == {1, 3}
    # Requests sent together were batched together, and the batching changed no pixel.
    assert levels[3]["batch_sizes_formed"] == [3]
    assert levels[1]["batch_sizes_formed"] == [1]
    assert section["same_images_together_and_alone"] is True
    assert all(level["max_pixel_difference"] == 0 for level in levels.values())
    for level in levels.values():
        assert level["speedup"] == pytest.approx(level["one_by_one_s"] / level["together_s"])
        assert level["cpu_time_speedup"] == pytest.approx(
            level["one_by_one_cpu_s"] / level["together_cpu_s"]
        )


def test_sections_merge_and_markdown(tmp_path: Path) -> None:
    """Benchmarks run separately add their sections to one file per profile and device."""
    first = {"headline": [{"figure": "a / b", "ratio": 2.0, "target": ">= 1"}], "machine": {}}
    second = {"headline": [{"figure": "c / d", "ratio": 0.5}], "table": [{"x": 1.0}]}
    record(tmp_path, "tiny", "cpu", "one", first)
    path = record(tmp_path, "tiny", "cpu", "two", second)
    document = json.loads(path.read_text())
    assert list(document["benchmarks"]) == ["one", "two"]
    markdown = render_markdown(document)
    assert "| one | a / b | 2 | >= 1 |" in markdown
    assert "| two | c / d | 0.5 |" in markdown
    assert "| x |" in markdown


def test_run_all_accepts_every_benchmark_option() -> None:
    repeats = ["--create-repeats", "2", "--overhead-repeats", "3", "--batch-repeats", "1"]
    sizes = ["--train-steps", "10", "--size", "64", "--steps", "2"]
    args = run_all.parse_args(["--profiles", "tiny", "sd15-shaped", *repeats, *sizes])
    assert args.profiles == ["tiny", "sd15-shaped"]
    assert (args.create_repeats, args.overhead_repeats, args.batch_repeats) == (2, 3, 1)
    assert args.only == list(run_all.BENCHMARKS)


def test_sample_photos_are_distinct() -> None:
    photos = sample_photos(8)
    assert len({photo.tobytes() for photo in photos}) == 8
    with pytest.raises(ValueError):
        sample_photos(9)
