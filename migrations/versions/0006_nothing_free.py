"""Nothing free, ceilings bind, trails kept (issue 21).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

- ``counted_events``: what a member's abuse limits count and a forget-me must not reset:
  withheld renders (the daily allowance and cool-down) and avatar creations
  (``creates_per_hour``, which used to count the encode jobs a forget-me deletes). Keyed after
  a forget-me like ``usage_ledger`` (``user_key``).
- ``guild_settings.withheld_per_day``: the guild's allowance override (NULL: the default).
- ``departed_guilds``: guilds that removed the bot, whose day of usage and audit log are kept
  for a retention period.

Downgrading drops both tables and the column (older code counts creations by their
encode jobs again).

Frozen like 0001: column types from SQLAlchemy only, no imports of the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "counted_events",
        sa.Column("id", ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("user_key", sa.String(length=64), nullable=True),
        sa.Column("job_id", ID, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=True),
        sa.CheckConstraint("kind IN ('withheld', 'create')", name=op.f("ck_counted_events_kind")),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["render_jobs.id"],
            name=op.f("fk_counted_events_job_id_render_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_counted_events")),
    )
    op.create_index(
        "ix_counted_events_guild_user_created",
        "counted_events",
        ["guild_id", "user_id", "created_at"],
    )
    op.create_index(
        "ix_counted_events_guild_key_created",
        "counted_events",
        ["guild_id", "user_key", "created_at"],
    )
    op.create_index(op.f("ix_counted_events_job_id"), "counted_events", ["job_id"])
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(sa.Column("withheld_per_day", sa.Integer(), nullable=True))
    op.create_table(
        "departed_guilds",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_departed_guilds")),
    )


def downgrade() -> None:
    op.drop_table("departed_guilds")
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_column("withheld_per_day")
    op.drop_table("counted_events")
