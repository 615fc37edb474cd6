"""`avatarbot avatar create|render` beside a running `avatarbot worker` (issue 24, point 5).

On a scale-out database with a live render worker, the CLI queues the job and waits for its
events while the worker runs it: the CLI loads no engine, writes the worker's PNGs, and the
member is charged once. ``--no-wait`` prints the job's id and exits. With no live worker (the
worker stopped), the CLI runs the job itself, as it does on a fresh database.

Every reference shown to a user is in the log at ERROR, with where it came from: the one
``run_job`` raises for a job another worker holds (what the CLI showed, unlogged, when it raced a
worker), a bare ``InternalError`` reported to a member, a ``DecryptionError``.

The CLI runs in a thread (``main`` runs its own event loop) while this test's loop reads the
worker's stderr; every wait is bounded so a hang fails the test.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.cli import main
from bot.config import Settings
from bot.errors import InternalError
from bot.services.container import build_services
from bot.services.crypto import DecryptionError
from bot.services.ports import EnginePort
from bot.services.workers import WorkerRegistry
from bot.ui.errors import user_message
from db.models import JobAttempt, Worker
from db.session import Database
from db.types import utcnow
from tests.cli.test_avatar_cmd import SharedEngine, assert_tiny_pngs
from tests.fixtures.services import TINY, make_photo
from tests.fixtures.workers import start_worker, stop_worker

WAIT = 240.0  # the bound on any single wait: a hang fails, a slow machine does not


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_the_cli_waits_for_a_live_worker(
    db_url: str,
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny_engine_port: EnginePort,
) -> None:
    monkeypatch.setenv("AVATARBOT_DATABASE_URL", db_url)
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", "tiny")
    monkeypatch.setenv("AVATARBOT_ENGINE__DEFAULT_STEPS", "2")
    monkeypatch.delenv("AVATARBOT_DATA_KEY", raising=False)
    loads: list[str] = []
    lend_engine = False

    async def build_engine_port(settings: object) -> EnginePort:
        loads.append("engine")
        if not lend_engine:
            raise AssertionError("the CLI loaded an engine while a worker runs the jobs")
        return SharedEngine(tiny_engine_port)  # type: ignore[return-value]

    monkeypatch.setattr("bot.engine_adapter.build_engine_port", build_engine_port)
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_photo(3))

    async def cli(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.wait_for(
            asyncio.to_thread(main, ["--log-level", "WARNING", "avatar", *argv]), WAIT
        )
        out = capsys.readouterr()
        return code, out.out, out.err

    ready = asyncio.Event()

    def seen(line: str) -> None:
        if "running; SIGTERM" in line:
            ready.set()

    worker = await start_worker(
        db_url, tmp_path / "worker", seen, {"AVATARBOT_ENGINE__DEFAULT_STEPS": "2"}
    )
    try:
        # Ready, or exited (refused to start): whichever comes first.
        started = asyncio.create_task(ready.wait())
        exited = asyncio.create_task(worker.process.wait())
        await asyncio.wait({started, exited}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        exited.cancel()
        if not ready.is_set():
            raise AssertionError("the worker did not start:\n" + "\n".join(worker.lines))

        code, out, err = await cli(
            "create", "--user", "42", "--name", "Mia", "--kind", "object", str(photo), "--consent"
        )
        assert code == 0, err
        assert "created object avatar “Mia” with 1 photo(s)" in out

        out_dir = tmp_path / "renders"
        code, out, err = await cli(
            "render", "--user", "42", "--avatar", "Mia", "--prompt", "a mug",
            "--count", "2", "--seed", "7", "--out", str(out_dir),
        )  # fmt: skip
        assert code == 0, err
        # Job 1 created the avatar, job 2 rendered it: both on the worker, none here.
        written = out.split()
        assert written == [str(out_dir / "job2-seed7.png"), str(out_dir / "job2-seed8.png")]
        assert_tiny_pngs(written)
        assert "render: 100%" in err
        assert "note: profile tiny runs random weights" in err
        assert loads == []
        async with database.begin(readonly=True) as session:
            workers = set(await session.scalars(select(Worker.id)))
            attempts = list(await session.execute(select(JobAttempt.job_id, JobAttempt.worker_id)))
        assert sorted(job for job, _ in attempts) == [1, 2]
        assert {who for _, who in attempts} <= workers  # the worker's registered loop

        code, out, _ = await cli("usage", "--user", "42")
        assert code == 0 and out.startswith("1 of 5 renders used today")

        code, out, err = await cli(
            "render", "--user", "42", "--avatar", "Mia", "--prompt", "a cup", "--no-wait"
        )
        assert code == 0, err
        assert out.strip() == "3" and "job 3 queued" in err and loads == []
    finally:
        await stop_worker(worker)

    # The worker stopped cleanly: no live worker, so the CLI runs the queue itself (job 3 if
    # the worker handed it back, then job 4).
    lend_engine = True
    code, out, err = await cli(
        "render", "--user", "42", "--avatar", "Mia", "--prompt", "a pot", "--seed", "1",
        "--out", str(tmp_path / "here"),
    )  # fmt: skip
    assert code == 0, err
    assert out.split() == [str(tmp_path / "here" / "job4-seed1.png")]
    assert loads == ["engine"]


async def test_live_workers_are_the_recent_unstopped_ones_with_an_engine(
    database: Database, tiny_engine_port: EnginePort
) -> None:
    with_engine = WorkerRegistry(database, tiny_engine_port.facts())
    for name in ("renders", "stopped", "silent"):
        await with_engine.register(name)
    await WorkerRegistry(database).register("reaps-only")  # a bot without an engine
    await with_engine.stopped("stopped")
    async with database.begin() as session:
        silent = await session.get(Worker, "silent")
        assert silent is not None
        silent.seen_at = utcnow().replace(year=2000)
    live = await WorkerRegistry(database).live(within_seconds=3600)
    assert [w.id for w in live] == ["renders"]


async def test_run_job_logs_the_reference_it_raises(
    database: Database,
    tmp_path: Path,
    tiny_engine_port: EnginePort,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job another worker holds: ``run_job`` cannot run it, and the reference it raises is
    in the log at ERROR, with where it was raised."""
    settings = Settings(data_dir=tmp_path / "data", engine=TINY)
    services = await build_services(settings, database, tiny_engine_port)
    try:
        files = [("p.png", make_photo(5, size=256))]
        ticket = await services.avatars.create(42, None, "Mia", "object", files, consent=True)
        async with database.begin() as session:
            from db import queue

            claimed = await queue.claim_next(
                session, worker_id="elsewhere", lease_seconds=600, now=utcnow()
            )
            assert claimed is not None and claimed.id == ticket.job_id
        with caplog.at_level(logging.ERROR), pytest.raises(InternalError) as raised:
            await services.dispatcher.run_job(ticket.job_id)
    finally:
        await services.aclose()
    [record] = [r for r in caplog.records if raised.value.reference in r.getMessage()]
    assert record.levelno == logging.ERROR and record.stack_info
    assert f"job {ticket.job_id} is running on another worker" in record.getMessage()


