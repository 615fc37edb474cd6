"""The operations endpoint of the bot and of each worker, served with aiohttp:

- ``GET /healthz``: 200 while the process runs (liveness);
- ``GET /readyz``: 200 when the database answers ``SELECT 1`` and the process's own checks pass
  (its engine loaded when it renders, Discord connected for the bot); else 503 with
  ``{"ready": false, "reason": ...}``;
- ``GET /metrics``: the process's ``Metrics`` in Prometheus's text format.

It listens on ``Settings.ops.listen`` (loopback by default; port 0 picks a free port, read it
from ``port``). It must never take the process down: a scrape that fails answers 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from bot.ops.metrics import CONTENT_TYPE, GpuProbe, Metrics

if TYPE_CHECKING:
    from db.session import Database

logger = logging.getLogger(__name__)

DATABASE_TIMEOUT = 3.0

# The process's own readiness: None when ready, else a short reason.
ReadyCheck = Callable[[], str | None]


async def database_problem(database: Database | None) -> str | None:
    """None when the database answers a ``SELECT 1`` in time, else why not."""
    if database is None:
        return "database not open yet"
    from sqlalchemy import text

    try:
        async with asyncio.timeout(DATABASE_TIMEOUT):
            async with database.begin(readonly=True) as session:
                await session.execute(text("SELECT 1"))
    except TimeoutError:
        return f"database did not answer within {DATABASE_TIMEOUT:.0f} s"
    except Exception as exc:
        return f"database unreachable: {type(exc).__name__}"
    return None


class OpsServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port``; ``start``, then ``aclose``."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        *,
        database: Callable[[], Database | None],
        ready: ReadyCheck,
        gpu: GpuProbe | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None  # the bound port, once started
        self.metrics = metrics
        self._database = database
        self._ready = ready
        self._gpu = gpu
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        # The port actually bound (port 0 picks a free one).
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else self._requested_port
        logger.info("ops endpoint listening on %s (/healthz /readyz /metrics)", self.url)

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = self._ready()
        if reason is None:
            reason = await database_problem(self._database())
        if reason is not None:
            return web.json_response({"ready": False, "reason": reason}, status=503)
        return web.json_response({"ready": True})

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.metrics.refresh(self._database(), self._gpu)
        # As a header: aiohttp's ``content_type`` argument refuses one with a charset.
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


async def start_ops_server(
    listen: tuple[str, int] | None,
    metrics: Metrics,
    *,
    database: Callable[[], Database | None],
    ready: ReadyCheck,
    gpu: GpuProbe | None = None,
) -> OpsServer | None:
    """Start the endpoint on ``listen`` (None: disabled). An address that cannot be bound is
    one log line, not the process's end: the bot and the worker keep running without it."""
    if listen is None:
        return None
    server = OpsServer(*listen, metrics, database=database, ready=ready, gpu=gpu)
    try:
        await server.start()
    except OSError as exc:
        logger.error(
            "ops endpoint not started: cannot listen on %s:%s (%s); set AVATARBOT_OPS__LISTEN "
            "to a free host:port, or 'off'",
            listen[0],
            listen[1],
            exc.strerror or exc,
        )
        return None
    return server
