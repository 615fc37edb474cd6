"""Live previews through the services (issue 25): the tiny engine's previews of a running
render are published with the job's events, small enough for a PostgreSQL notification, never
stored, and not sent at all when the guild turned them off."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image
from sqlalchemy import func, select

from bot.engine_adapter import PREVIEW_SIDE
from bot.services.container import Services
from bot.services.events import JobEvent, JobEventKind, JobEvents
from bot.services.results import RenderOptions
from db.models import Base
from db.notify import MAX_PAYLOAD
from tests.fixtures.previews import previewing_engine
from tests.fixtures.services import CHANNEL, GUILD, make_avatar

OTHER_GUILD = GUILD + 1
# Enough denoising steps that the tiny render previews several of them (every step but the last).
STEPS = 6


# The services fixture's engine, previewing every step.
tiny_engine_port = pytest.fixture(scope="module", name="tiny_engine_port")(previewing_engine)


class Seen:
    """The job events of a render, until its ``finished``."""

    def __init__(self, services: Services) -> None:
        self.events: list[JobEvent] = []
        self._finished: dict[int, asyncio.Event] = {}
        self.remove = services.events.subscribe(self._on_event)

    def _on_event(self, event: JobEvent) -> None:
        self.events.append(event)
        if event.kind is JobEventKind.FINISHED:
            self._done(event.job_id).set()

    def _done(self, job_id: int) -> asyncio.Event:
        return self._finished.setdefault(job_id, asyncio.Event())

    async def finished(self, job_id: int) -> None:
        await asyncio.wait_for(self._done(job_id).wait(), 60)

    def previews(self, job_id: int) -> list[bytes]:
        return [
            e.preview
            for e in self.events
            if e.job_id == job_id and e.kind is JobEventKind.PREVIEW and e.preview is not None
        ]


async def _rows(services: Services) -> dict[str, int]:
    async with services.database.begin(readonly=True) as session:
        return {
            name: int(await session.scalar(select(func.count()).select_from(table)) or 0)
            for name, table in Base.metadata.tables.items()
        }


async def _render(services: Services, seen: Seen, guild: int) -> tuple[int, dict[str, int]]:
    """Render in ``guild``; the job and how many rows each table gained."""
    before = await _rows(services)
    ticket = await services.renders.request(
        7, guild, CHANNEL, "Mia", "a cat", RenderOptions(count=2, seed=3, steps=STEPS)
    )
    await seen.finished(ticket.job_id)
    after = await _rows(services)
    return ticket.job_id, {name: after[name] - before[name] for name in after}


async def test_previews_are_published_small_and_never_stored(services: Services) -> None:
    await make_avatar(services, 7, "Mia", guild=None)
    await services.safety.set_previews(OTHER_GUILD, False, actor_id=1, actor_is_admin=True)
    seen = Seen(services)
    heard = asyncio.Event()
    elsewhere = JobEvents(services.database)
    elsewhere.subscribe(lambda e: heard.set() if e.preview is not None else None)
    await elsewhere.start()
    await services.start()

    shown, grew_with = await _render(services, seen, GUILD)
    hidden, grew_without = await _render(services, seen, OTHER_GUILD)

    previews = seen.previews(shown)
    assert len(previews) >= 1
    for data in previews:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG"
            assert max(image.size) <= PREVIEW_SIDE
        # As a notification from any process (its origin is 12 hex digits).
        event = JobEvent(JobEventKind.PREVIEW, shown, data)
        assert len(event.payload("0" * 12).encode()) <= MAX_PAYLOAD
    assert seen.previews(hidden) == []
    if services.events.cross_process:
        # Another process (the bot, beside this worker) hears them through NOTIFY.
        await asyncio.wait_for(heard.wait(), 60)
    # A render with previews stores exactly what one without them does.
    assert grew_with == grew_without
    assert (await services.jobs.view(shown)).status == "done"
    await elsewhere.aclose()


def test_a_preview_event_round_trips_through_its_notification() -> None:
    event = JobEvent(JobEventKind.PREVIEW, 42, b"\xff\xd8jpeg\x00:bytes")
    assert JobEvent.parse(event.payload("abc123")) == (event, "abc123")
    plain = JobEvent(JobEventKind.PROGRESS, 42)
    assert plain.payload("abc123") == "progress:42:abc123"
    assert JobEvent.parse("progress:42:abc123") == (plain, "abc123")
    assert JobEvent.parse("preview:42:abc123:not base64!") is None
