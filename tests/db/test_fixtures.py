"""The PostgreSQL fixture never lets the PostgreSQL tests vanish silently in CI."""

from __future__ import annotations

import pytest

from tests.fixtures.databases import REQUIRE_POSTGRES_ENV, _no_postgres


def test_missing_postgres_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_POSTGRES_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception):
        _no_postgres("no binaries")


def test_missing_postgres_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_POSTGRES_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no binaries"):
        _no_postgres("no binaries")
