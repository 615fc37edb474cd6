"""The scale-out benchmark's results: the machine, the verdicts against the targets, and the
JSON + Markdown written under bench/results/ (bench/scaleout.py measures)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import machine_basics, package_version

NAME = "scaleout"
TARGET_SPEEDUP = 7.0
TARGET_SPEEDUP_WORKERS = 8
TARGET_MEDIAN_LATENCY_MS = 100.0


def machine_info() -> dict[str, Any]:
    """Like bench/common.py's, without torch (nothing here loads it)."""
    info: dict[str, Any] = {
        **machine_basics(),
        "SQLAlchemy": package_version("SQLAlchemy"),
        "asyncpg": package_version("asyncpg"),
    }
    with contextlib.suppress(AttributeError):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    return info


def note_end_load(machine: dict[str, Any]) -> None:
    """Add the 1-minute load average at the end of a run to ``machine_info()``'s record."""
    with contextlib.suppress(OSError):
        machine["load_average_1m_end"] = round(os.getloadavg()[0], 2)


def configure_logging(verbose: bool) -> None:
    """The bench commands' logging: warnings (``-v``: info) with time stamps, to stderr."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def verdicts(levels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_n = {level["workers"]: level for level in levels}
    top = by_n.get(TARGET_SPEEDUP_WORKERS)
    one = by_n.get(1)
    speedup = top["speedup"] if top is not None else None
    latency = one["latency"]["enqueue_to_start_ms"].get("median") if one is not None else None
    return {
        "speedup_at_8": speedup,
        "speedup_meets_target": None if speedup is None else speedup >= TARGET_SPEEDUP,
        "median_latency_ms_one_idle_worker": latency,
        "latency_meets_target": None if latency is None else latency <= TARGET_MEDIAN_LATENCY_MS,
    }


def build_document(
    config: dict[str, Any], machine: dict[str, Any], result: dict[str, Any]
) -> dict[str, Any]:
    """``config`` is the run's ``RunConfig`` as a dict (bench/scaleout.py measures; this
    module only writes, so it imports nothing from there)."""
    machine = {**machine, "postgresql": result["postgresql"]}
    return {
        "benchmark": NAME,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            **config,
            "worker_dispatcher": {
                "concurrency": 1,
                "lease_seconds": 30,
                "reap_seconds": 5,
                "poll_seconds": 5,
            },
            "controller": "services with engine=None (facts from the workers table), "
            "RenderService.request, one avatar per member",
        },
        "target": {
            "speedup_at_8_workers": TARGET_SPEEDUP,
            "median_enqueue_to_start_ms_idle": TARGET_MEDIAN_LATENCY_MS,
        },
        "levels": result["levels"],
        "finishes_found_by_polling": result["finishes_found_by_polling"],
        "verdicts": verdicts(result["levels"]),
    }


def _verdict(value: bool | None) -> str:
    return {True: "**meets**", False: "**misses**", None: "not measured"}[value]


def markdown(document: dict[str, Any]) -> str:
    m, s, v = document["machine"], document["settings"], document["verdicts"]
    most = max(lv["workers"] for lv in document["levels"])
    render_ms = s["render_seconds"] * 1000
    lines = [
        "# Job queue scale-out (PostgreSQL, fixed-time renders, CPU machine)",
        "",
        f"Measured {document['measured_at']} on {m['nproc']} × {m['cpu_model']} "
        f"({m.get('ram_gib')} GiB), {m['platform']}, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']}, SQLAlchemy {m['SQLAlchemy']}, asyncpg {m['asyncpg']}; "
        f"load average (1 min) at start {m.get('load_average_1m')}, at the end "
        f"{m.get('load_average_1m_end')} (a shared machine: other work may have run meanwhile).",
        "",
        f"**This {m['nproc']}-core machine hosts everything**: PostgreSQL, the controller (the "
        f"bot's side) and up to {most} worker processes ({most + 1} Python processes). A "
        "render is a sleep, so workers mostly wait, but every claim, outcome and notification "
        "costs CPU on these shared cores.",
        "",
        f"Each worker is a process (`python -m bench.scaleout_worker`) running the real job "
        f"runtime (`build_services` + `Services.start`: LISTEN/NOTIFY listener, job loop with "
        f"1 slot, lease 30 s, reap 5 s, poll 5 s) with `FixedTimeEngine`, whose render is a "
        f"{render_ms:g} ms sleep. The controller enqueues through `RenderService.request` "
        f"(services without an engine) for {s['users']} members with one avatar each.",
        "",
        "## Throughput",
        "",
        f"{s['jobs_per_worker']} × N jobs enqueued back to back; jobs/s = jobs ÷ (first enqueue "
        "→ the controller hearing the last `finished` event); median of "
        f"{s['repeats']} run(s). Ideal = N ÷ render time. Jobs per worker and enqueue rate: "
        "the last run; machine busy (all cores, PostgreSQL and any other load included) and "
        "CPU per job (all worker processes / the PostgreSQL server's processes): median of "
        "the runs.",
        "",
        "| workers | jobs | jobs/s (median) | runs | ideal | efficiency | speedup vs 1 "
        "| jobs per worker | enqueue rate | machine busy | worker / PG CPU ms per job |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lv in document["levels"]:
        runs = lv["throughput_runs"]
        last = runs[-1]
        lines.append(
            f"| {lv['workers']} | {last['jobs']} | {lv['jobs_per_s']:.2f} "
            f"| {', '.join(f'{r:.2f}' for r in lv['jobs_per_s_all'])} "
            f"| {lv['ideal_jobs_per_s']:.2f} | {lv['efficiency']:.0%} "
            f"| {lv['speedup']:.2f}× "
            f"| {min(last['jobs_per_worker'], default=0)}–{max(last['jobs_per_worker'], default=0)}"
            f" | {last['enqueue_per_s']}/s | {lv['machine_busy_fraction_median']:.0%} "
            f"| {lv['worker_cpu_ms_per_job_median']:.1f} / "
            f"{lv['postgres_cpu_ms_per_job_median']:.1f} |"
        )
    lines += [
        "",
        "## Wake-up latency",
        "",
        f"One job at a time, every worker idle ({s['latency_gap_seconds']:g} s pause before "
        "each enqueue), the next after the previous finished. Latency = the job row's "
        "`started_at − created_at`: `created_at` is stamped by the controller when the enqueue "
        "transaction begins, `started_at` by the worker that claims it (same machine clock), so "
        "it covers the enqueue transaction, the notification, the wake-up and the claim.",
        "",
        "| workers | samples | median | p90 | min | max | `request()` call median "
        "| claim → done median |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lv in document["levels"]:
        lat = lv["latency"]
        e, c, r = lat["enqueue_to_start_ms"], lat["request_call_ms"], lat["start_to_finish_ms"]
        lines.append(
            f"| {lv['workers']} | {lat['samples']} | {e['median']:.1f} ms | {e['p90']:.1f} ms "
            f"| {e['min']:.1f} ms | {e['max']:.1f} ms | {c['median']:.1f} ms "
            f"| {r['median']:.1f} ms |"
        )
    all_done = all(lv["all_done"] for lv in document["levels"])
    lines += [
        "",
        "## Verdicts",
        "",
        f"- Throughput at {TARGET_SPEEDUP_WORKERS} workers ÷ 1 worker: "
        + (f"{v['speedup_at_8']:.2f}×" if v["speedup_at_8"] is not None else "—")
        + f" (target ≥ {TARGET_SPEEDUP:g}×): {_verdict(v['speedup_meets_target'])}.",
        "- Median enqueue-to-start latency, one idle worker: "
        + (
            f"{v['median_latency_ms_one_idle_worker']:.1f} ms"
            if v["median_latency_ms_one_idle_worker"] is not None
            else "—"
        )
        + f" (target ≤ {TARGET_MEDIAN_LATENCY_MS:g} ms): {_verdict(v['latency_meets_target'])}.",
        "",
        (
            "Every job of every run finished `done`"
            if all_done
            else "**Some jobs did not finish `done`** (see the JSON)"
        )
        + "; finishes found only by polling (lost notifications): "
        + f"{document['finishes_found_by_polling']}. Worker exit codes: "
        + ", ".join(
            f"{lv['workers']}: {sorted(set(lv['worker_exit_codes']))}" for lv in document["levels"]
        )
        + "; warnings or errors in the workers' logs: "
        + str(sum(len(lv["worker_log_problems"]) for lv in document["levels"]))
        + ".",
        "",
    ]
    return "\n".join(lines)


def write_results(
    out: Path,
    stem: str,
    document: dict[str, Any],
    render: Callable[[dict[str, Any]], str] = markdown,
) -> Path:
    """``<out>/<stem>.json`` and the ``.md`` that ``render`` makes of it (the scale-out
    table by default; the soak and the queue's ceiling pass their own)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    path.with_suffix(".md").write_text(render(document))
    return path
