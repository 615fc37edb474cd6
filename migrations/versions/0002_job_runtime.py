"""One job runtime: job kinds (render, encode), attempts history, workers, pending avatars.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

- ``render_jobs.kind`` (``render`` | ``encode``) and ``render_jobs.result`` (what an encode job
  kept and refused): avatar creation's GPU work is a queued job like a render.
- ``avatars.status`` (``pending`` | ``ready``): an avatar is pending until its encode job ends.
- ``job_attempts``: one row per attempt (worker, claimed, ended, outcome, error), removed with
  its job.
- ``workers``: the processes running the job loop, with the facts of their engine, so a bot
  without the model can validate and size requests.

Frozen like 0001: column types from SQLAlchemy only, no imports of the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("render_jobs") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=16), server_default="render", nullable=False)
        )
        batch.add_column(sa.Column("result", JSON, nullable=True))
        batch.create_check_constraint(op.f("ck_render_jobs_kind"), "kind IN ('render', 'encode')")
    with op.batch_alter_table("avatars") as batch:
        batch.add_column(
            sa.Column("status", sa.String(length=16), server_default="ready", nullable=False)
        )
        batch.create_check_constraint(op.f("ck_avatars_status"), "status IN ('pending', 'ready')")

    op.create_table(
        "job_attempts",
        sa.Column("id", ID, nullable=False),
        sa.Column("job_id", ID, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        _ts("claimed_at"),
        _ts("ended_at", nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('done', 'failed', 'cancelled', 'lost', 'handed_back')",
            name=op.f("ck_job_attempts_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["render_jobs.id"],
            name=op.f("fk_job_attempts_job_id_render_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_attempts")),
        sa.UniqueConstraint("job_id", "number", name=op.f("uq_job_attempts_job_id_number")),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("facts", JSON, nullable=True),
        sa.Column("tokenizer", sa.Text(), nullable=True),
        _ts("started_at"),
        _ts("seen_at"),
        _ts("stopped_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_seen_at"), "workers", ["seen_at"])


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("job_attempts")
    # Encode jobs have no meaning before this revision; pending avatars never finished.
    op.execute("DELETE FROM render_jobs WHERE kind = 'encode'")
    op.execute("DELETE FROM avatars WHERE status = 'pending'")
    with op.batch_alter_table("avatars") as batch:
        batch.drop_constraint(op.f("ck_avatars_status"), type_="check")
        batch.drop_column("status")
    with op.batch_alter_table("render_jobs") as batch:
        batch.drop_constraint(op.f("ck_render_jobs_kind"), type_="check")
        batch.drop_column("result")
        batch.drop_column("kind")