def test_references_shown_to_members_are_logged_with_their_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise InternalError()  # as bot/app.py does for a bug
    except InternalError as exc:
        bare = exc
    with caplog.at_level(logging.ERROR):
        shown = user_message(bare)
        undecryptable = DecryptionError("unknown key id 'k9'")
    assert bare.reference in shown
    [logged] = [r for r in caplog.records if bare.reference in r.getMessage()]
    assert logged.levelno == logging.ERROR and logged.exc_info is not None
    [logged] = [r for r in caplog.records if undecryptable.reference in r.getMessage()]
    assert logged.levelno == logging.ERROR and logged.stack_info


def test_a_host_that_runs_no_jobs_loads_no_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``AVATARBOT_RUN_WORKER=false``: the CLI leaves the jobs to the workers, even when none
    has ever started (then the request is refused, as the bot refuses it)."""
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", "tiny")
    monkeypatch.setenv("AVATARBOT_RUN_WORKER", "false")
    monkeypatch.delenv("AVATARBOT_DATABASE_URL", raising=False)

    async def build_engine_port(settings: object) -> EnginePort:
        raise AssertionError("the CLI loaded an engine on a host that runs no jobs")

    monkeypatch.setattr("bot.engine_adapter.build_engine_port", build_engine_port)
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_photo(4))
    argv = ["create", "--user", "42", "--name", "Mia", "--kind", "object", str(photo)]
    code = main(["--log-level", "WARNING", "avatar", *argv, "--consent"])
    assert code == 1
    assert "No render worker has started yet" in capsys.readouterr().err


def test_no_weights_needed_where_no_engine_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Offline without a real profile's weights: ``--no-wait`` and a host that runs no jobs
    are not refused for weights they never load."""
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", "sd15-ip-adapter-plus-face")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("AVATARBOT_DATABASE_URL", raising=False)
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_photo(4))
    argv = ["avatar", "create", "--user", "42", "--name", "Mia", str(photo), "--consent"]

    assert main(argv) != 0
    assert "missing" in capsys.readouterr().err  # it would load them: refused for them
    assert main([*argv, "--no-wait"]) == 1
    assert "No render worker has started yet" in capsys.readouterr().err
    monkeypatch.setenv("AVATARBOT_RUN_WORKER", "false")
    assert main(argv) == 1
    assert "No render worker has started yet" in capsys.readouterr().err
