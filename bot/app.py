"""The Discord bot: a ``commands.Bot`` that owns the database, the services (with the job
loop), the engine when it renders itself, and the job feed; it loads one cog per feature.

``create_bot(settings)`` builds it without connecting: ``avatarbot run`` then starts it with the
token, while the demo, the tests and the benchmark hand it to SimCord. Resources are created in
``setup_hook`` (after login, inside the running loop) and released in ``close``; the ones a
caller injects (a shared engine, a database) are the caller's to close.

With ``run_worker`` false (the scale-out setup) the bot loads no engine and never imports torch
or diffusers: ``avatarbot worker`` processes render, and what the bot must know of their engine
comes from the database. Its job loop then only reaps expired leases and purges.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord.ext import commands

from bot.config import Settings
from bot.errors import InternalError
from bot.ops.metrics import Metrics, torch_gpu_memory
from bot.ops.server import OpsServer, start_ops_server
from bot.services.command_tree import CommandTreeHashes
from bot.services.ports import EnginePort
from bot.ui.errors import on_app_command_error
from bot.ui.jobs import JobFeed
from bot.ui.sync import sync_if_changed
from bot.ui.waker import DiscordWaker
from db.session import Database
from engine.errors import first_line

if TYPE_CHECKING:
    from bot.services.container import Services

logger = logging.getLogger(__name__)

# Each package's ``setup`` adds its cog (and its persistent buttons); the order does not matter.
COGS = ("bot.cogs.avatars", "bot.cogs.render", "bot.cogs.admin")
DISPATCHER_WAKE_EVENT = "avatarbot_dispatcher_wake"

# Failures that say Discord is not reachable now (no network, DNS, refused, timed out, a 5xx
# after discord.py's own retries), as opposed to one that waiting cannot fix (a rejected token).
DISCORD_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    discord.DiscordServerError,
)
# ``wait_for_discord``'s backoff between tries, in seconds.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


def bot_intents() -> discord.Intents:
    """Only what slash commands need: guild create/delete events. No privileged intents."""
    intents = discord.Intents.none()
    intents.guilds = True
    return intents


class AvatarBot(commands.Bot):
    """The bot; ``services`` is usable from ``setup_hook`` on."""

    def __init__(
        self,
        settings: Settings,
        *,
        database: Database | None = None,
        engine_port: EnginePort | None = None,
        sync_commands: bool = True,
        freeze_gc: bool = False,
        serve_ops: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=bot_intents(),
            help_command=None,
            # Nothing the bot says pings anyone unless a message opts in for one member.
            allowed_mentions=discord.AllowedMentions.none(),
            **options,
        )
        self.settings = settings
        self._database = database
        self._owns_database = database is None
        self._engine_port = engine_port
        self._owns_engine = engine_port is None
        self._sync_commands = sync_commands
        self._freeze_gc = freeze_gc
        self._services: Services | None = None
        self.jobs = JobFeed(self, settings.jobs.poll_seconds)
        # /healthz, /readyz, /metrics on settings.ops.listen when ``serve_ops`` (bot/ops).
        self.metrics = Metrics()
        self._serve_ops = serve_ops
        self.ops: OpsServer | None = None
        self.tree.on_error = on_app_command_error  # type: ignore[method-assign]

    # ------------------------------------------------------------------ resources

    @property
    def services(self) -> Services:
        """The ``Services`` container (avatars, renders, quotas, jobs, privacy, the loop)."""
        if self._services is None:
            raise InternalError()  # used before setup_hook: a bug, shown with a reference
        return self._services

    @property
    def database(self) -> Database:
        if self._database is None:
            raise InternalError()
        return self._database

    async def setup_hook(self) -> None:
        from bot.services.container import build_services
        from db.migrate import upgrade

        if self._serve_ops and self.ops is None:  # first: alive (not ready) while loading
            self.ops = await start_ops_server(
                self.settings.ops.address,
                self.metrics,
                database=lambda: self._database,
                ready=self._not_ready,
                gpu=torch_gpu_memory if self.settings.run_worker else None,
            )
        if self._database is None:
            self._database = Database.from_url(self.settings.effective_database_url)
        await self._database.wait_until_reachable()
        await upgrade(self._database)
        engine: EnginePort | None = None
        if self.settings.run_worker:
            if self._engine_port is None:
                # Imported here: only a bot that renders itself loads torch.
                from bot.engine_adapter import build_engine_port

                self._engine_port = await build_engine_port(self.settings)
            engine = self._engine_port
        self._services = await build_services(
            self.settings,
            self._database,
            engine,
            waker=DiscordWaker(self, DISPATCHER_WAKE_EVENT),
            metrics=self.metrics,
        )
        for name in COGS:
            # A feature may load one it builds on itself (render loads avatars' /avatar group).
            if name not in self.extensions:
                await self.load_extension(name)
        if self._sync_commands:
            hashes = CommandTreeHashes(self._database)
            await sync_if_changed(self.tree, hashes, self.application_id)
        self.jobs.start(self._services.events, self._services.jobs)
        await self._services.start()
        if self._freeze_gc:
            _freeze_heap()
        logger.info("bot set up: %d cogs, worker=%s", len(self.cogs), self.settings.run_worker)

    async def close(self) -> None:
        # discord.py waits a moment after READY for the guilds before it dispatches ``ready``;
        # a stop inside that window had it dispatch into the closed client (a traceback about
        # '_MissingSentinel' at exit). Cancelled first, that wait ends quietly.
        ready_wait = self._connection._ready_task
        if ready_wait is not None:
            ready_wait.cancel()
        try:
            # The feed first: no new Discord work while the process stops (after a restart
            # the feed shows every active job and delivers what is pending). Then the job
            # loop hands running jobs back to the queue (not counted as an attempt).
            await self.jobs.stop()
            if self._services is not None:
                await self._services.aclose()
        finally:
            try:
                await super().close()
            finally:
                await self._release()

    def _not_ready(self) -> str | None:
        """Why the bot is not ready (for /readyz; the database is checked after), or None."""
        if self.is_closed():
            return "closing"
        if self._services is None:
            return "starting"
        if self.settings.run_worker and self._services.engine is None:
            return "engine not loaded"
        if not self.is_ready():
            return "discord not connected"
        return None

    async def _release(self) -> None:
        ops, self.ops = self.ops, None
        if ops is not None:
            await ops.aclose()
        self._services = None
        engine, self._engine_port = self._engine_port, None
        if engine is not None and self._owns_engine:
            await engine.aclose()
        database, self._database = self._database, None
        if database is not None and self._owns_database:
            await database.dispose()

    # ------------------------------------------------------------------ events

    async def on_ready(self) -> None:
        logger.info("ready as %s in %d guilds", self.user, len(self.guilds))
        # discord.py dispatches ``on_ready`` once every shard of this process is ready (an
        # AutoShardedBot waits for all of them), with every guild of READY known, unavailable
        # ones (an outage) included: now guilds removed while the bot was offline can go.
        try:
            await self.services.privacy.purge_absent_guilds(
                [guild.id for guild in self.guilds], covers=self._serves_guild
            )
        except Exception:
            logger.exception("could not erase the data of guilds left while offline")

    def _serves_guild(self, guild_id: int) -> bool:
        """Whether this process's shards serve ``guild_id`` (Discord: (id >> 22) % count)."""
        count = self.shard_count or 1
        shard_ids = getattr(self, "shard_ids", None)  # AutoShardedBot; None = all of them
        if shard_ids is None and self.shard_id is not None:
            shard_ids = [self.shard_id]
        return count <= 1 or shard_ids is None or (guild_id >> 22) % count in set(shard_ids)

    async def on_guild_join(self, guild: discord.Guild) -> None:
        """Added (again): what the guild kept since a removal is live again, never erased."""
        try:
            await self.services.privacy.guild_returned([guild.id])
        except Exception:
            logger.exception("could not mark guild %s as back", guild.id)

    async def on_guild_remove(self, guild: discord.Guild) -> None:
        """The bot left or was removed: the guild's settings and jobs go (avatars stay); its
        day of usage and its audit log are kept a while (bot/services/departed.py)."""
        try:
            await self.services.privacy.guild_removed(guild.id)
        except Exception:
            logger.exception("could not erase data of guild %s", guild.id)


