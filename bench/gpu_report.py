"""The GPU benchmark's results (bench/gpu.py): the device's peak, the headline figures next to
the issue's targets, and the Markdown summary regenerated from the JSON document.

Pure functions over plain data: no torch, nothing timed here.
"""

from __future__ import annotations

import re
from typing import Any

# Dense bf16/fp16 tensor-core peak, TFLOP/s (vendor datasheets, without sparsity).
PEAK_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
}

# The targets (GitHub issue 16), reported next to each figure, never asserted.
TARGET_IMAGES_PER_S = 9.0  # at 512 px, 25 steps, best batch
TARGET_BATCHING_SPEEDUP = 2.0  # batched / one by one at 8 concurrent requests
TARGET_CREATE_RATIO = 1000.0  # 400-step DreamBooth-LoRA / avatar creation
TARGET_OVERHEAD = 0.05  # Engine.render vs bare diffusers

SECTION_TITLES = {
    "a": "Throughput per batch size, eager and compiled",
    "b": "Batched vs one by one through the engine's worker",
    "c": "Avatar creation vs DreamBooth-LoRA",
    "d": "Engine overhead vs bare diffusers",
    "e": "/avatar render → images posted (the bot on SimCord)",
    "f": "FLUX.2 [klein]-shaped renders",
    "g": "Upscale x2 and Vary vs a render",
}


def device_slug(name: str) -> str:
    """``NVIDIA H200`` → ``nvidia-h200``: lower case, runs of other characters → ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def peak_tflops(device_name: str) -> tuple[float | None, str]:
    """(dense bf16/fp16 peak in TFLOP/s, the table row it came from) for a CUDA device name
    as torch reports it; (None, why) when the device is not in the table (MFU is omitted)."""
    name = device_name.upper()
    if "NVL" in name and ("H100" in name or "H200" in name):
        return None, f"{device_name}: NVL parts have their own peak, not in the table"
    if "H100" in name:
        row = "H100 PCIe" if "PCIE" in name else "H100 SXM"
        return PEAK_TFLOPS[row], row
    for row in ("H200", "A100", "L40S", "RTX 4090"):
        if row.upper() in name or (row == "RTX 4090" and "4090" in name):
            return PEAK_TFLOPS[row], row
    if re.search(r"\bL4\b", name):
        return PEAK_TFLOPS["L4"], "L4"
    return None, f"{device_name}: not in the peak table"


# -- headline figures -------------------------------------------------------------------------


def _done(results: dict[str, Any], section: str, part: str) -> dict[str, Any] | None:
    found = results.get("sections", {}).get(section, {}).get("parts", {}).get(part)
    return found if found and found.get("status") == "done" else None


def _met(value: float | None, ok: bool, meaningful: bool) -> bool | None:
    return ok if value is not None and meaningful else None


def headlines(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure the issue sets a target for (and the ones it does not), from
    whatever parts finished. ``meets_target`` is None on a CPU (quick runs are not the
    targets' setting) or when the figure is missing."""
    on_gpu = results.get("device", {}).get("type") == "cuda" and not results.get("quick")
    plan = results.get("plan", {})
    rows: list[dict[str, Any]] = []

    best: tuple[float, str] | None = None
    for mode in ("eager", "compiled"):
        part = _done(results, "a", mode)
        for row in (part or {}).get("rows", []):
            if best is None or row["images_per_s"] > best[0]:
                best = (row["images_per_s"], f"batch {row['batch']}, {mode}")
    rows.append(
        {
            "section": "a",
            "figure": f"best images/s at {plan.get('size')} px, {plan.get('steps')} steps",
            "value": None if best is None else best[0],
            "detail": None if best is None else best[1],
            "target": f">= {TARGET_IMAGES_PER_S:g} images/s (512 px, 25 steps)",
            "meets_target": _met(
                best and best[0], bool(best and best[0] >= TARGET_IMAGES_PER_S), on_gpu
            ),
        }
    )
    for mode in ("eager", "compiled"):
        part = _done(results, "b", mode)
        level = (part or {}).get("level")
        speedup = level["speedup"] if level else None
        rows.append(
            {
                "section": "b",
                "figure": f"images/s, {plan.get('concurrency')} requests together / one by one "
                f"({mode})",
                "value": speedup,
                "detail": None if not level else f"batches formed {level['batch_sizes_formed']}",
                "target": f">= {TARGET_BATCHING_SPEEDUP:g}x at 8 concurrent",
                "meets_target": _met(
                    speedup,
                    bool(speedup and speedup >= TARGET_BATCHING_SPEEDUP),
                    on_gpu and plan.get("concurrency") == 8,
                ),
            }
        )
    create = _done(results, "c", "create")
    ratio = create["ratio"] if create else None
    rows.append(
        {
            "section": "c",
            "figure": "DreamBooth-LoRA 400 steps / avatar creation",
            "value": ratio,
            "detail": None
            if not create
            else (
                f"baseline {'extrapolated from ' if create['extrapolated'] else ''}"
                f"{create['measured_steps']} steps at {create['train_resolution']} px"
            ),
            "target": f">= {TARGET_CREATE_RATIO:g}x",
            "meets_target": _met(ratio, bool(ratio and ratio >= TARGET_CREATE_RATIO), on_gpu),
        }
    )
    overhead = _done(results, "d", "eager")
    slowdown = overhead["ratio"] - 1 if overhead else None
    rows.append(
        {
            "section": "d",
            "figure": "Engine.render / bare diffusers - 1 (median wall time)",
            "value": slowdown,
            "detail": None
            if not overhead
            else f"without the gather-window wait {overhead['ratio_without_gather_wait'] - 1:+.2%}",
            "target": f"<= {TARGET_OVERHEAD:.0%}",
            "meets_target": _met(
                slowdown, slowdown is not None and slowdown <= TARGET_OVERHEAD, on_gpu
            ),
        }
    )
    bot = _done(results, "e", "eager")
    rows.append(
        {
            "section": "e",
            "figure": "/avatar render → images posted, seconds (median, one at a time)",
            "value": bot["render_to_posted_s"] if bot else None,
            "detail": None
            if not bot
            else f"engine.render alone {bot['engine_render_s']:.3g} s; bot and Discord "
            f"{bot['bot_overhead_s']:.3g} s",
            "target": "",
            "meets_target": None,
        }
    )
    for mode in ("eager", "compiled"):
        flux = _done(results, "f", mode) or {}
        for row in flux.get("rows", []):
            rows.append(
                {
                    "section": "f",
                    "figure": f"{flux['profile']} s/image at {flux['size']} px, "
                    f"{flux['steps']} steps, batch {row['batch']} ({mode})",
                    "value": row["seconds_per_image"],
                    "detail": _gib(row.get("peak_memory_gib")),
                    "target": "",
                    "meets_target": None,
                }
            )
    return rows


