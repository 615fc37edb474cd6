"""The fault-injection soak, short (bench/soak.py ``QUICK``: a few hundred jobs, 3 worker
processes, SIGKILLs, SIGTERMs, a PostgreSQL stop, backend terminations, cancels and a
forget-me): it runs to its end, injects the faults it says, writes results of the documented
shape, and its checks find nothing wrong (none lost, none rendered twice, no finished render
redone, no illegitimate failure, ledger exact, nothing stuck).

It needs PostgreSQL binaries (the soak stops and starts a cluster of its own, so a server
given by $AVATARBOT_TEST_POSTGRES_URL cannot serve): skipped without them, failed when
AVATARBOT_REQUIRE_POSTGRES=1, like the other PostgreSQL tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import soak
from bench.scaleout_processes import PgCluster, throwaway_cluster
from bench.scaleout_report import write_results
from bench.soak_report import markdown
from tests.fixtures.databases import _no_postgres


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    try:
        with throwaway_cluster() as started:
            yield started
    except RuntimeError as exc:
        _no_postgres(str(exc))


@pytest.mark.postgres
@pytest.mark.slow
async def test_quick_soak_loses_nothing(cluster: PgCluster, tmp_path: Path) -> None:
    config = soak.QUICK
    document = await soak.run_soak(cluster, config, tmp_path / "logs")
    path = write_results(tmp_path, "soak-test", document, markdown)
    saved = json.loads(path.read_text())
    assert saved["benchmark"] == "soak"
    assert saved["settings"]["jobs"] == config.jobs

    faults = saved["faults"]
    assert faults["sigkill"] >= 1
    assert faults["sigterm"] >= 1
    assert len(faults["outages"]) == len(config.outages)
    assert len(faults["backend_terminations"]) == len(config.terminations)
    assert len(faults["forget_me"]) == len(config.forget_me)
    assert sum(faults["cancels"].values()) >= 1

    checks = saved["checks"]
    assert checks["accepted"] == config.jobs
    assert "## Verdicts" in path.with_suffix(".md").read_text()
    figures = {
        "lost": checks["lost"],
        "stuck": checks["stuck"],
        "renders": checks["renders"],
        "failures": checks["failures"],
        "ledger": checks["ledger"],
        "worker logs": saved["worker_logs"]["counts"],
    }
    assert checks["verdicts"] == dict.fromkeys(checks["verdicts"], True), figures
    assert saved["worker_logs"]["counts"]["task exception never retrieved"] == 0


def test_quick_arguments() -> None:
    args = soak.parse_args(["--quick", "--out", "/tmp/x", "--jobs", "120"])
    assert args.stem == "soak-cpu-quick"
    config = soak.config_of(args)
    assert config.jobs == 120
    assert config.workers == soak.QUICK.workers
    assert soak.config_of(soak.parse_args([])).jobs >= 10_000