class ShardedAvatarBot(AvatarBot, commands.AutoShardedBot):
    """The same bot over several gateway shards (required past 2,500 guilds)."""


def _freeze_heap() -> None:
    """Exempt everything loaded so far (torch, the models, discord.py…) from future garbage
    collections. The heap holds ~600k long-lived objects once the engine is loaded, and a full
    collection over them stalled the event loop for 0.7 s (measured: every interaction of a
    burst then waited for it). New objects are still collected; for the process's lifetime.
    """
    gc.collect()
    gc.freeze()
    logger.info("froze %d objects out of garbage collection", gc.get_freeze_count())


async def wait_for_discord(token: str) -> None:
    """Return once Discord accepts ``token``, waiting as long as Discord is unreachable.

    ``avatarbot run`` calls it before the bot logs in: a supervised process that exits when the
    network or Discord is down only becomes a restart loop (with a traceback each time), while
    Discord comes back by itself. Tries back off to ``RETRY_MAX_SECONDS``, one log line each.
    A rejected token raises ``discord.LoginFailure`` at once: waiting cannot fix it.
    """
    delay = RETRY_FIRST_SECONDS
    attempt = 1
    while True:
        # A client of its own per try, closed after it: the bot's client logs in afresh.
        http = discord.http.HTTPClient(asyncio.get_running_loop())
        try:
            await http.static_login(token)
        except DISCORD_UNREACHABLE as exc:
            logger.warning(
                "Discord unreachable (try %d): %s; retrying in %.0f s",
                attempt,
                first_line(exc),
                delay,
            )
        else:
            if attempt > 1:
                logger.info("Discord reachable (try %d)", attempt)
            return
        finally:
            await http.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_SECONDS)
        attempt += 1


def configure_discord_endpoints(settings: Settings) -> None:
    """Point discord.py at the configured REST and gateway URLs (proxies, test servers).

    These are class attributes in discord.py, so this affects the whole process: call it once
    before ``start``. SimCord does not need it (it replaces the transport).
    """
    import yarl
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    Route.BASE = settings.discord_api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def create_bot(
    settings: Settings,
    *,
    database: Database | None = None,
    engine_port: EnginePort | None = None,
    sync_commands: bool = True,
    freeze_gc: bool = False,
    serve_ops: bool = False,
) -> AvatarBot:
    """Build the fully wired bot without connecting it.

    ``database`` and ``engine_port`` may be shared with the caller (tests reuse one tiny
    engine); the bot then leaves closing them to the caller. ``AutoShardedBot`` is used when
    ``settings.shard_count`` is set. ``freeze_gc`` is for processes that exist for the bot
    (``avatarbot run``, the benchmark): see ``_freeze_heap``. ``serve_ops`` starts the
    ``/healthz``, ``/readyz`` and ``/metrics`` endpoint on ``settings.ops.listen``
    (``avatarbot run``; tests with port 0).
    """
    cls = AvatarBot if settings.shard_count is None else ShardedAvatarBot
    return cls(
        settings,
        database=database,
        engine_port=engine_port,
        sync_commands=sync_commands,
        freeze_gc=freeze_gc,
        serve_ops=serve_ops,
        shard_count=settings.shard_count,
    )
