"""The processes that run the job loop, and what their engines can do.

Every loop registers itself in ``workers`` at start (its engine's facts when it has one),
refreshes ``seen_at`` as it runs and marks itself stopped at a clean stop. A process that
renders nothing (the bot in the scale-out setup) asks ``current_facts`` what the render
workers' engine is: the facts of the most recently seen worker that has an engine. With no
worker ever registered, requests are refused with a message saying so; while workers restart,
requests still queue (on the last facts known) and run when one is back.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import null, select, update

from bot.errors import AvatarbotError
from bot.services.ports import EngineFacts
from db.models import Worker
from db.session import Database
from db.types import utcnow

logger = logging.getLogger(__name__)

# How long a process reuses facts read from the database before reading them again.
FACTS_CACHE_SECONDS = 5.0


class NoRenderWorker(AvatarbotError):
    def __init__(self) -> None:
        super().__init__(
            "No render worker has started yet, so nothing can be rendered. Please try again later.",
            code="no_worker",
        )


@dataclass(frozen=True)
class WorkerView:
    id: str
    host: str
    pid: int
    profile: str | None
    started_at: datetime
    seen_at: datetime
    stopped_at: datetime | None


class WorkerRegistry:
    """Registration of this process's loop, and the engine facts requests are checked with.

    ``local`` is this process's own engine's facts (embedded mode, workers): used directly,
    never read back from the database.
    """

    def __init__(self, database: Database, local: EngineFacts | None = None) -> None:
        self._db = database
        self.local = local
        self._cached: tuple[float, EngineFacts] | None = None

    async def register(self, worker_id: str) -> None:
        now = utcnow()
        values = {
            "host": socket.gethostname()[:255],
            "pid": os.getpid(),
            # SQL NULL, not JSON null: ``current_facts`` selects rows whose facts are set.
            "facts": self.local.to_json() if self.local else null(),
            "tokenizer": self.local.tokenizer_json if self.local else None,
            "started_at": now,
            "seen_at": now,
            "stopped_at": None,
        }
        async with self._db.begin() as session:
            row = await session.get(Worker, worker_id)
            if row is None:
                session.add(Worker(id=worker_id, **values))
            else:
                for key, value in values.items():
                    setattr(row, key, value)

    async def heartbeat(self, worker_id: str) -> None:
        async with self._db.begin() as session:
            await session.execute(
                update(Worker).where(Worker.id == worker_id).values(seen_at=utcnow())
            )

    async def stopped(self, worker_id: str) -> None:
        now = utcnow()
        async with self._db.begin() as session:
            await session.execute(
                update(Worker).where(Worker.id == worker_id).values(seen_at=now, stopped_at=now)
            )

    async def current_facts(self) -> EngineFacts:
        """The facts requests are validated and sized with (see the module docstring)."""
        if self.local is not None:
            return self.local
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < FACTS_CACHE_SECONDS:
            return cached[1]
        async with self._db.begin(readonly=True) as session:
            row = (
                await session.execute(
                    select(Worker.facts, Worker.tokenizer)
                    .where(Worker.facts.is_not(None))
                    .order_by(Worker.seen_at.desc())
                    .limit(1)
                )
            ).one_or_none()
        if row is None or not isinstance(row.facts, dict):
            raise NoRenderWorker()
        try:
            facts = EngineFacts.from_json(row.facts, row.tokenizer)
        except (KeyError, ValueError) as exc:
            logger.error("a worker published unreadable engine facts: %s", exc)
            raise NoRenderWorker() from exc
        self._cached = (time.monotonic(), facts)
        return facts

    async def live(self, within_seconds: float) -> list[WorkerView]:
        """The render workers alive now: an engine's facts published (a loop that only reaps
        renders nothing), not stopped, and seen in the last ``within_seconds`` (a loop
        refreshes ``seen_at`` every ``reap_seconds``; a killed one stops refreshing it)."""
        since = utcnow() - timedelta(seconds=within_seconds)
        async with self._db.begin(readonly=True) as session:
            rows = await session.scalars(
                select(Worker)
                .where(
                    Worker.facts.is_not(None),
                    Worker.stopped_at.is_(None),
                    Worker.seen_at >= since,
                )
                .order_by(Worker.seen_at.desc())
            )
            return [_view(r) for r in rows]

    async def list(self) -> list[WorkerView]:
        """Every loop that registered, stopped ones included, last seen first."""
        async with self._db.begin(readonly=True) as session:
            rows = list(await session.scalars(select(Worker).order_by(Worker.seen_at.desc())))
        return [_view(r) for r in rows]


def _view(row: Worker) -> WorkerView:
    return WorkerView(
        id=row.id,
        host=row.host,
        pid=row.pid,
        profile=str(row.facts.get("profile")) if row.facts else None,
        started_at=row.started_at,
        seen_at=row.seen_at,
        stopped_at=row.stopped_at,
    )
