"""Column types shared by the models.

``UTCDateTime`` keeps every timestamp timezone-aware UTC in Python on both databases:
PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored naive (in
UTC) and gets its ``tzinfo`` back on the way out. Naive datetimes are refused on the way in,
because guessing their zone is how off-by-hours quota bugs are born.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# Surrogate keys: 64-bit on PostgreSQL; on SQLite only a plain INTEGER PRIMARY KEY is the
# rowid alias that autoincrements (a BIGINT primary key would not get values).
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time, aware, in UTC (the default of every timestamp column)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always an aware UTC ``datetime`` in Python."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"UTCDateTime expects a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"UTCDateTime refuses a naive datetime ({value.isoformat()})")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
