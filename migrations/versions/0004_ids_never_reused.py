"""Ids that are never reused: AUTOINCREMENT on SQLite for the ids that reach Discord.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

A plain SQLite ``INTEGER PRIMARY KEY`` hands out ``max(id) + 1``: once the newest rows are
deleted (a member's forget-me, a Delete button), the next row gets a deleted row's id. Job ids
travel in the custom_ids of buttons on messages that stay posted (``avatarbot:delete:42``), so
another member's new job would answer an old message's buttons. ``AUTOINCREMENT`` makes SQLite
remember the largest id ever handed out (in ``sqlite_sequence``) and never go below it.

Rebuilt here: ``render_jobs`` (ids in custom_ids, file names and embeds) and ``avatars`` (ids in
jobs, logs and the sealed blobs' bindings). Their rows and their children (job outputs,
attempts, the ledger's ``job_id``, ``parent_job_id``, photos, features, consents) stay as they
are: env.py turns foreign keys off while a table is rebuilt and checks them afterwards.

Ids deleted *above* today's largest id before this revision cannot be known, so a database that
has been used starts its sequence ``ID_GAP`` above the largest id it still has (a 64-bit key
loses nothing); a fresh one starts at 1.

PostgreSQL sequences never hand out a value twice: nothing to do there.

Note for later revisions: SQLAlchemy does not reflect AUTOINCREMENT, so a batch rebuild
(``recreate``) of these tables must pass ``table_kwargs={"sqlite_autoincrement": True}``
(tests/db/test_ids_never_reused.py fails otherwise).

Frozen like 0001: column types from SQLAlchemy only, no imports of the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("avatars", "render_jobs")
# Where else ids of these tables may survive their rows (ON DELETE SET NULL, or kept on
# purpose), and what says the database has been used at all.
ID_GAP = 1_000_000
REFERENCES = {
    "avatars": ("SELECT max(avatar_id) FROM render_jobs",),
    "render_jobs": (
        "SELECT max(job_id) FROM usage_ledger",
        "SELECT max(parent_job_id) FROM render_jobs",
    ),
}
USED = ("avatars", "render_jobs", "usage_ledger", "audit_log")


def _rebuild(autoincrement: bool) -> None:
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def _scalar(sql: str) -> int:
    value = op.get_bind().exec_driver_sql(sql).scalar()
    return int(value or 0)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    used = any(_scalar(f"SELECT count(*) FROM {table}") for table in USED)
    _rebuild(True)
    bind = op.get_bind()
    for table in TABLES:
        largest = max(
            _scalar(f"SELECT max(id) FROM {table}"), *(_scalar(q) for q in REFERENCES[table])
        )
        start = largest + ID_GAP if used else largest
        bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :t"), {"t": table})
        if start:
            bind.execute(
                sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :seq)"),
                {"t": table, "seq": start},
            )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _rebuild(False)
    op.get_bind().execute(
        sa.text("DELETE FROM sqlite_sequence WHERE name IN ('avatars', 'render_jobs')")
    )
