"""Safety: output verdicts, prompt policy, abuse limits, usage kept past forget-me, audit log.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

- ``guild_settings``: ``renders_per_minute``, ``creates_per_hour`` (abuse limits),
  ``nsfw_policy`` (flagged images in age-restricted channels: block or spoiler),
  ``blocked_terms`` / ``allowed_terms`` (the guild's changes to the default prompt blocklist).
- ``job_outputs.flagged``: the output check flagged this image (scores in the job's result).
- ``usage_ledger.user_key``: a keyed hash that keeps a member's usage of the day past forget-me.
- ``audit_log``: admin actions per guild.

Frozen like 0001: column types from SQLAlchemy only, no imports of the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(sa.Column("renders_per_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("creates_per_hour", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("nsfw_policy", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("blocked_terms", JSON, nullable=True))
        batch.add_column(sa.Column("allowed_terms", JSON, nullable=True))
    with op.batch_alter_table("job_outputs") as batch:
        batch.add_column(
            sa.Column("flagged", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("usage_ledger") as batch:
        batch.add_column(sa.Column("user_key", sa.String(length=64), nullable=True))
    op.create_index(
        "ix_usage_ledger_guild_key_created", "usage_ledger", ["guild_id", "user_key", "created_at"]
    )
    op.create_table(
        "audit_log",
        sa.Column("id", ID, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("actor_id", sa.BigInteger(), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("detail", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_guild_created", "audit_log", ["guild_id", "created_at"])
    op.create_index(op.f("ix_audit_log_actor_id"), "audit_log", ["actor_id"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_index("ix_usage_ledger_guild_key_created", table_name="usage_ledger")
    with op.batch_alter_table("usage_ledger") as batch:
        batch.drop_column("user_key")
    with op.batch_alter_table("job_outputs") as batch:
        batch.drop_column("flagged")
    with op.batch_alter_table("guild_settings") as batch:
        for column in (
            "allowed_terms",
            "blocked_terms",
            "nsfw_policy",
            "creates_per_hour",
            "renders_per_minute",
        ):
            batch.drop_column(column)
