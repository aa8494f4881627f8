"""ordered queues move on as they change: the ordered_queue table, no index on endpoint.ordered

An ordered endpoint's queue now moves on in the transaction that stores deliveries to it or
records a delivery's final outcome (`app/store/ordered_queues.py`), no longer in every claim.
Moving a queue on locks the endpoint's row of the new `ordered_queue` table (made as needed),
not the endpoint's own row, which transactions that change the endpoint lock early. What finds
ordered endpoints now looks them up by id among the few a transaction touched, where an index
on `ordered` led SQLite (and PostgreSQL without statistics) to read every ordered endpoint
instead; the once-a-minute check of every ordered endpoint reads the table. The queues that the
previous version left held move on when a worker starts.

Revision ID: 7cfa844a60df
Revises: c38dc4b23ade
Create Date: 2026-12-03 18:34:08.441460
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "7cfa844a60df"
down_revision = "c38dc4b23ade"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_endpoint_ordered", table_name="endpoint")
    op.create_table(
        "ordered_queue",
        sa.Column("endpoint_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.ForeignKeyConstraint(["endpoint_id"], ["endpoint.id"]),
        sa.PrimaryKeyConstraint("endpoint_id"),
    )


def downgrade() -> None:
    op.drop_table("ordered_queue")
    op.create_index("ix_endpoint_ordered", "endpoint", ["ordered"], unique=False)
