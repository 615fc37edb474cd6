"""Two avatars in one render: ``render_jobs.with_avatar_id``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09

A render can show a second avatar of the same member next to the first ("the person from
image 1 and the dog from image 2"), with a personalizer that takes two subjects (FLUX.2
[klein]). The job keeps it as it keeps the first: a nullable reference to ``avatars`` that
becomes NULL when that avatar is deleted (``ON DELETE SET NULL``, indexed for that delete).
Existing jobs are one-subject renders: NULL.

On SQLite the table is rebuilt (a foreign key cannot be added otherwise) with
``sqlite_autoincrement``, which SQLAlchemy does not reflect (see 0004), and its row in
``sqlite_sequence`` is carried over: the rebuilt table would otherwise restart its sequence
at the largest id it holds, and hand out again the ids of the newest deleted jobs (0004's
bug). Downgrading drops the column: code older than this revision sees a two-subject job as
a render of its first avatar.

Frozen like 0001: column types from SQLAlchemy only, no imports of the models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _recreate() -> str:
    # SQLite adds a foreign key only by rebuilding the table; PostgreSQL ALTERs in place.
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


@contextmanager
def _same_sequence(table: str) -> Iterator[None]:
    """Keep ``table``'s AUTOINCREMENT high-water mark across a SQLite rebuild."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        yield
        return
    query = sa.text("SELECT seq FROM sqlite_sequence WHERE name = :t")
    before = bind.execute(query, {"t": table}).scalar()
    yield
    if before is None:
        return
    after = bind.execute(query, {"t": table}).scalar()
    bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :t"), {"t": table})
    bind.execute(
        sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :seq)"),
        {"t": table, "seq": max(int(before), int(after or 0))},
    )


def upgrade() -> None:
    with (
        _same_sequence("render_jobs"),
        op.batch_alter_table(
            "render_jobs", recreate=_recreate(), table_kwargs={"sqlite_autoincrement": True}
        ) as batch,
    ):
        batch.add_column(sa.Column("with_avatar_id", ID, nullable=True))
        batch.create_foreign_key(
            op.f("fk_render_jobs_with_avatar_id_avatars"),
            "avatars",
            ["with_avatar_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_index(op.f("ix_render_jobs_with_avatar_id"), "render_jobs", ["with_avatar_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_render_jobs_with_avatar_id"), table_name="render_jobs")
    with (
        _same_sequence("render_jobs"),
        op.batch_alter_table(
            "render_jobs", recreate=_recreate(), table_kwargs={"sqlite_autoincrement": True}
        ) as batch,
    ):
        batch.drop_constraint(op.f("fk_render_jobs_with_avatar_id_avatars"), type_="foreignkey")
        batch.drop_column("with_avatar_id")
