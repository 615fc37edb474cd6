"""The queue-ceiling benchmark runs end to end on PostgreSQL (1 and 2 worker loops, then the
claim transaction alone) and writes results shaped like the committed ones. Speed is never
asserted; what is checked is that every queued job was claimed and run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import queue_ceiling
from bench.scaleout_report import write_results

SMALL = queue_ceiling.CeilingConfig(
    loops=(1, 2), jobs=8, users=2, claim_samples=4, claim_depths=(8,)
)
COMMITTED = Path(__file__).resolve().parents[2] / "bench" / "results" / "queue-ceiling-cpu.json"


@pytest.mark.postgres
async def test_queue_ceiling_runs_and_drains(postgres_server_url: str, tmp_path: Path) -> None:
    document = await queue_ceiling.run_on(postgres_server_url, SMALL)
    path = write_results(tmp_path, "ceiling-test", document, queue_ceiling.markdown)
    saved = json.loads(path.read_text())
    committed = json.loads(COMMITTED.read_text())
    assert list(saved) == list(committed)
    assert [lv["loops"] for lv in saved["levels"]] == [1, 2]
    for level in saved["levels"]:
        assert list(level) == list(committed["levels"][0])
        assert level["jobs"] == SMALL.jobs  # every queued job claimed and run
        assert level["claims_per_s"] > 0
        assert level["worker_exit_codes"] == [0] * level["processes"]
    (section,) = saved["claim_sections"]
    assert list(section) == list(committed["claim_sections"][0])
    assert section["samples"] == SMALL.jobs // 2
    assert set(saved["gpus_fed"]["at_serialised_ceiling"]) == {"1s", "5s"}
    assert "## GPUs one PostgreSQL can feed" in path.with_suffix(".md").read_text()
