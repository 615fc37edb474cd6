"""Operator-facing database errors (no SQLAlchemy import: the CLI catches them cheaply).

``Database.from_url`` raises ``DatabaseConfigError`` for a URL it cannot use, and
``Database.connect`` ``DatabaseUnavailable`` when the first connection fails; each message names
the problem and the fix in one line, with any password hidden.
"""

from __future__ import annotations


class DatabaseError(Exception):
    """An operator's database problem: the message names it and the fix, in one line."""


class DatabaseConfigError(DatabaseError, ValueError):
    """The database URL cannot be used (unparsable, unsupported backend, a sync driver)."""


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached or opened on the first connection."""
