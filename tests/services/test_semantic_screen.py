"""The semantic prompt screen on the worker (bot/services/semantic_screen.py), judged with FIXED
embeddings: its decisions can't be checked on random weights, so a fake text encoder gives the
concepts and prompts chosen vectors with known cosines, and thresholds sit just above or below
them. Covered: every rule (person/pet/object x normal/age-restricted x sexual/minors/always),
the thresholds' source (profile, settings), failing closed, and the wiring through the job
loop (refused before any GPU work: failed, refunded, the member told, the log says why
without the prompt)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.config import SemanticScreenSettings, Settings
from bot.errors import PromptScreened
from bot.services.container import Services, build_services
from bot.services.dispatcher import DispatcherConfig
from bot.services.ports import EnginePort, TextScreenFacts
from bot.services.semantic_screen import (
    ALWAYS,
    MINORS,
    NEUTRAL,
    SCREENED_PERSON_MESSAGE,
    SEXUAL,
    ScreenUnavailable,
    SemanticScreen,
    default_concepts,
    parse_concepts,
    resolve_thresholds,
)
from db.models import LedgerEntry, RenderJob, UsageLedger
from db.session import Database
from tests.fixtures.services import CHANNEL, GUILD, create_now, face_photo, make_avatar

# One axis per section: a concept phrase is its section's unit vector, so a prompt's cosine
# with a category is exactly the coordinate it is given on that axis.
AXES = {SEXUAL: 0, MINORS: 1, ALWAYS: 2, NEUTRAL: 3}
DIM = 5
THRESHOLDS = {SEXUAL: 0.4, MINORS: 0.3, ALWAYS: 0.2}


def unit(**coords: float) -> tuple[float, ...]:
    """A unit vector with the given cosines per section; the rest on a free axis."""
    v = [0.0] * DIM
    for section, value in coords.items():
        v[AXES[section]] = value
    rest = 1.0 - sum(x * x for x in v)
    assert rest >= 0
    v[DIM - 1] = math.sqrt(rest)
    return tuple(v)


class FixedEmbeddings:
    """A text encoder with chosen vectors (around a real port that renders).

    Concept phrases get their section's axis; a prompt gets the vector of the first key it
    starts with (prompts are styled before the screen sees them), else an unrelated one.
    ``fail_with`` makes every embedding call raise; ``calls`` counts them.
    """

    def __init__(
        self,
        inner: EnginePort | None = None,
        prompts: Mapping[str, tuple[float, ...]] | None = None,
        *,
        thresholds: Mapping[str, float] | None = THRESHOLDS,
        random_weights: bool = False,
    ) -> None:
        self.inner = inner
        self.prompts = dict(prompts or {})
        self.thresholds = thresholds
        self.random_weights = random_weights
        self.fail_with: Exception | None = None
        self.answer: list[tuple[float, ...]] | None = None
        self.calls = 0
        self.renders = 0
        self.concepts = {p: s for s, p in default_concepts().phrases()}

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def text_screen(self) -> TextScreenFacts:
        return TextScreenFacts("fixed", self.thresholds, self.random_weights)

    async def embed_texts(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        if self.answer is not None:
            return self.answer
        return [self._vector(t) for t in texts]

    def _vector(self, text: str) -> tuple[float, ...]:
        if text in self.concepts:
            return unit(**{self.concepts[text]: 1.0})
        for key, vector in self.prompts.items():
            if text.startswith(key):
                return vector
        return unit()

    async def render(self, spec, features, progress=None, **more):  # type: ignore[no-untyped-def]
        self.renders += 1
        assert self.inner is not None
        return await self.inner.render(spec, features, progress, **more)


# -- decisions --------------------------------------------------------------------------------

# (scored category, cosine) -> refused for (person?, age-restricted?): the word lists' rules.
RULES = {
    SEXUAL: lambda person, restricted: person or not restricted,
    MINORS: lambda person, restricted: True,
    ALWAYS: lambda person, restricted: True,
}


@pytest.mark.parametrize("category", [SEXUAL, MINORS, ALWAYS])
@pytest.mark.parametrize("avatar", ["person", "pet", "object"])
@pytest.mark.parametrize("restricted", [False, True])
async def test_every_rule_at_and_below_its_threshold(
    category: str, avatar: str, restricted: bool
) -> None:
    at = THRESHOLDS[category]
    engine = FixedEmbeddings(
        prompts={"on": unit(**{category: at}), "under": unit(**{category: at - 0.01})}
    )
    screen = SemanticScreen(engine)  # type: ignore[arg-type]
    person = avatar == "person"
    refused = RULES[category](person, restricted)
    if refused:
        with pytest.raises(PromptScreened) as caught:
            await screen.check("on the edge", person=person, age_restricted=restricted)
        assert caught.value.code == "prompt_screened" and caught.value.category == category
        assert "on the edge" not in caught.value.message
    else:
        await screen.check("on the edge", person=person, age_restricted=restricted)
    # Just under the threshold: nothing is refused, whatever the avatar and channel.
    await screen.check("under it", person=person, age_restricted=restricted)


async def test_the_score_is_a_margin_over_the_neutral_concepts() -> None:
    """A prompt close to everything (text encoders' usual high cosines) is not refused: only
    its similarity beyond the nearest ordinary prompt counts."""
    engine = FixedEmbeddings(
        prompts={
            "close to all": unit(sexual=0.6, neutral=0.5),
            "close to sex": unit(sexual=0.6, neutral=0.1),
        }
    )
    screen = SemanticScreen(engine)  # type: ignore[arg-type]
    scores = await screen.check("close to all", person=True, age_restricted=False)
    assert scores.margins[SEXUAL] == pytest.approx(0.1)
    assert scores.nearest[NEUTRAL] == pytest.approx(0.5)
    with pytest.raises(PromptScreened):
        await screen.check("close to sex", person=True, age_restricted=False)


async def test_a_person_refusal_says_real_people_are_never_sexualised() -> None:
    engine = FixedEmbeddings(prompts={"x": unit(sexual=0.9)})
    screen = SemanticScreen(engine)  # type: ignore[arg-type]
    with pytest.raises(PromptScreened) as caught:
        await screen.check("x", person=True, age_restricted=True)
    assert caught.value.message == SCREENED_PERSON_MESSAGE


async def test_concepts_are_embedded_once_per_encoder() -> None:
    engine = FixedEmbeddings()
    screen = SemanticScreen(engine)  # type: ignore[arg-type]
    for _ in range(3):
        await screen.check("a cat", person=False, age_restricted=False)
    assert engine.calls == 1 + 3  # the concepts once, then each prompt


def test_settings_override_the_profile_per_category() -> None:
    facts = TextScreenFacts("e", {SEXUAL: 0.1, MINORS: 0.2, ALWAYS: 0.3}, random_weights=False)
    assert resolve_thresholds(facts, SemanticScreenSettings(minors=-0.5)) == {
        SEXUAL: 0.1,
        MINORS: -0.5,
        ALWAYS: 0.3,
    }
    missing = TextScreenFacts("e", {SEXUAL: 0.1}, random_weights=False)
    assert resolve_thresholds(missing, SemanticScreenSettings()) is None
    full = SemanticScreenSettings(sexual=0.0, minors=0.0, always=0.0)
    assert resolve_thresholds(missing, full) == {SEXUAL: 0.0, MINORS: 0.0, ALWAYS: 0.0}


def test_the_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATARBOT_SAFETY__SEMANTIC__MINORS", "0.07")
    assert Settings().safety.semantic.minors == pytest.approx(0.07)
    monkeypatch.setenv("AVATARBOT_SAFETY__SEMANTIC__MINORS", "5")
    with pytest.raises(ValueError):
        Settings()


# -- random weights and failing closed --------------------------------------------------------


async def test_random_weights_without_thresholds_embed_and_decide_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    engine = FixedEmbeddings(prompts={"x": unit(always=1.0)}, thresholds=None, random_weights=True)
    screen = SemanticScreen(engine)  # type: ignore[arg-type]
    assert "refuses nothing" in caplog.text  # said at startup
    await screen.check("x", person=True, age_restricted=False)
    assert engine.calls == 2  # the path ran


async def test_real_weights_without_thresholds_fail_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    engine = FixedEmbeddings(thresholds=None, random_weights=False)
    screen = SemanticScreen(engine)  # type: ignore[arg-type]
    assert "every render will fail" in caplog.text
    with pytest.raises(ScreenUnavailable) as caught:
        await screen.check("a cat", person=False, age_restricted=True)
    assert caught.value.code == "prompt_screen_unavailable"
    assert "AVATARBOT_SAFETY__SEMANTIC__" in caught.value.reason


@pytest.mark.parametrize(
    "answer",
    [
        [],  # too few vectors
        [(0.0, 0.0, 0.0, 0.0, 0.0)],  # not unit length
        [(math.nan, 0.0, 0.0, 0.0, 1.0)],
        [(1.0, 0.0)],  # another dimension than the concepts'
    ],
)
async def test_nonsense_from_the_encoder_fails_closed(answer: list[tuple[float, ...]]) -> None:
    engine = FixedEmbeddings()
    screen = SemanticScreen(engine)  # type: ignore[arg-type]
    await screen.check("warm up", person=False, age_restricted=False)  # concepts cached
    engine.answer = answer
    with pytest.raises(ScreenUnavailable):
        await screen.check("a cat", person=False, age_restricted=False)


async def test_an_engine_without_a_text_encoder_fails_closed() -> None:
    class NoText:
        def text_screen(self) -> TextScreenFacts:
            raise AttributeError("no text encoder")

    screen = SemanticScreen(NoText())  # type: ignore[arg-type]
    with pytest.raises(ScreenUnavailable):
        await screen.check("a cat", person=False, age_restricted=False)


def test_the_shipped_concepts_parse_and_bad_files_are_refused() -> None:
    concepts = default_concepts()
    assert all(concepts.sections[s] for s in (SEXUAL, MINORS, ALWAYS, NEUTRAL))
    with pytest.raises(ValueError, match="unknown section"):
        parse_concepts("[violence]\na fight\n")
    with pytest.raises(ValueError, match="before any"):
        parse_concepts("a phrase\n")
    with pytest.raises(ValueError, match="no phrases"):
        parse_concepts("[sexual]\na nude person\n")


# -- through the job loop ---------------------------------------------------------------------


async def _services(database: Database, settings: Settings, engine: FixedEmbeddings) -> Services:
    return await build_services(
        settings,
        database,
        engine,  # type: ignore[arg-type]
        dispatcher_config=DispatcherConfig(concurrency=1, lease_seconds=5, poll_seconds=0.2),
    )


async def _ledger(services: Services, job_id: int) -> list[str]:
    async with services.database.begin(readonly=True) as session:
        rows = await session.scalars(
            select(UsageLedger).where(UsageLedger.job_id == job_id).order_by(UsageLedger.id)
        )
        return [LedgerEntry(r.entry).value for r in rows]


async def _error_code(services: Services, job_id: int) -> str | None:
    async with services.database.begin(readonly=True) as session:
        job = await session.get(RenderJob, job_id)
        assert job is not None
        return job.error_code


async def test_a_screened_render_fails_before_rendering_refunded_and_told(
    database: Database,
    settings: Settings,
    tiny_engine_port: EnginePort,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "a very particular scene"
    engine = FixedEmbeddings(tiny_engine_port, {secret: unit(sexual=0.9)})
    services = await _services(database, settings, engine)
    try:
        await make_avatar(services, 7, "Rex", kind="pet")
        caplog.set_level(logging.INFO)
        # A pet in a normal channel: the sexual rule refuses it.
        ticket = await services.renders.request(7, GUILD, CHANNEL, "Rex", secret)
        assert await services.dispatcher.run_once() == ticket.job_id
        view = await services.jobs.view(ticket.job_id)
        assert view.status == "failed" and "safety screen" in (view.error or "")
        assert secret not in (view.error or "")
        assert await _error_code(services, ticket.job_id) == "prompt_screened"
        assert engine.renders == 0  # refused before any denoising step
        # Refunded (a withheld-render allowance may count it too: bot/services/withheld.py).
        assert (await _ledger(services, ticket.job_id))[:2] == ["reserve", "refund"]
        logged = [r for r in caplog.records if "semantic screen refused" in r.getMessage()]
        assert [r.getMessage() for r in logged] == [
            f"job {ticket.job_id}: the semantic screen refused the prompt (sexual)"
        ]
        # Prompts are personal data: never at INFO (or above).
        assert all(secret not in r.getMessage() for r in caplog.records)

        # The same prompt and pet in an age-restricted channel: rendered.
        allowed = await services.renders.request(
            7, GUILD, CHANNEL, "Rex", secret, age_restricted=True
        )
        await services.dispatcher.run_once()
        assert (await services.jobs.view(allowed.job_id)).status == "done"
        assert engine.renders == 1
    finally:
        await services.aclose()


async def test_a_person_avatar_is_screened_in_an_age_restricted_channel(
    database: Database, settings: Settings, tiny_engine_port: EnginePort
) -> None:
    engine = FixedEmbeddings(tiny_engine_port, {"a beach": unit(sexual=0.9)})
    services = await _services(database, settings, engine)
    try:
        await create_now(services, 7, GUILD, "Me", "person", [("me.jpg", face_photo())])
        ticket = await services.renders.request(
            7, GUILD, CHANNEL, "Me", "a beach", age_restricted=True
        )
        await services.dispatcher.run_once()
        view = await services.jobs.view(ticket.job_id)
        assert view.status == "failed" and view.error == SCREENED_PERSON_MESSAGE
        assert engine.renders == 0
    finally:
        await services.aclose()


async def test_a_failing_encoder_fails_the_render_closed_and_refunds(
    database: Database,
    settings: Settings,
    tiny_engine_port: EnginePort,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = FixedEmbeddings(tiny_engine_port)
    services = await _services(database, settings, engine)
    try:
        await make_avatar(services, 7, "Rex", kind="pet")
        engine.fail_with = RuntimeError("CUDA out of memory")
        caplog.set_level(logging.INFO)
        ticket = await services.renders.request(7, GUILD, CHANNEL, "Rex", "a cat")
        await services.dispatcher.run_once()
        view = await services.jobs.view(ticket.job_id)
        assert view.status == "failed" and "could not run" in (view.error or "")
        assert "CUDA" not in (view.error or "")
        assert await _error_code(services, ticket.job_id) == "prompt_screen_unavailable"
        assert engine.renders == 0
        assert await _ledger(services, ticket.job_id) == ["reserve", "refund"]  # not counted
        assert any(
            r.levelno == logging.ERROR and f"job {ticket.job_id}: semantic screen" in r.getMessage()
            for r in caplog.records
        )
    finally:
        await services.aclose()


async def test_the_real_tiny_engine_runs_the_screen_and_decides_nothing(
    services: Services,
) -> None:
    """Random weights: the screen embeds through the real engine and lets the render run."""
    await make_avatar(services, 7, "Mia")
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    await services.dispatcher.run_once()
    assert (await services.jobs.view(ticket.job_id)).status == "done"


async def test_thresholds_in_settings_make_the_tiny_engine_decide(
    database: Database, tmp_path: Path, tiny_engine_port: EnginePort
) -> None:
    """Settings give random weights thresholds: the lowest margin refuses every prompt (the
    real encoder's scores feed the real decision)."""
    from tests.fixtures.services import service_settings

    lowest = SemanticScreenSettings(sexual=-2.0, minors=2.0, always=2.0)
    settings = service_settings(tmp_path)
    settings.safety.semantic = lowest
    services = await build_services(settings, database, tiny_engine_port)
    try:
        await make_avatar(services, 7, "Rex", kind="pet")
        ticket = await services.renders.request(7, GUILD, CHANNEL, "Rex", "a cat")
        await services.dispatcher.run_once()
        assert await _error_code(services, ticket.job_id) == "prompt_screened"
    finally:
        await services.aclose()


# -- in `avatarbot worker` (scale-out: the bot has no engine, the worker screens) -------------


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_the_worker_process_screens_and_the_job_fails_refunded(
    db_url: str, database: Database, tmp_path: Path
) -> None:
    """A real ``avatarbot worker`` (tiny profile, thresholds from its environment that refuse
    every sexual-rule prompt) takes the render of a bot without an engine: the job fails with
    ``prompt_screened`` before rendering, refunded, with the member's message."""
    import asyncio

    from bot.services.events import JobEvent, JobEventKind
    from tests.fixtures.services import make_photo, service_settings
    from tests.fixtures.workers import start_worker, stop_worker

    ready = asyncio.Event()

    def seen(line: str) -> None:
        if "running; SIGTERM" in line:
            ready.set()

    env = {
        "AVATARBOT_SAFETY__SEMANTIC__SEXUAL": "-2",
        "AVATARBOT_SAFETY__SEMANTIC__MINORS": "2",
        "AVATARBOT_SAFETY__SEMANTIC__ALWAYS": "2",
        "AVATARBOT_JOBS__POLL_SECONDS": "0.5",
    }
    worker = await start_worker(db_url, tmp_path / "worker", seen, env)
    try:
        await asyncio.wait_for(ready.wait(), 240)
        settings = service_settings(tmp_path, database_url=db_url, run_worker=False)
        services = await build_services(
            settings, database, None, dispatcher_config=DispatcherConfig(concurrency=0)
        )
        finished = asyncio.Event()
        done: set[int] = set()

        def on_event(event: JobEvent) -> None:
            if event.kind is JobEventKind.FINISHED:
                done.add(event.job_id)
                finished.set()

        services.events.subscribe(on_event)
        await services.events.start()
        try:

            async def until_finished(job_id: int) -> None:
                while job_id not in done:
                    finished.clear()
                    await finished.wait()

            files = [(f"p{i}.png", make_photo(700 + i, size=256)) for i in range(2)]
            created = await services.avatars.create(7, GUILD, "Rex", "pet", files, consent=True)
            await asyncio.wait_for(until_finished(created.job_id), 240)
            ticket = await services.renders.request(7, GUILD, CHANNEL, "Rex", "a cat")
            await asyncio.wait_for(until_finished(ticket.job_id), 240)
            view = await services.jobs.view(ticket.job_id)
            assert view.status == "failed" and "safety screen" in (view.error or "")
            assert await _error_code(services, ticket.job_id) == "prompt_screened"
            assert (await _ledger(services, ticket.job_id))[:2] == ["reserve", "refund"]
        finally:
            await services.aclose()
    finally:
        await stop_worker(worker)
    assert any("semantic screen refused the prompt (sexual)" in line for line in worker.lines)
    assert not any("a cat" in line for line in worker.lines)
