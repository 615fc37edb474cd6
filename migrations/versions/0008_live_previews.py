"""Live previews (issue 25).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

- ``guild_settings.live_previews``: whether a render's progress message shows small blurred
  previews while it denoises (NULL: on, the default; false: the guild turned them off with
  ``/avatar-admin safety previews``). Previews themselves are never stored.

Downgrading drops the column (older code shows no previews).

Frozen like 0001: column types from SQLAlchemy only, no imports of the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(sa.Column("live_previews", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_column("live_previews")
