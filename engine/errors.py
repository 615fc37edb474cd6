"""Engine failures. None of these is user-facing: the service layer turns them into
``AvatarbotError``s with user-safe messages (or into an internal error with a reference).

They are precise on purpose, like diffusers' loaders: an operator reading a log should know
exactly what is missing and how to get it.
"""

from __future__ import annotations

# Not an ``EngineError``: the same name is unknown to the services (the workers' published
# facts) and to the engine (its profile), so it is defined once, with the shared kinds.
from kinds import UnknownPersonalizer as UnknownPersonalizer


class EngineError(Exception):
    """Root of every engine failure."""


class InvalidRequest(EngineError, ValueError):
    """A ``RenderRequest`` (or an encode call) outside what the engine accepts."""


class MissingWeights(EngineError):
    """Model weights or configs are not where the profile says, or cannot be fetched.

    ``what`` names the component (e.g. "base model", "IP-Adapter weights"), ``location`` the
    hub id, file or folder that was tried, ``how`` the command or setting that fixes it.
    """

    def __init__(self, what: str, location: str, how: str, *, reason: str | None = None) -> None:
        self.what = what
        self.location = location
        self.how = how
        self.reason = reason
        detail = f" ({reason})" if reason else ""
        super().__init__(f"missing {what}: {location}{detail}. {how}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type without one), for ``reason``."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class StaleFeatures(EngineError):
    """Cached features were made by another encoder (or an older format): re-encode them
    from the stored photos; never reuse them silently."""

    def __init__(self, expected: str, got: str) -> None:
        self.expected = expected
        self.got = got
        super().__init__(
            f"stale concept features: made by encoder {got!r}, this engine needs {expected!r}; "
            "re-encode them from the stored photos"
        )


class CorruptFeatures(EngineError, ValueError):
    """Bytes that are not readable avatarbot concept features."""


class RequestCancelled(EngineError):
    """The request was cancelled before it finished; no images were produced for it."""


class UnknownProfile(EngineError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"unknown engine profile {name!r}; known profiles: {', '.join(known)}")


class EngineClosed(EngineError):
    """The engine (or its worker) was shut down; no new work is accepted."""