# -- Markdown ---------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.{digits}g}"
        return f"{value:.3e}"
    return str(value)


def _gib(value: float | None) -> str | None:
    return None if value is None else f"peak {value:.2f} GiB"


def _table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _throughput_lines(part: dict[str, Any], mode: str) -> list[str]:
    rows = [
        [
            mode,
            r["batch"],
            r["images_per_s"],
            r["images_per_s_worker"],
            r["it_per_s"],
            r["wall_s_median"],
            r["first_render_s"],
            r.get("peak_memory_gib"),
            None if r.get("flops_per_image") is None else r["flops_per_image"] / 1e12,
            None if r.get("mfu") is None else f"{r['mfu']:.1%}",
            r.get("host_syncs_per_render"),
            r["batches_formed"],
        ]
        for r in part.get("rows", [])
    ]
    columns = [
        "mode",
        "batch",
        "images/s",
        "images/s (worker)",
        "it/s",
        "s per batch",
        "warm-up s",
        "peak GiB",
        "TFLOP/image",
        "MFU",
        "host syncs/render",
        "batches formed",
    ]
    return _table(columns, rows)


def _part_lines(section: str, name: str, part: dict[str, Any]) -> list[str]:
    status = part.get("status")
    head = f"**{name}**: {status}"
    if part.get("seconds") is not None:
        head += f" in {part['seconds']:.1f} s"
    if part.get("reason"):
        head += f" ({part['reason']})"
    lines = [head + ".", ""]
    if status != "done":
        return lines
    if section in ("a", "f"):
        lines += _throughput_lines(part, name)
    elif section == "b" and part.get("level"):
        lv = part["level"]
        lines += _table(
            ["requests", "together img/s", "one by one img/s", "speedup", "batches formed"],
            [
                [
                    lv["requests"],
                    lv["together_images_per_s"],
                    lv["one_by_one_images_per_s"],
                    lv["speedup"],
                    lv["batch_sizes_formed"],
                ]
            ],
        )
    elif section == "c" and name == "create":
        # Creation split: face work (engine.inspect: detection, landmarks, descriptors, image
        # statistics) and encoding (engine.encode: face crops, image encoder, serialising).
        lines += _table(
            ["what", "seconds", "face work (inspect) s", "encoding s"],
            [
                [row["what"], row["seconds"], row.get("inspect_s"), row.get("encode_s")]
                for row in part.get("table", [])
            ],
        )
    elif section == "d":
        lines += _table(
            ["what", "median s", "min s", "max s"],
            [[r["what"], r["median_s"], r["min_s"], r["max_s"]] for r in part.get("table", [])],
        )
    elif section == "e":
        lines += _table(
            ["what", "value"],
            [[k, v] for k, v in part.get("summary", {}).items()],
        )
    elif section == "g":
        lines += _table(
            ["case", "size", "steps run", "tile px", "median s", "x render"],
            [
                [r["case"], r["size"], r["steps run"], r["tile px"], r["median_s"], r["x render"]]
                for r in part.get("table", [])
            ],
        )
    for note in part.get("notes", []):
        lines.append(f"- {note}")
    if part.get("notes"):
        lines.append("")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    device = results.get("device", {})
    versions = results.get("versions", {})
    plan = results.get("plan", {})
    state = (
        "complete"
        if results.get("finished_at")
        else "INCOMPLETE (the run stopped before it finished)"
    )
    lines = [
        f"# GPU benchmark: {device.get('name', '?')}"
        + (" (quick)" if results.get("quick") else ""),
        "",
        f"Generated by `bench/gpu_report.py` from the JSON next to this file; {state}. "
        f"Command: `{results.get('command', '')}`, started {results.get('started_at', '')}, "
        f"{_fmt(results.get('elapsed_s'), 4)} s of a {_fmt(results.get('deadline_s'))} s "
        "deadline (model builds included).",
        "",
        f"torch {versions.get('torch')}, diffusers {versions.get('diffusers')}, transformers "
        f"{versions.get('transformers')}, CUDA {versions.get('cuda')}, cuDNN "
        f"{versions.get('cudnn')}, triton {versions.get('triton')}, driver "
        f"{versions.get('driver')}. Profile `{plan.get('profile')}` in "
        f"{results.get('dtype', '?')}; peak for MFU: "
        + (
            f"{device['peak_tflops']:g} TFLOP/s ({device.get('peak_row')})"
            if device.get("peak_tflops")
            else f"none ({device.get('peak_row')}): MFU omitted"
        )
        + ".",
        "",
        "## Figures and the issue's targets",
        "",
        "Reported, never asserted; 'met' is left empty on a CPU or a quick run.",
        "",
    ]
    lines += _table(
        ["section", "figure", "measured", "detail", "target", "met"],
        [
            [
                h["section"],
                h["figure"],
                (
                    f"{h['value']:+.2%}"
                    if h["section"] == "d" and h["value"] is not None
                    else h["value"]
                ),
                h.get("detail"),
                h.get("target"),
                h.get("meets_target"),
            ]
            for h in results.get("headlines", [])
        ],
    )
    engines = results.get("engines", {})
    if engines:
        lines += ["## Engines and the fast path actually used", ""]
        rows = []
        for label, info in engines.items():
            fp = info.get("fast_path") or {}
            rows.append(
                [
                    label,
                    info.get("status"),
                    info.get("build_s"),
                    info.get("first_encode_s"),
                    fp.get("warmup_seconds"),
                    info.get("dtype"),
                    fp.get("channels_last"),
                    fp.get("fuse_qkv"),
                    fp.get("compile"),
                    fp.get("compile_vae"),
                    fp.get("compile_mode"),
                    fp.get("buckets"),
                ]
            )
        lines += _table(
            [
                "engine",
                "status",
                "build s",
                "first encode s",
                "engine warm-up s",
                "dtype",
                "channels_last",
                "fuse_qkv",
                "compile",
                "compile_vae",
                "compile_mode",
                "buckets",
            ],
            rows,
        )
        for label, info in engines.items():
            if info.get("reason"):
                lines.append(f"- {label}: {info['reason']}")
            for note in info.get("notes", []):
                lines.append(f"- {label}: {note}")
        lines.append("")
    for key, section in results.get("sections", {}).items():
        lines += [f"## {key}. {section.get('title', '')}", ""]
        if section.get("description"):
            lines += [section["description"], ""]
        for name, part in section.get("parts", {}).items():
            lines += _part_lines(key, name, part)
    if results.get("notes"):
        lines += ["## Notes", ""]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    machine = results.get("machine", {})
    if machine:
        lines += [
            "",
            "Machine: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in machine.items() if v is not None)
            + ".",
        ]
    return "\n".join(lines).rstrip() + "\n"
