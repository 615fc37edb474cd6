"""FailureLog: a retried step's log is one line per change of state, not one per retry."""

from __future__ import annotations

import logging

import pytest

from bot.services.failure_log import FailureLog

REFUSED = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")


def test_one_line_per_change_and_a_count(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.failure_log")
    caplog.set_level(logging.INFO, logger=logger.name)
    log = FailureLog(logger, "the step")
    log.worked()  # nothing failed: nothing to say
    for _ in range(5):
        log.failed(REFUSED)
    bug = ValueError("a bug")
    log.failed(bug)  # another failure: said, with its traceback (not a database blink)
    log.failed(bug)
    log.worked()
    log.worked()
    said = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert said[0] == ("ERROR", f"the step failed; retrying: {REFUSED}", False)
    assert said[1][:2] == ("ERROR", "the step failed; retrying") and said[1][2]
    assert said[2][0] == "INFO" and said[2][1].startswith("the step works again after 7 failed")
    assert len(said) == 3
