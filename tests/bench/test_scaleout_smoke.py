"""The scale-out benchmark runs end to end on PostgreSQL with 1 and 2 worker processes and
writes results of the documented shape. Speed is never asserted (bench/results/ holds the
measurements); what is checked is that every job it timed really ran and finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scaleout

SMALL = scaleout.RunConfig(
    workers=(1, 2),
    render_seconds=0.02,
    jobs_per_worker=3,
    repeats=2,
    latency_samples=3,
    latency_gap_seconds=0.05,
    warmup_per_worker=1,
    users=3,
)


@pytest.mark.postgres
async def test_scaleout_runs_and_every_job_finishes(
    postgres_server_url: str, tmp_path: Path
) -> None:
    document = await scaleout.run_on(postgres_server_url, SMALL)
    path = scaleout.write_results(tmp_path, "scaleout-test", document)

    saved = json.loads(path.read_text())
    assert saved["benchmark"] == "scaleout"
    assert saved["machine"]["nproc"] >= 1
    assert saved["machine"]["cpu_model"]
    assert saved["machine"]["python"]
    assert saved["machine"]["postgresql"]
    assert saved["settings"]["workers"] == [1, 2]
    assert saved["finishes_found_by_polling"] == 0

    levels = {level["workers"]: level for level in saved["levels"]}
    assert set(levels) == {1, 2}
    for n, level in levels.items():
        assert level["all_done"] is True
        assert level["worker_exit_codes"] == [0] * n
        assert level["worker_log_problems"] == []
        # Every render the controller queued ran in one of this level's processes.
        latency = level["latency"]
        assert latency["samples"] == latency["done"] == SMALL.latency_samples
        assert len(latency["all_enqueue_to_start_ms"]) == SMALL.latency_samples
        assert all(ms >= 0 for ms in latency["all_enqueue_to_start_ms"])
        assert set(latency["enqueue_to_start_ms"]) >= {"median", "p90", "min", "max"}
        runs = level["throughput_runs"]
        assert len(runs) == SMALL.repeats
        for run in runs:
            assert run["jobs"] == run["done"] == SMALL.jobs_per_worker * n
            assert sum(run["jobs_per_worker"]) == run["jobs"]
            assert run["jobs_per_s"] > 0
            assert run["wall_s"] > 0
        expected = SMALL.warmup_per_worker * n + SMALL.latency_samples
        expected += SMALL.jobs_per_worker * n * SMALL.repeats
        assert sum(level["renders_per_worker_process"]) == expected
        assert level["jobs_per_s"] > 0
        assert level["speedup"] > 0
    assert levels[1]["speedup"] == 1.0

    verdicts = saved["verdicts"]
    assert verdicts["speedup_at_8"] is None  # 8 workers were not measured here
    assert verdicts["speedup_meets_target"] is None
    assert verdicts["median_latency_ms_one_idle_worker"] is not None
    assert isinstance(verdicts["latency_meets_target"], bool)

    markdown = path.with_suffix(".md").read_text()
    assert "## Throughput" in markdown
    assert "## Wake-up latency" in markdown
    assert "## Verdicts" in markdown
    assert "Every job of every run finished `done`" in markdown


def test_quick_arguments() -> None:
    args = scaleout.parse_args(["--quick", "--out", "/tmp/x"])
    assert args.workers == [1, 2]
    assert args.stem == "scaleout-cpu-quick"
    config = scaleout.config_of(scaleout.parse_args(["--workers", "1", "8"]))
    assert config.workers == (1, 8)
    assert config.render_seconds == scaleout.RunConfig().render_seconds
