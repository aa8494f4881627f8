"""ordered queues move on as they change: no index on endpoint.ordered

An ordered endpoint's queue now moves on in the transaction that stores deliveries to it or
records a delivery's final outcome (`app/store/ordered_queues.py`), no longer in every claim.
What finds ordered endpoints now looks them up by id among the few a transaction touched, where
an index on `ordered` led SQLite (and PostgreSQL without statistics) to read every ordered
endpoint instead; the once-a-minute check of every ordered endpoint reads the table.
Nothing else changes: the queues that the previous version left held move on when a worker
starts.

Revision ID: 7cfa844a60df
Revises: c38dc4b23ade
Create Date: 2026-12-03 18:34:08.441460
"""

from __future__ import annotations

from alembic import op

revision = "7cfa844a60df"
down_revision = "c38dc4b23ade"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_endpoint_ordered", table_name="endpoint")


def downgrade() -> None:
    op.create_index("ix_endpoint_ordered", "endpoint", ["ordered"], unique=False)
