"""Friends in one picture, with their consent (issue 26).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

- ``avatars.others_may_ask``: whether other members may ask to render with the avatar (off by
  default; existing avatars stay private).
- ``guild_settings.cross_member_renders``: NULL or true, members may ask; false, the guild
  forbids renders with another member's avatar.
- ``avatar_grants``: "always allow this member" (avatar, owner, grantee); revocable by either.
- ``avatar_asks``: a pending request to render with another member's avatar: requester,
  owner, both avatars, the sealed prompt and the validated settings, guild and channel, the
  requester's interaction (sealed token), status and expiry; the job once approved.
- ``render_jobs.posted_channel_id`` / ``posted_message_id``: the posted result, so an erasure
  can delete the message.

Downgrading drops them all (older code knows no cross-member renders).

Frozen like 0001: column types from SQLAlchemy only, no imports of the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # Plain ADD COLUMNs, never a batch rebuild: SQLite would rebuild ``avatars`` and
    # ``render_jobs`` without AUTOINCREMENT (SQLAlchemy does not reflect it: 0004), and they
    # would hand out the newest deleted ids again.
    op.add_column(
        "avatars",
        sa.Column("others_may_ask", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("guild_settings", sa.Column("cross_member_renders", sa.Boolean(), nullable=True))
    op.add_column("render_jobs", sa.Column("posted_channel_id", sa.BigInteger(), nullable=True))
    op.add_column("render_jobs", sa.Column("posted_message_id", sa.BigInteger(), nullable=True))
    op.create_table(
        "avatar_grants",
        sa.Column("id", ID, nullable=False),
        sa.Column("avatar_id", ID, nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("grantee_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["avatar_id"],
            ["avatars.id"],
            name=op.f("fk_avatar_grants_avatar_id_avatars"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_avatar_grants")),
        sa.UniqueConstraint(
            "avatar_id", "grantee_id", name=op.f("uq_avatar_grants_avatar_id_grantee_id")
        ),
    )
    op.create_index(op.f("ix_avatar_grants_grantee_id"), "avatar_grants", ["grantee_id"])
    op.create_index(op.f("ix_avatar_grants_owner_id"), "avatar_grants", ["owner_id"])
    op.create_table(
        "avatar_asks",
        sa.Column("id", ID, nullable=False),
        sa.Column("requester_id", sa.BigInteger(), nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("avatar_id", ID, nullable=False),
        sa.Column("requester_avatar_id", ID, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("interaction_app_id", sa.BigInteger(), nullable=True),
        sa.Column("interaction_token", sa.Text(), nullable=True),
        sa.Column("interaction_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("interaction_message_id", sa.BigInteger(), nullable=True),
        sa.Column("job_id", ID, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'declined', 'expired')",
            name=op.f("ck_avatar_asks_status"),
        ),
        sa.ForeignKeyConstraint(
            ["avatar_id"],
            ["avatars.id"],
            name=op.f("fk_avatar_asks_avatar_id_avatars"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["requester_avatar_id"],
            ["avatars.id"],
            name=op.f("fk_avatar_asks_requester_avatar_id_avatars"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["render_jobs.id"],
            name=op.f("fk_avatar_asks_job_id_render_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_avatar_asks")),
        sqlite_autoincrement=True,
    )
    for column in ("requester_id", "owner_id", "avatar_id", "requester_avatar_id"):
        op.create_index(op.f(f"ix_avatar_asks_{column}"), "avatar_asks", [column])
    op.create_index(op.f("ix_avatar_asks_expires_at"), "avatar_asks", ["expires_at"])
    op.create_index(op.f("ix_avatar_asks_job_id"), "avatar_asks", ["job_id"])


def downgrade() -> None:
    op.drop_table("avatar_asks")
    op.drop_table("avatar_grants")
    # Plain DROP COLUMNs (SQLite 3.35+), for the same reason as the upgrade's ADD COLUMNs.
    op.drop_column("render_jobs", "posted_message_id")
    op.drop_column("render_jobs", "posted_channel_id")
    op.drop_column("guild_settings", "cross_member_renders")
    op.drop_column("avatars", "others_may_ask")
