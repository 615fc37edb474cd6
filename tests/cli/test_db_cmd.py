"""`avatarbot db ...` on the configured database (AVATARBOT_DATABASE_URL), both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bot.cli import main
from db.migrate import head_revision


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().out


async def _in_thread(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    # The CLI runs its own event loop (asyncio.run): off the test's loop, in a thread.
    import asyncio

    return await asyncio.to_thread(_run, argv, capsys)


async def test_db_upgrade_current_downgrade(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVATARBOT_DATABASE_URL", db_url)
    head = head_revision()

    code, out = await _in_thread(["db", "current"], capsys)
    assert code == 0 and out.startswith("base")

    code, out = await _in_thread(["db", "upgrade"], capsys)
    assert code == 0 and f"{head} (head)" in out
    if make_url(db_url).get_backend_name() == "sqlite":
        assert Path(make_url(db_url).database or "").is_file()

    code, out = await _in_thread(["db", "current"], capsys)
    assert (code, out.strip()) == (0, f"{head} (head)")

    code, out = await _in_thread(["db", "downgrade", "base", "--yes"], capsys)
    assert code == 0 and "base" in out
    code, out = await _in_thread(["db", "upgrade", "--revision", head], capsys)
    assert code == 0 and head in out


def test_db_upgrade_creates_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AVATARBOT_DATABASE_URL", raising=False)
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path / "data"))
    code, out = _run(["db", "upgrade"], capsys)
    assert code == 0 and "(head)" in out
    assert (tmp_path / "data" / "avatarbot.db").is_file()
    assert _run(["db", "current"], capsys) == (0, f"{head_revision()} (head)\n")
