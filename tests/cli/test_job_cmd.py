"""`avatarbot job workers` says what is true of the job loops (issue 24): never run, running,
or run and stopped (listed with when they were last seen)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.cli import main
from bot.services.workers import WorkerRegistry
from db.migrate import upgrade
from db.session import Database


def _workers(capsys: pytest.CaptureFixture[str], *extra: str) -> list[str]:
    code = main(["--log-level", "WARNING", "job", "workers", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return out.splitlines()


async def _loops(url: str, start: list[str], stop: list[str]) -> None:
    database = Database.from_url(url)
    try:
        await upgrade(database)
        registry = WorkerRegistry(database)
        for worker_id in start:
            await registry.register(worker_id)
        for worker_id in stop:
            await registry.stopped(worker_id)
    finally:
        await database.dispose()


def test_job_workers_lists_the_stopped_loops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AVATARBOT_DATABASE_URL", raising=False)
    url = f"sqlite+aiosqlite:///{tmp_path / 'avatarbot.db'}"
    assert _workers(capsys) == ["no job loop has run against this database yet"]

    # Two workers ran and stopped: both listed, each with the time it stopped.
    asyncio.run(_loops(url, ["gpu0-1", "gpu1-2"], ["gpu0-1", "gpu1-2"]))
    first, *rows = _workers(capsys)
    assert first == "no job loop is running; 2 stopped (last seen first):"
    assert sorted(row.split("\t")[0] for row in rows) == ["gpu0-1", "gpu1-2"]
    assert all(row.split("\t")[-1].startswith("stopped 20") for row in rows), rows

    # One running again: it alone, and a count of the stopped ones that --all lists.
    asyncio.run(_loops(url, ["gpu0-3"], []))
    rows = _workers(capsys)
    assert rows[0].startswith("gpu0-3\tno engine\tstarted ") and "\tseen 20" in rows[0]
    assert rows[1:] == ["(2 stopped: --all lists them)"]
    everyone = [row.split("\t")[0] for row in _workers(capsys, "--all")]
    assert everyone[0] == "gpu0-3" and sorted(everyone[1:]) == ["gpu0-1", "gpu1-2"]
