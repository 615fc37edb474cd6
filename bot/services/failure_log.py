"""Logging a step that is retried until it works: one line when it starts failing, one when
the failure changes, one when it works again with the count of failed tries; not a line (and
a traceback) per retry. Issue 24: a 6 s database outage wrote hundreds of lines.

A database blinking (``db.faults.is_transient``) is logged in one line, without a traceback:
the reason says it all. Any other error keeps its traceback, once: it is a bug to find.
"""

from __future__ import annotations

import logging
import time

from db.faults import is_transient


def one_line(error: BaseException) -> str:
    """An error in one line for the log (SQLAlchemy appends its SQL and a link)."""
    return str(error).split("\n", 1)[0] or type(error).__name__


class FailureLog:
    """The log of one retried step (``what``: "the job feed's step", say), on ``logger``."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger = logger
        self._what = what
        self.failures = 0
        self._since = 0.0
        self._last: tuple[type[BaseException], str] | None = None

    def failed(self, error: BaseException) -> None:
        """The step failed and will be retried: logged when failing starts or changes."""
        if self.failures == 0:
            self._since = time.monotonic()
        self.failures += 1
        reason = one_line(error)
        if self._last == (type(error), reason):
            return
        self._last = (type(error), reason)
        if is_transient(error):
            self._logger.error("%s failed; retrying: %s", self._what, reason)
        else:
            self._logger.error("%s failed; retrying", self._what, exc_info=error)

    def worked(self) -> None:
        """The step worked: logged when it failed before."""
        if self.failures == 0:
            return
        self._logger.info(
            "%s works again after %d failed tries in %.1f s",
            self._what,
            self.failures,
            time.monotonic() - self._since,
        )
        self.failures = 0
        self._last = None
