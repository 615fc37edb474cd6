"""A ``Waker`` (bot/services/dispatcher.py) built on discord.py's own event dispatch.

``wake`` dispatches a custom event; ``wait`` is ``Client.wait_for`` on it. For the bot this is
the same as an ``asyncio.Event``, but the wait is visible to tooling that drives discord.py:
SimCord, which the tests use, recognises a ``wait_for`` as idle and moves its timeout with its
virtual clock, so tests stay deterministic without a second job loop of their own.
"""

from __future__ import annotations

import discord


class DiscordWaker:
    def __init__(self, client: discord.Client, name: str) -> None:
        self._client = client
        self._name = name
        # A wake-up before anyone waits must not be lost (dispatch only reaches live waits).
        self._pending = False

    def wake(self) -> None:
        self._pending = True
        self._client.dispatch(self._name)

    def clear(self) -> None:
        self._pending = False

    async def wait(self, seconds: float) -> bool:
        if self._pending:
            self._pending = False
            return True
        try:
            await self._client.wait_for(self._name, timeout=max(seconds, 0.0))
        except TimeoutError:
            return False
        finally:
            self._pending = False
        return True
