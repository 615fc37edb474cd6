"""Which database errors are worth retrying: the database blinked, not the statement.

A PostgreSQL server that restarts or is stopped for a moment refuses connections
(``ConnectionRefusedError`` comes through SQLAlchemy as it is); one that terminated our backend
leaves a closed connection (``connection_invalidated``); under concurrency PostgreSQL aborts a
transaction for a serialization failure (40001) or a deadlock (40P01), and SQLite answers
"database is locked" past its busy timeout. The same transaction, run again, may succeed. Any
other error (a constraint, a bug, a wrong schema) fails the same way every time.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

# SQLSTATE classes and codes that say the connection or the server, not the statement:
# 08 connection exception, 40 transaction rollback (serialization failure, deadlock),
# 57P01-03 admin shutdown / crash shutdown / cannot connect now, 53300 too many connections.
_TRANSIENT_CLASSES = ("08", "40")
_TRANSIENT_CODES = ("57P01", "57P02", "57P03", "53300")


def _sqlstate(error: BaseException | None) -> str | None:
    # asyncpg's errors carry ``sqlstate``; SQLAlchemy's adapted error keeps it too, or on its
    # cause.
    for candidate in (error, getattr(error, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is the database blinking (see the module docstring)."""
    if isinstance(error, ConnectionError | sa_exc.TimeoutError):
        return True  # refused or reset; a pool with no connection to give
    code = _sqlstate(error)
    if code is None and isinstance(error, sa_exc.DBAPIError):
        code = _sqlstate(error.orig)
    if code is not None and (code[:2] in _TRANSIENT_CLASSES or code in _TRANSIENT_CODES):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        return isinstance(error, sa_exc.OperationalError) and "database is locked" in str(error)
    return False
