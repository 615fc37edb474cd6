"""bench/decode_budget.py runs end to end (1 and 2 MP, seconds) and writes results of the
committed shape; the committed results show the intake's estimate above every measured peak.
Memory is never asserted on this machine's run: bench/results/ holds the measurements."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import decode_budget
from bot.services.decode_budget import BYTES_PER_PIXEL, DecodeKind

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")


def test_quick_run_writes_json_and_markdown(tmp_path: Path) -> None:
    assert decode_budget.main(["--quick", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "decode-budget-cpu.json").read_text())
    assert (tmp_path / "decode-budget-cpu.md").read_text() == decode_budget.render_markdown(doc)
    cases = {row["case"] for row in doc["rows"]}
    assert cases == set(decode_budget.CASES) | set(decode_budget.ANIMATED)
    assert set(doc["per_kind"]) == {str(k) for k in DecodeKind}
    for row in doc["rows"]:
        assert row["peak_mb"] >= 0 and row["counted_pixels"] > 0
        if row["case"] in decode_budget.ANIMATED:
            assert row["outcome"] == "animated"
        else:
            assert row["outcome"] == [1024, 768]


def test_committed_results_cover_every_peak_with_the_current_estimates() -> None:
    path = decode_budget.RESULTS_DIR / "decode-budget-cpu.json"
    doc = json.loads(path.read_text())
    assert path.with_suffix(".md").read_text() == decode_budget.render_markdown(doc)
    for kind, figures in doc["per_kind"].items():
        assert figures["covers_every_peak"], kind
        # Measured with the estimates in use (rerun the bench after changing them).
        assert figures["estimate"] == BYTES_PER_PIXEL[DecodeKind(kind)], kind
    sizes = {(row["width"], row["height"]) for row in doc["rows"]}
    assert (5656, 4242) in sizes  # 24 MP measured, not only the quick sizes
