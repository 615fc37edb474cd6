"""The one exception root for failures a user can cause or must be told about.

Every subclass carries a short, user-safe ``message`` (shown as-is in Discord or the CLI) and a
stable ``code`` (for logs, tests and JSON output). Anything that is *not* an ``AvatarbotError``
is a bug or an outage: it is logged in full and shown to users only as a generic failure with a
reference id (see ``InternalError``).
"""

from __future__ import annotations

import uuid
from datetime import datetime


class AvatarbotError(Exception):
    """Root of every user-facing error."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidPhoto(AvatarbotError):
    """A photo was refused by intake or by the subject checks.

    ``reason`` is a stable machine-readable code (e.g. ``unsupported_format``); ``filename`` is
    the name the user gave the file (never trusted for anything but messages).
    """

    code = "invalid_photo"

    def __init__(self, reason: str, message: str, *, filename: str | None = None) -> None:
        super().__init__(message, code=reason)
        self.reason = reason
        self.filename = filename


class InvalidInput(AvatarbotError):
    """A name, option or argument outside what is allowed."""

    code = "invalid_input"


class NotFound(AvatarbotError):
    code = "not_found"


class NotOwner(AvatarbotError):
    code = "not_owner"


class Forbidden(AvatarbotError):
    """The caller lacks a permission (e.g. an admin command by a member)."""

    code = "forbidden"


class QuotaExceeded(AvatarbotError):
    code = "quota_exceeded"

    def __init__(self, message: str, *, resets_at: datetime | None = None) -> None:
        super().__init__(message)
        self.resets_at = resets_at


class QueueFull(AvatarbotError):
    """A per-member or guild-wide queue cap; ``retry_at``: when to try again, if known."""

    code = "queue_full"

    def __init__(self, message: str, *, retry_at: datetime | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class RateLimited(AvatarbotError):
    """A per-member rate limit (renders per minute, creations per hour); ``retry_at``: the
    moment the oldest counted request leaves the window."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_at: datetime) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class PromptRefused(AvatarbotError):
    code = "prompt_refused"


class PromptScreened(AvatarbotError):
    """The worker's semantic prompt screen refused a render's prompt (before any GPU step).
    ``category`` is the policy category for logs and counts, never shown with the prompt."""

    code = "prompt_screened"

    def __init__(self, message: str, *, category: str) -> None:
        super().__init__(message)
        self.category = category


class ConsentRequired(AvatarbotError):
    code = "consent_required"


class InternalError(AvatarbotError):
    """A bug or outage, shown to users only with a reference id the operator can grep for."""

    code = "internal_error"

    def __init__(self, reference: str | None = None) -> None:
        self.reference = reference or uuid.uuid4().hex[:8]
        super().__init__(
            f"Something went wrong on our side (reference `{self.reference}`). "
            "Please try again later."
        )
