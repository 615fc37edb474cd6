"""Initial schema: guild settings, avatars, photos, features, consents, jobs, outputs, ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Frozen copy of db/models.py at this revision: it names column types from SQLAlchemy only (no
imports of the models), so later model changes cannot rewrite history.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# INTEGER on SQLite so the key is the autoincrementing rowid; BIGINT elsewhere.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("renders_per_day", sa.Integer(), nullable=True),
        sa.Column("avatars_per_member", sa.Integer(), nullable=True),
        sa.Column("photos_per_avatar", sa.Integer(), nullable=True),
        sa.Column("queued_per_member", sa.Integer(), nullable=True),
        sa.Column("queued_per_guild", sa.Integer(), nullable=True),
        sa.Column("images_per_render", sa.Integer(), nullable=True),
        sa.Column("max_steps", sa.Integer(), nullable=True),
        sa.Column("max_side", sa.Integer(), nullable=True),
        sa.Column("personalizer", sa.String(length=32), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_guild_settings")),
    )
    op.create_table(
        "avatars",
        sa.Column("id", ID, nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("name_key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint("kind IN ('person', 'pet', 'object')", name=op.f("ck_avatars_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_avatars")),
        sa.UniqueConstraint("owner_id", "name_key", name=op.f("uq_avatars_owner_id_name_key")),
    )
    op.create_table(
        "photos",
        sa.Column("id", ID, nullable=False),
        sa.Column("avatar_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["avatar_id"],
            ["avatars.id"],
            name=op.f("fk_photos_avatar_id_avatars"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_photos")),
        sa.UniqueConstraint("avatar_id", "sha256", name=op.f("uq_photos_avatar_id_sha256")),
    )
    op.create_table(
        "features",
        sa.Column("id", ID, nullable=False),
        sa.Column("avatar_id", ID, nullable=False),
        sa.Column("encoder_id", sa.String(length=200), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=True),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["avatar_id"],
            ["avatars.id"],
            name=op.f("fk_features_avatar_id_avatars"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_features")),
        sa.UniqueConstraint(
            "avatar_id", "encoder_id", name=op.f("uq_features_avatar_id_encoder_id")
        ),
    )
    op.create_table(
        "consents",
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("avatar_id", ID, nullable=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("text_version", sa.String(length=32), nullable=False),
        _ts("accepted_at"),
        sa.ForeignKeyConstraint(
            ["avatar_id"],
            ["avatars.id"],
            name=op.f("fk_consents_avatar_id_avatars"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consents")),
    )
    op.create_index(op.f("ix_consents_user_id"), "consents", ["user_id"])
    op.create_index(op.f("ix_consents_avatar_id"), "consents", ["avatar_id"])

    op.create_table(
        "render_jobs",
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("avatar_id", ID, nullable=True),
        sa.Column("parent_job_id", ID, nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="queued", nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _ts("lease_expires_at", nullable=True),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("progress", sa.Float(), server_default=sa.text("0"), nullable=False),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.Column("timings", JSON, nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("interaction_app_id", sa.BigInteger(), nullable=True),
        sa.Column("interaction_token", sa.Text(), nullable=True),
        _ts("interaction_expires_at", nullable=True),
        sa.Column("progress_message_id", sa.BigInteger(), nullable=True),
        _ts("delivered_at", nullable=True),
        sa.Column("reserved", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'cancelled')",
            name=op.f("ck_render_jobs_status"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_render_jobs_attempts_nonnegative")),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_render_jobs_reserved_nonnegative")),
        sa.CheckConstraint(
            "progress >= 0 AND progress <= 1", name=op.f("ck_render_jobs_progress_range")
        ),
        sa.ForeignKeyConstraint(
            ["avatar_id"],
            ["avatars.id"],
            name=op.f("fk_render_jobs_avatar_id_avatars"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["parent_job_id"],
            ["render_jobs.id"],
            name=op.f("fk_render_jobs_parent_job_id_render_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_render_jobs")),
    )
    op.create_index("ix_render_jobs_status_id", "render_jobs", ["status", "id"])
    op.create_index("ix_render_jobs_status_lease", "render_jobs", ["status", "lease_expires_at"])
    op.create_index("ix_render_jobs_user_status", "render_jobs", ["user_id", "status"])
    op.create_index("ix_render_jobs_guild_status", "render_jobs", ["guild_id", "status"])
    op.create_index("ix_render_jobs_status_delivered", "render_jobs", ["status", "delivered_at"])
    op.create_index("ix_render_jobs_user_started", "render_jobs", ["user_id", "started_at"])
    op.create_index(op.f("ix_render_jobs_avatar_id"), "render_jobs", ["avatar_id"])
    op.create_index(op.f("ix_render_jobs_parent_job_id"), "render_jobs", ["parent_job_id"])

    op.create_table(
        "job_outputs",
        sa.Column("id", ID, nullable=False),
        sa.Column("job_id", ID, nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["render_jobs.id"],
            name=op.f("fk_job_outputs_job_id_render_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_outputs")),
        sa.UniqueConstraint("job_id", "index", name=op.f("uq_job_outputs_job_id_index")),
    )
    op.create_table(
        "usage_ledger",
        sa.Column("id", ID, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("entry", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("job_id", ID, nullable=True),
        _ts("created_at"),
        sa.Column("note", sa.String(length=200), nullable=True),
        sa.CheckConstraint(
            "entry IN ('reserve', 'refund', 'grant')", name=op.f("ck_usage_ledger_entry")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_usage_ledger_amount_positive")),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["render_jobs.id"],
            name=op.f("fk_usage_ledger_job_id_render_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_ledger")),
    )
    op.create_index(
        "ix_usage_ledger_guild_user_created", "usage_ledger", ["guild_id", "user_id", "created_at"]
    )
    op.create_index(op.f("ix_usage_ledger_job_id"), "usage_ledger", ["job_id"])

    op.create_table(
        "bot_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_bot_state")),
    )


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes.
    for table in (
        "bot_state",
        "usage_ledger",
        "job_outputs",
        "render_jobs",
        "consents",
        "features",
        "photos",
        "avatars",
        "guild_settings",
    ):
        op.drop_table(table)
