"""Likeness on every render, best of k (issue 28).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

- ``job_outputs.likeness_kind`` and ``job_outputs.likeness``: how much each stored image looks
  like its avatar (engine/likeness.py): ``face`` with a figure 0..1, ``no_face`` (a person's
  render in which no face was found), ``image`` (a pet's or object's image similarity), or
  NULL when the worker could not measure it. Kept with the image, gone with it.
- ``guild_settings.best_of``: the guild's default number of candidates a render picks its
  images from (NULL: one, no choice).

The enrolled identity an image is compared with is stored as another row of
``features`` (sealed like the features), so it needs no table.

Downgrading drops the three columns (older code shows no likeness and renders no candidates).

Frozen like 0001: column types from SQLAlchemy only, no imports of the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_outputs") as batch:
        batch.add_column(sa.Column("likeness_kind", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("likeness", sa.Float(), nullable=True))
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(sa.Column("best_of", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_column("best_of")
    with op.batch_alter_table("job_outputs") as batch:
        batch.drop_column("likeness")
        batch.drop_column("likeness_kind")
