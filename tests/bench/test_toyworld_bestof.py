"""`python -m bench.toyworld_bestof --quick` trains the quick toy world and compares best of k
with best of 1 through the engine. Quality is never asserted (the quick sizes learn nothing):
what is checked is the result's structure and the budgets each way of posting an image spends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import toyworld_bestof
from bench.toyworld_plan import QUICK


@pytest.mark.usefixtures("torch_globals")
def test_quick_run_compares_best_of_k_with_best_of_1(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["--quick", "--workdir", str(work), "--out", str(out), "--threads", "1"]
    assert toyworld_bestof.main([*argv, "--budget", "4", "--k", "2"]) == 0
    document = json.loads((out / f"{toyworld_bestof.STEM}.json").read_text())
    assert document["benchmark"] == "toyworld-bestof"
    assert document["plan"]["quick"] is True
    rows = {row["choice"]: row for row in document["choices"]}
    assert [(r["candidates"], r["steps_each"]) for r in rows.values()] == [
        (1, 4), (2, 2), (2, 4), (1, 2)
    ]  # fmt: skip
    # Best of 2 at the same budget spends what best of 1 does; at the same steps, twice it.
    budgets = [r["steps_per_posted_image"] for r in rows.values()]
    assert budgets == [4, 4, 8, 2]
    posted = len(document["heldout"]) * 5  # one image per place
    assert len(document["heldout"]) == QUICK.eval_subjects
    for row in rows.values():
        assert row["posted"] == posted
        for scorer in (f"identity_{name}" for name in toyworld_bestof.SCORERS):
            interval = row[scorer]
            assert 0.0 <= interval["low"] <= interval["mean"] <= interval["high"] <= 1.0
        assert 0.0 <= row["subject_found_rate"] <= 1.0
    # Choosing by the encoded photos' identity never posts a worse one than the first seed.
    best_of_1 = document["per_subject"]["best of 1"]["selection"]
    chosen = document["per_subject"]["best of 2, same steps"]["selection"]
    assert all(c >= b for c, b in zip(chosen, best_of_1, strict=True))
    differences = rows["best of 2, same budget"]["vs_best_of_1"]
    assert set(differences) == set(toyworld_bestof.SCORERS)
    assert set(document["timings"]) == {"data", "vae", "unet", "instantbooth", "best of k"}
    text = (out / f"{toyworld_bestof.STEM}.md").read_text()
    assert text.startswith("# Toy world: best of k")
    assert "Quick run" in text
