"""The GPU benchmark (bench/gpu.py) runs end to end with ``--quick`` (the same code paths on the
CPU with the tiny profiles) and writes results of the documented shape. No timing threshold is
asserted: what is checked is that every section measured what it says, with positive numbers,
and that the device and versions are recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import gpu
from bench.gpu_plan import parse_args
from bench.gpu_report import device_slug, headlines, peak_tflops, render_markdown

pytest.importorskip("peft", reason="the DreamBooth-LoRA baseline needs peft (the train extra)")


@pytest.fixture(autouse=True)
def torch_globals() -> Iterator[None]:
    """The benchmark sets torch's thread count and the engine turns oneDNN off: put both back
    for the tests that follow."""
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    yield
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = onednn


def run_quick(out: Path, *more: str) -> dict[str, Any]:
    assert gpu.main(["--quick", "--out", str(out), *more]) == 0
    path = out / "gpu-cpu-quick.json"
    results = json.loads(path.read_text())
    assert path.with_suffix(".md").read_text() == render_markdown(results)
    return results


def part(results: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    found = results["sections"][section]["parts"][name]
    assert found["status"] == "done", found
    assert found["seconds"] > 0
    return found


def test_quick_run_measures_every_section(tmp_path: Path) -> None:
    results = run_quick(tmp_path)
    assert results["format"] == 1 and results["benchmark"] == "gpu"
    assert results["quick"] is True and results["finished_at"]
    assert 0 < results["elapsed_s"] < results["deadline_s"]
    device = results["device"]
    assert device["type"] == "cpu" and device["name"] and device["slug"] == "cpu"
    assert device["peak_tflops"] is None  # no MFU on a CPU
    assert results["versions"]["torch"] == torch.__version__ and results["versions"]["diffusers"]
    assert {"nproc", "cpu_model", "torch", "device"} <= set(results["machine"])
    assert results["dtype"] == "float32"
    assert set(results["sections"]) == set("abcdefg")

    engine = results["engines"]["tiny eager"]
    assert engine["status"] == "done" and engine["seconds"] >= engine["build_s"] > 0
    assert engine["requested_fast"]["compile"] == "off"
    assert "fast_path" in engine  # the engine's own report, or None before it has one

    a = part(results, "a", "eager")
    assert [row["batch"] for row in a["rows"]] == [1, 4]
    for row in a["rows"]:
        # The worker batched each round's requests into one batch of that size.
        assert row["batches_formed"] == [row["batch"]]
        for key in ("images_per_s", "images_per_s_worker", "it_per_s", "first_render_s"):
            assert row[key] > 0, key
        flops = row["flops"]
        assert flops["denoiser_forwards_counted"] == 1
        assert flops["denoiser_flops_per_forward"] > 0
        assert flops["vae_decode_flops_per_image"] > 0
        denoise = flops["denoiser_flops_per_forward"] * a["steps"]
        decode = flops["vae_decode_flops_per_image"] * row["batch"]
        assert row["flops_per_image"] == pytest.approx((denoise + decode) / row["batch"])
        assert row["mfu"] is None and row["peak_memory_gib"] is None  # a CPU
    # Four times the images, four times the denoiser FLOPs (counted at each batch's shape).
    one, four = (row["flops"]["denoiser_flops_per_forward"] for row in a["rows"])
    assert four == pytest.approx(4 * one, rel=0.01)
    assert a["rows"][0]["flops_per_image"] == pytest.approx(a["rows"][1]["flops_per_image"], 0.01)
    compiled = results["sections"]["a"]["parts"]["compiled"]
    assert compiled["status"] == "skipped" and "--compile-on-cpu" in compiled["reason"]

    b = part(results, "b", "eager")
    assert b["level"]["requests"] == 4 and b["level"]["batch_sizes_formed"] == [4]
    assert b["level"]["speedup"] > 0 and b["same_images_together_and_alone"] is True

    dreambooth, create = part(results, "c", "dreambooth"), part(results, "c", "create")
    assert dreambooth["measured_steps"] == len(dreambooth["step_s"]) == 3
    assert create["extrapolated"] is True and create["target_steps"] == 400
    assert create["ratio"] == pytest.approx(
        dreambooth["estimated_total_s"] / create["create"]["median_s"]
    )

    d = part(results, "d", "eager")
    assert d["ratio"] > 0 and d["max_pixel_difference"] == 0

    e = part(results, "e", "eager")
    assert e["render_to_posted_s"] > 0 and e["engine_render_s"] > 0
    # Every interaction was answered, each with its image.
    assert e["summary"]["interactions answered"] == e["interactions"] == 2 + 3
    assert e["images_posted"] == e["interactions"]

    for mode, flux in results["sections"]["f"]["parts"].items():
        if flux["status"] == "done":
            assert flux["profile"] == "tiny-flux2"
            assert all(row["seconds_per_image"] > 0 for row in flux["rows"])
        else:  # not registered in this build, or compiled on a CPU
            assert flux["status"] == "skipped" and flux["reason"], mode

    g = part(results, "g", "eager")
    assert g["table"][0]["case"] == "render" and len(g["table"]) == 5
    assert all(row["x render"] > 0 for row in g["table"])

    figures = {(h["section"], h["figure"]): h for h in results["headlines"]}
    assert all(h["meets_target"] is None for h in figures.values())  # never judged on a CPU
    assert {h["section"] for h in figures.values()} >= set("abcde")
    assert all(h["value"] is not None for h in figures.values() if "compiled" not in h["figure"])
    markdown = (tmp_path / "gpu-cpu-quick.md").read_text()
    assert "## Figures and the issue's targets" in markdown
    assert "## a. Throughput per batch size" in markdown
    assert "## g. Upscale x2 and Vary vs a render" in markdown


def test_deadline_skips_parts_with_a_note(tmp_path: Path) -> None:
    results = run_quick(tmp_path, "--deadline-s", "0", "--sections", "a,c,f")
    assert set(results["sections"]) == {"a", "c", "f"}
    assert results["finished_at"]
    for section in results["sections"].values():
        for found in section["parts"].values():
            assert found["status"] == "skipped" and found["reason"]
    assert results["sections"]["c"]["parts"]["dreambooth"]["reason"].startswith("deadline")
    assert results["engines"]["tiny eager"]["status"] == "skipped"


def test_sections_option() -> None:
    assert parse_args(["--sections", "a, d"]).sections == ["a", "d"]
    assert parse_args([]).deadline_s == 450 and parse_args(["--quick"]).deadline_s == 300
    with pytest.raises(SystemExit):
        parse_args(["--sections", "a,x"])


def test_peak_table_and_slug() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3") == (989.0, "H100 SXM")
    assert peak_tflops("NVIDIA H100 PCIe") == (756.0, "H100 PCIe")
    assert peak_tflops("NVIDIA H200") == (989.0, "H200")
    assert peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert peak_tflops("NVIDIA L40S")[0] == 362.0
    assert peak_tflops("NVIDIA L4")[0] == 121.0
    assert peak_tflops("NVIDIA GeForce RTX 4090")[0] == 165.0
    assert peak_tflops("NVIDIA H100 NVL")[0] is None
    assert peak_tflops("Tesla T4")[0] is None
    assert device_slug("NVIDIA H200") == "nvidia-h200"
    assert device_slug("NVIDIA A100-SXM4-80GB") == "nvidia-a100-sxm4-80gb"


def test_gpu_results_are_judged_against_the_targets() -> None:
    """On a GPU (not quick) each figure gets its verdict; a missing part leaves it empty."""
    row = {
        "batch": 16,
        "images_per_s": 10.0,
        "images_per_s_worker": 10.5,
        "it_per_s": 15.6,
        "wall_s_median": 1.6,
        "first_render_s": 70.0,
        "peak_memory_gib": 9.5,
        "flops_per_image": 42.5e12,
        "mfu": 0.43,
        "batches_formed": [16],
        "seconds_per_image": 0.1,
    }
    level = {
        "requests": 8,
        "speedup": 1.5,
        "together_images_per_s": 6.0,
        "one_by_one_images_per_s": 4.0,
        "batch_sizes_formed": [8],
    }
    results: dict[str, Any] = {
        "quick": False,
        "finished_at": "now",
        "device": {"type": "cuda", "name": "NVIDIA H200", "peak_tflops": 989.0},
        "plan": {"size": 512, "steps": 25, "concurrency": 8, "profile": "sd15-shaped"},
        "engines": {"sd15-shaped compiled": {"status": "done", "build_s": 30.0}},
        "sections": {
            "a": {"parts": {"compiled": {"status": "done", "rows": [row]}}},
            "b": {"parts": {"eager": {"status": "done", "level": level}}},
            "c": {
                "parts": {
                    "create": {
                        "status": "done",
                        "ratio": 1200.0,
                        "extrapolated": True,
                        "measured_steps": 100,
                        "train_resolution": 512,
                    }
                }
            },
            "d": {
                "parts": {
                    "eager": {"status": "done", "ratio": 1.08, "ratio_without_gather_wait": 1.01}
                }
            },
        },
    }
    verdicts = {(h["section"], h["figure"]): h["meets_target"] for h in headlines(results)}
    by_section: dict[str, list[bool | None]] = {section: [] for section, _ in verdicts}
    for (section, _), met in verdicts.items():
        by_section[section].append(met)
    assert by_section["a"] == [True]  # 10 images/s >= 9
    assert by_section["b"] == [False, None]  # eager 1.5x < 2x; compiled not measured
    assert by_section["c"] == [True]
    assert by_section["d"] == [False]  # 8 % slower
    assert by_section["e"] == [None]
    markdown = render_markdown({**results, "headlines": headlines(results)})
    assert "| a | best images/s at 512 px, 25 steps | 10 | batch 16, compiled |" in markdown
    assert "| +8.00% |" in markdown and "43.0%" in markdown
