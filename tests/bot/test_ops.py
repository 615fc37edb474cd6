"""The operations endpoint (bot/ops): ``/healthz``, ``/readyz`` and ``/metrics`` fetched over
HTTP from a running bot on SimCord (embedded: it renders itself) and from a running
``avatarbot worker`` process beside a scale-out bot, and a render moves the counters and the
latency histogram. Every endpoint listens on 127.0.0.1 port 0; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app import AvatarBot, create_bot
from bot.config import OpsSettings, Settings, parse_listen
from bot.ops.logs import JsonFormatter
from bot.ops.metrics import Metrics
from bot.ops.server import OpsServer
from tests.fixtures.discord import SIMCORD, BotFactory, World, create_avatar
from tests.fixtures.workers import WorkerProcess, start_worker, stop_worker

WAIT = 240.0  # the bound on any wait: a hang fails, a slow machine does not
LOOPBACK_ANY_PORT = OpsSettings(listen="127.0.0.1:0")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def fetch(base: str, path: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(base + path) as answer:
        return answer.status, await answer.text()


async def scrape(base: str) -> Samples:
    status, text = await fetch(base, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    async def wait() -> None:
        while not await condition():
            await asyncio.sleep(0.1)  # poll: another process (worker) serves the endpoint

    try:
        await asyncio.wait_for(wait(), WAIT)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _serving_bot(bots: BotFactory, **overrides: Any) -> AvatarBot:
    settings = bots.settings.model_copy(update={"ops": LOOPBACK_ANY_PORT, **overrides})
    bot = create_bot(settings, engine_port=bots.engine, serve_ops=True)
    bots.made.append(bot)
    return bot


def _base(bot: AvatarBot) -> str:
    assert bot.ops is not None and bot.ops.port
    return bot.ops.url


# ---------------------------------------------------------------------- the embedded bot


@SIMCORD
class TestEmbeddedBot:
    @pytest.fixture
    def simcord_bot(self, bots: BotFactory) -> AvatarBot:
        return _serving_bot(bots)

    async def test_endpoints_and_a_render_moving_the_metrics(self, world: World) -> None:
        base = _base(world.bot)
        assert base.startswith("http://127.0.0.1:")
        assert await fetch(base, "/healthz") == (200, '{"alive": true}')
        status, body = await fetch(base, "/readyz")
        assert (status, json.loads(body)) == (200, {"ready": True})

        before = await scrape(base)
        assert "avatarbot_jobs" in names(before)  # queue depth, by kind and status
        assert value(before, "avatarbot_jobs", kind="render", status="queued") == 0
        assert value(before, "avatarbot_images_rendered_total") == 0
        # No CUDA in this process's engine (the tiny profile on the CPU): no GPU samples.
        assert not any(n.startswith("avatarbot_gpu_memory") for n in names(before))

        await create_avatar(world, world.alice)
        result = await world.alice.slash(
            world.channel, "avatar render", avatar="Mug", prompt="a mug on a desk", count=2
        )
        assert result.response.content.startswith("Done")

        after = await scrape(base)
        render = {"kind": "render", "outcome": "done"}
        assert value(after, "avatarbot_job_duration_seconds_count", **render) == 1
        assert value(after, "avatarbot_job_duration_seconds_sum", **render) > 0
        assert value(after, "avatarbot_job_duration_seconds_count", kind="encode", outcome="done")
        assert value(after, "avatarbot_images_rendered_total") == 2
        checks = sum(
            value(after, "avatarbot_output_checks_total", flagged=f) for f in ("true", "false")
        )
        assert checks == 2
        assert value(after, "avatarbot_jobs", kind="render", status="done") == 1
        assert value(after, "avatarbot_delivery_failures_total", outcome="postponed") == 0

    async def test_readyz_is_503_when_discord_is_gone(self, world: World) -> None:
        bot = world.bot
        server = bot.ops
        assert server is not None
        base = server.url
        # As after a lost gateway connection: the process is alive, not ready.
        bot._ready.clear()  # discord.py's ready flag (``is_ready``), set again at READY
        try:
            status, body = await fetch(base, "/readyz")
            assert status == 503
            assert json.loads(body) == {"ready": False, "reason": "discord not connected"}
            assert (await fetch(base, "/healthz"))[0] == 200
        finally:
            bot._ready.set()


# ---------------------------------------------------------------------- a worker process


@dataclass
class ServingWorker:
    """A worker subprocess and where its ops endpoint listens (read from its JSON log)."""

    proc: WorkerProcess
    base: str | None = None


LISTENING = re.compile(r"ops endpoint listening on (http://127\.0\.0\.1:\d+)")


@pytest.fixture
async def worker(bot_settings: Settings) -> AsyncIterator[ServingWorker]:
    listening = asyncio.Event()
    found: list[str] = []

    def seen(line: str) -> None:
        try:
            message = json.loads(line)["message"]  # the JSON log format
        except (ValueError, KeyError, TypeError):
            return
        match = LISTENING.search(message)
        if match:
            found.append(match.group(1))
            listening.set()

    env = {
        "AVATARBOT_JOBS__POLL_SECONDS": "0.2",
        "AVATARBOT_OPS__LISTEN": "127.0.0.1:0",
        "AVATARBOT_LOG_FORMAT": "json",
    }
    proc = await start_worker(bot_settings.effective_database_url, bot_settings.data_dir, seen, env)
    try:
        try:
            await asyncio.wait_for(listening.wait(), WAIT)
        except TimeoutError:
            lines = "\n".join(proc.lines)
            raise AssertionError("the worker did not listen:\n" + lines) from None
        yield ServingWorker(proc, found[0])
    finally:
        await stop_worker(proc)


@SIMCORD
class TestWorker:
    @pytest.fixture
    async def simcord_bot(self, bots: BotFactory, worker: ServingWorker) -> AvatarBot:
        # The scale-out bot, started once the worker has migrated the shared database and
        # is ready, so the two never migrate at once.
        assert worker.base is not None
        base = worker.base

        async def ready() -> bool:
            return (await fetch(base, "/readyz"))[0] == 200

        await until(ready, "the worker to be ready:\n" + "\n".join(worker.proc.lines))
        return _serving_bot(bots, run_worker=False)

    async def test_worker_endpoints_and_a_render_moving_its_metrics(
        self, world: World, worker: ServingWorker
    ) -> None:
        base = worker.base
        assert base is not None
        assert await fetch(base, "/healthz") == (200, '{"alive": true}')
        status, body = await fetch(base, "/readyz")
        assert (status, json.loads(body)) == (200, {"ready": True})
        before = await scrape(base)
        assert "avatarbot_jobs" in names(before)

        # The scale-out bot serves its own endpoint: ready without an engine.
        bot_base = _base(world.bot)
        assert (await fetch(bot_base, "/readyz"))[0] == 200

        await create_avatar(world, world.alice)

        async def encoded() -> bool:
            samples = await scrape(base)
            labels = {"kind": "encode", "outcome": "done"}
            return value(samples, "avatarbot_job_duration_seconds_count", **labels) >= 1

        await until(encoded, "the worker to encode the avatar:\n" + "\n".join(worker.proc.lines))
        await world.alice.slash(
            world.channel, "avatar render", avatar="Mug", prompt="a mug on a desk", count=1
        )

        async def rendered() -> bool:
            samples = await scrape(base)
            return value(samples, "avatarbot_images_rendered_total") >= 1

        await until(rendered, "the worker to render:\n" + "\n".join(worker.proc.lines))
        after = await scrape(base)
        render = {"kind": "render", "outcome": "done"}
        assert value(after, "avatarbot_job_duration_seconds_count", **render) == 1
        assert value(before, "avatarbot_job_duration_seconds_count", **render) == 0
        assert value(after, "avatarbot_images_rendered_total") == 1
        assert value(after, "avatarbot_jobs", kind="render", status="done") == 1
        # The bot sees the same queue through the database.
        bot_samples = await scrape(bot_base)
        assert value(bot_samples, "avatarbot_jobs", kind="render", status="done") == 1


# ---------------------------------------------------------------------- units


async def test_readyz_names_the_problem_and_metrics_stay_up_without_a_database() -> None:
    server = OpsServer(
        "127.0.0.1", 0, Metrics(), database=lambda: None, ready=lambda: None, gpu=None
    )
    await server.start()
    try:
        status, body = await fetch(server.url, "/readyz")
        assert (status, json.loads(body)) == (503, {"ready": False, "reason": ANY_DB_REASON})
        assert (await fetch(server.url, "/metrics"))[0] == 200
    finally:
        await server.aclose()


ANY_DB_REASON = "database not open yet"


def test_listen_setting() -> None:
    assert OpsSettings().address == ("127.0.0.1", 9108)
    assert parse_listen("off") is None
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError, match="host:port"):
        OpsSettings(listen="9108")


def test_json_log_lines() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("bot.x", logging.ERROR, __file__, 1, "a %s", ("b",), None)
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert (data["level"], data["logger"], data["message"]) == ("ERROR", "bot.x", "a b")
    assert "RuntimeError: boom" in data["exception"]
    assert data["time"].endswith("+00:00")
