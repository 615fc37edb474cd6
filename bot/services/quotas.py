"""Guild quota settings, a member's usage, and the admin views of both.

Quotas are guild settings with defaults (``Settings.quotas``); a guild row stores only the
overrides (NULL = default). Usage comes from the ledger (see bot/services/ledger.py for the
UTC-day semantics). A guild id of None stands for "no guild": the personal scope of renders
outside every server the bot is in (DMs with it, and servers or group DMs where a member
installed the app to their own account; also the CLI without ``--guild``). There the
operator's personal quotas apply (``Settings.personal_quotas``), no admin can change them, and
usage is counted per member apart from every guild (the usage ledger's rows with a NULL guild;
avatar creations count across guilds in ``counted_events`` instead, so nothing else means
NULL there).

A member's usage of today survives their forget-me through a keyed hash of (guild, member,
day) on their ledger rows of today (bot/services/usage_keys.py). Admin changes (``set``,
``grant``) are written to the audit log in the same transaction, with the acting admin's id
(``actor_id``; None from the CLI).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, get_args

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import QuotaCeilings, QuotaDefaults
from bot.errors import InvalidInput
from bot.services import audit
from bot.services.ledger import UNITS_PER_RENDER, day_bounds, used_today
from bot.services.results import GuildQuotas, UsageReport, UsageRow, UsageView
from bot.services.usage_keys import UsageKeys
from db.models import CountedKind, LedgerEntry
from db.repositories import counted as counted_repo
from db.repositories import guilds as guilds_repo
from db.repositories import jobs as jobs_repo
from db.repositories import ledger as ledger_repo
from db.repositories.common import lock_scope
from db.session import Database
from db.types import utcnow
from engine.config import Personalizer as PersonalizerName

logger = logging.getLogger(__name__)

QUOTA_FIELDS: tuple[str, ...] = tuple(QuotaDefaults.model_fields)
# The personalizers an admin may pick: the engine settings' one list (renders still refuse a
# personalizer the running workers do not have, naming the ones they do).
PERSONALIZERS: tuple[str, ...] = get_args(PersonalizerName)
MAX_REPORT_DAYS = 90
MAX_GRANT = 1000


class QuotaService:
    def __init__(
        self,
        database: Database,
        defaults: QuotaDefaults,
        keys: UsageKeys | None = None,
        ceilings: QuotaCeilings | None = None,
        personal: QuotaDefaults | None = None,
    ) -> None:
        self._db = database
        self._defaults = defaults
        self._personal = personal or defaults
        self.keys = keys or UsageKeys()
        # The most a guild may set per field: the operator's ceiling, or the operator's own
        # default when that is higher (the operator chose it).
        bounds = ceilings or QuotaCeilings()
        self._ceilings: dict[str, int] = {
            name: max(getattr(bounds, name), getattr(defaults, name))
            for name in QuotaCeilings.model_fields
        }

    @property
    def ceilings(self) -> dict[str, int]:
        """The operator's ceiling of each bounded quota field (what ``set`` allows at most)."""
        return dict(self._ceilings)

    async def quotas_in(self, session: AsyncSession, guild_id: int | None) -> GuildQuotas:
        """The effective quotas of a guild (None: the personal scope), read in the caller's
        transaction."""
        if guild_id is None:
            return GuildQuotas(guild_id=None, personalizer=None, **self._personal.model_dump())
        row = await guilds_repo.get(session, guild_id)
        values: dict[str, Any] = {}
        for name in QUOTA_FIELDS:
            override = getattr(row, name) if row is not None else None
            if override is not None and name in self._ceilings:
                # An override stored before the operator lowered a ceiling.
                override = min(override, self._ceilings[name])
            values[name] = override if override is not None else getattr(self._defaults, name)
        personalizer = row.personalizer if row is not None else None
        return GuildQuotas(
            guild_id=guild_id,
            personalizer=personalizer,
            nsfw_policy=(row.nsfw_policy if row is not None else None) or "block",
            blocked_terms=tuple(row.blocked_terms or ()) if row is not None else (),
            allowed_terms=tuple(row.allowed_terms or ()) if row is not None else (),
            **values,
        )

    async def get(self, guild_id: int | None) -> GuildQuotas:
        """The guild's effective quota settings (anyone may read them)."""
        async with self._db.begin(readonly=True) as session:
            return await self.quotas_in(session, guild_id)

    async def set(
        self,
        guild_id: int,
        *,
        actor_is_admin: bool,
        actor_id: int | None = None,
        **changes: Any,
    ) -> GuildQuotas:
        """Change some of a guild's quotas (admins only); a value of None restores the default.

        Keys are the fields of ``GuildQuotas`` (``renders_per_day``, ``max_side``,
        ``personalizer``...). The whole result is validated against the same bounds as the
        defaults, so a guild cannot be configured into something the engine refuses, and each
        value against the operator's ceiling (``Settings.quota_ceilings``), so a guild admin
        cannot buy more GPU time than the operator allows. The change (old → new values)
        goes to the audit log as ``quota.set``.
        """
        audit.require_admin(actor_is_admin)
        unknown = sorted(set(changes) - set(QUOTA_FIELDS) - {"personalizer"})
        if unknown:
            raise InvalidInput(f"Unknown setting(s): {', '.join(unknown)}.")
        if not changes:
            raise InvalidInput("Nothing to change.")
        above = [
            f"{n} at most {self._ceilings[n]}"
            for n, v in sorted(changes.items())
            if n in self._ceilings and isinstance(v, int) and v > self._ceilings[n]
        ]
        if above:
            raise InvalidInput(f"Above what this bot's operator allows: {', '.join(above)}.")
        personalizer = changes.get("personalizer")
        if personalizer is not None and personalizer not in PERSONALIZERS:
            raise InvalidInput(f"personalizer must be one of {', '.join(PERSONALIZERS)}.")
        async with self._db.begin() as session:
            await lock_scope(session, guild_id)
            current = await self.quotas_in(session, guild_id)
            merged = {n: getattr(current, n) for n in QUOTA_FIELDS}
            merged.update(
                {
                    n: (v if v is not None else getattr(self._defaults, n))
                    for n, v in changes.items()
                    if n in QUOTA_FIELDS
                }
            )
            try:
                QuotaDefaults(**merged)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                )
                raise InvalidInput(f"Invalid setting: {problems}.") from exc
            await guilds_repo.update_settings(session, guild_id, dict(changes))
            result = await self.quotas_in(session, guild_id)
            await audit.record(
                session,
                guild_id,
                actor_id,
                "quota.set",
                {
                    "changes": {
                        n: [getattr(current, n), getattr(result, n)] for n in sorted(changes)
                    }
                },
            )
        logger.info("guild %s quotas changed: %s", guild_id, sorted(changes))
        return result

    async def usage(self, guild_id: int | None, user_id: int) -> UsageView:
        """What the member used today (UTC) in this guild, what is left and when it resets."""
        async with self._db.begin(readonly=True) as session:
            quotas = await self.quotas_in(session, guild_id)
            return await self.usage_in(session, quotas, user_id)

    async def usage_in(self, session: AsyncSession, quotas: GuildQuotas, user_id: int) -> UsageView:
        now = utcnow()
        keys = await self.keys.keys_for(session, quotas.guild_id, user_id, now)
        used, granted = await used_today(
            session, guild_id=quotas.guild_id, user_id=user_id, now=now, user_keys=keys
        )
        # Grants never lift a member's day above the operator's ceiling (``grant`` refuses
        # more; this also binds grants made before that rule).
        # The personal scope's own setting may exceed the guilds' ceiling (the operator chose
        # it; nobody can grant there).
        ceiling = max(self._day_ceiling(), quotas.renders_per_day)
        limit = min(quotas.renders_per_day + granted, ceiling) * UNITS_PER_RENDER
        _, resets_at = day_bounds(now)
        return UsageView(
            used=max(used, 0), limit=limit, remaining=max(limit - used, 0), resets_at=resets_at
        )

    def _day_ceiling(self) -> int:
        """The most renders a member may have in a day, quota and grants together."""
        return self._ceilings["renders_per_day"]

    async def report(
        self,
        guild_id: int,
        days: int = 7,
        user_id: int | None = None,
        *,
        actor_is_admin: bool,
    ) -> UsageReport:
        """Per UTC day and member, the guild's reserved/refunded/granted renders (admins only).

        ``days`` counts today: 1 is today only. Rows of members who used forget-me have
        ``user_id`` None.
        """
        audit.require_admin(actor_is_admin)
        if not 1 <= days <= MAX_REPORT_DAYS:
            raise InvalidInput(f"days must be between 1 and {MAX_REPORT_DAYS}.")
        start, _ = day_bounds(utcnow())
        since = start - timedelta(days=days - 1)
        async with self._db.begin(readonly=True) as session:
            rows = await ledger_repo.report(
                session, guild_id=guild_id, since=since, user_id=user_id
            )
            withheld = await counted_repo.per_day(
                session, kind=CountedKind.WITHHELD, guild_id=guild_id, since=since, user_id=user_id
            )
            likeness = await jobs_repo.likeness_per_day(
                session, guild_id=guild_id, since=since, user_id=user_id
            )
        faces = {(f.day, f.user_id): f for f in likeness}
        # A withheld render was reserved (and refunded), so it has its ledger row of the day;
        # one whose ledger rows went with a forget-me the next day still shows as "erased".
        counts = {(w.day, w.user_id): w.count for w in withheld}
        report_rows = []
        for r in rows:
            seen = faces.get((r.day, r.user_id)) if r.user_id is not None else None
            report_rows.append(
                UsageRow(
                    r.day,
                    r.user_id,
                    r.reserved,
                    r.refunded,
                    r.granted,
                    counts.pop((r.day, r.user_id), 0),
                    likeness=seen.mean if seen is not None else None,
                    lost_faces=seen.lost if seen is not None else 0,
                )
            )
        report_rows += [UsageRow(d, uid, 0, 0, 0, n) for (d, uid), n in counts.items()]
        return UsageReport(guild_id=guild_id, days=days, rows=tuple(report_rows))

    async def grant(
        self,
        guild_id: int,
        user_id: int,
        amount: int,
        *,
        actor_is_admin: bool,
        actor_id: int | None = None,
        note: str | None = None,
    ) -> UsageView:
        """Give a member ``amount`` extra renders for today (admins only).

        The member's day (the guild's ``renders_per_day`` plus every grant of the day, those
        made before a forget-me or the bot's removal included) never exceeds the operator's
        ceiling (``QuotaCeilings.renders_per_day``): a grant beyond it is refused, saying how
        many renders can still be granted today. The ledger row says only "admin grant" (or
        ``note``); who granted it goes to the audit log (``quota.grant``), where an admin's
        forget-me can erase it."""
        audit.require_admin(actor_is_admin)
        if not 1 <= amount <= MAX_GRANT:
            raise InvalidInput(f"amount must be between 1 and {MAX_GRANT}.")
        async with self._db.begin() as session:
            await lock_scope(session, guild_id)
            quotas = await self.quotas_in(session, guild_id)
            now = utcnow()
            keys = await self.keys.keys_for(session, guild_id, user_id, now)
            _, granted = await used_today(
                session, guild_id=guild_id, user_id=user_id, now=now, user_keys=keys
            )
            ceiling = self._day_ceiling()
            headroom = max(ceiling - quotas.renders_per_day - granted, 0)
            if amount > headroom:
                raise InvalidInput(
                    f"This bot's operator allows at most {ceiling} renders per member and day "
                    f"(this server's {quotas.renders_per_day} a day plus grants): "
                    + (
                        f"at most {headroom} more can be granted to this member today."
                        if headroom
                        else "nothing more can be granted to this member today."
                    )
                )
            await ledger_repo.append(
                session,
                entry=LedgerEntry.GRANT,
                guild_id=guild_id,
                user_id=user_id,
                amount=amount,
                now=now,
                note=(note or "admin grant")[:200],
            )
            detail: dict[str, Any] = {"member_id": str(user_id), "amount": amount}
            if note:
                detail["note"] = note[:200]
            await audit.record(session, guild_id, actor_id, "quota.grant", detail)
            return await self.usage_in(session, quotas, user_id)
