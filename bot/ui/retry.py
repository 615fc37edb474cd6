"""Retrying Discord calls that failed for a transient reason (5xx, 429).

discord.py's own HTTP client already retries some of these; this outer layer is for calls
whose loss would lose a member's result (deliveries), and gives up loudly after a few tries so
the caller can keep the job for a later attempt instead of dropping it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import discord

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ATTEMPTS = 4
DEFAULT_BASE_DELAY = 0.25
MAX_DELAY = 10.0


def is_transient(error: BaseException) -> bool:
    """True for failures worth retrying: rate limits and Discord's server errors."""
    if isinstance(error, discord.RateLimited):
        return True
    return isinstance(error, discord.HTTPException) and (error.status == 429 or error.status >= 500)


def _delay(error: BaseException, attempt: int, base: float) -> float:
    if isinstance(error, discord.RateLimited):
        return min(MAX_DELAY, error.retry_after)
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    retry_after = headers.get("Retry-After") if hasattr(headers, "get") else None
    if retry_after is not None:
        try:
            return min(MAX_DELAY, float(retry_after))
        except ValueError:
            pass
    return min(MAX_DELAY, base * 2**attempt)


async def with_retries(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int = DEFAULT_ATTEMPTS,
    base_delay: float = DEFAULT_BASE_DELAY,
) -> T:
    """Run ``operation`` until it succeeds, retrying transient failures with backoff.

    Non-transient errors (403, 404, 400...) are raised at once; the last transient one is
    raised after ``attempts`` tries.
    """
    for attempt in range(attempts):
        try:
            return await operation()
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts - 1:
                raise
            delay = _delay(exc, attempt, base_delay)
            logger.warning(
                "%s failed (%s), retry %d/%d in %.2f s", what, exc, attempt + 1, attempts - 1, delay
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
