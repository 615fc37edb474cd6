"""The bot's job feed during a database outage (issue 24: a 6 s outage wrote hundreds of log
lines, a traceback per retry): one line when its step starts failing, one when it works again
with the count of failed tries, and the retry sweeps, so nothing the failed steps held is
lost."""

from __future__ import annotations

import logging

import pytest

from bot.services.results import JobView
from bot.ui.jobs import MAX_BACKOFF, MAX_POLL
from tests.fixtures.discord import SIMCORD, World

pytestmark = SIMCORD


async def test_an_outage_is_two_lines_of_the_job_feed_not_one_per_retry(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = world.bot.services.jobs
    real_active = jobs.active
    outage = {"down": True, "tries": 0, "sweeps_after": 0}

    async def active() -> list[JobView]:
        if outage["down"]:
            outage["tries"] += 1
            # What asyncpg raises, through SQLAlchemy, while PostgreSQL is stopped.
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        outage["sweeps_after"] += 1
        return await real_active()

    monkeypatch.setattr(jobs, "active", active)
    caplog.set_level(logging.INFO, logger="bot.ui.jobs")
    await world.env.advance_time(MAX_POLL)  # the idle feed's periodic sweep meets the outage
    await world.env.advance_time(4 * MAX_BACKOFF)  # and its retries, backing off
    tries = outage["tries"]
    assert tries >= 4
    outage["down"] = False
    await world.env.advance_time(MAX_BACKOFF)

    lines = [r for r in caplog.records if r.name == "bot.ui.jobs"]
    assert [r.levelname for r in lines] == ["ERROR", "INFO"], [r.getMessage() for r in lines]
    assert lines[0].exc_info is None  # a database blinking: its reason, no traceback
    assert "Connect call failed" in lines[0].getMessage()
    assert f"works again after {tries} failed tries" in lines[1].getMessage()
    assert outage["sweeps_after"] >= 1  # the retry swept what the failed steps held
