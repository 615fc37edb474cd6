"""Log formats: the default text lines, or one JSON object per line for log collectors
(``--log-format json`` / ``AVATARBOT_LOG_FORMAT=json``)."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"}``, plus ``"exception"`` (the traceback's
    text) when the record carries one; one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``"text"`` or ``"json"``."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str, log_format: str) -> None:
    """One handler on stderr for the whole process, in ``log_format``. Python warnings (a
    library's UserWarning) become records of the ``py.warnings`` logger, so they are JSON
    lines too when the logs are, not bare stderr text (issue 24)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler])
    logging.captureWarnings(True)


# Model libraries that log through a stderr handler of their own, skipping the root logger's
# (and so its format): "[transformers] ..." lines in the middle of JSON ones.
OWN_HANDLER_LIBRARIES = ("transformers", "diffusers")


def adopt_library_loggers() -> None:
    """Send the model libraries' records to the root logger's handler instead of their own.
    Call it before importing the engine: they warn while its modules import. Imports their
    logging modules (and so torch): only a process about to load the engine calls it."""
    for library in OWN_HANDLER_LIBRARIES:
        module = importlib.import_module(f"{library}.utils.logging")
        module.disable_default_handler()
        module.enable_propagation()
