"""ordered endpoints hold their queue: delivery.occurred_at and the queue indexes

Each delivery carries its event's `occurred_at`, and a pending delivery to an ordered endpoint
waits with no `next_attempt_at` until the one before it finishes (see `DeliveryRow`): only
scheduled deliveries have one, which a check now enforces, and the due index holds only them.
Existing deliveries take their event's time, and the pending ones of ordered endpoints are
held: the next claim schedules each endpoint's earliest once nothing of it is in flight.

Revision ID: c38dc4b23ade
Revises: bd3d9546dd65
Create Date: 2026-12-03 15:55:27.022823
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import app.store.types

revision = "c38dc4b23ade"
down_revision = "bd3d9546dd65"
branch_labels = None
depends_on = None

# As in app/store/tables.py when this was written (a migration keeps its own copy).
LIVE = "status IN ('pending', 'delivering')"
SCHEDULED = "next_attempt_at IS NOT NULL"
HELD = "status = 'pending' AND next_attempt_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("occurred_at", app.store.types.UTCDateTime(), nullable=True))
    op.execute(
        "UPDATE delivery SET occurred_at ="
        " (SELECT event.occurred_at FROM event WHERE event.id = delivery.event_id)"
    )
    op.execute(f"UPDATE delivery SET next_attempt_at = NULL WHERE NOT ({LIVE})")
    op.execute(
        "UPDATE delivery SET next_attempt_at = NULL WHERE status = 'pending'"
        " AND endpoint_id IN (SELECT id FROM endpoint WHERE ordered)"
    )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.alter_column(
            "occurred_at", existing_type=app.store.types.UTCDateTime(), nullable=False
        )
        batch_op.create_check_constraint(
            "ck_delivery_finished_unscheduled", f"{LIVE} OR next_attempt_at IS NULL"
        )
        batch_op.drop_index("ix_delivery_due")
        batch_op.create_index(
            "ix_delivery_due",
            ["status", "next_attempt_at"],
            unique=False,
            sqlite_where=sa.text(SCHEDULED),
            postgresql_where=sa.text(SCHEDULED),
        )
        batch_op.create_index(
            "ix_delivery_scheduled",
            ["endpoint_id"],
            unique=False,
            sqlite_where=sa.text(SCHEDULED),
            postgresql_where=sa.text(SCHEDULED),
        )
        batch_op.create_index(
            "ix_delivery_held",
            ["endpoint_id", "occurred_at", "id"],
            unique=False,
            sqlite_where=sa.text(HELD),
            postgresql_where=sa.text(HELD),
        )
    with op.batch_alter_table("endpoint", schema=None) as batch_op:
        batch_op.create_index("ix_endpoint_ordered", ["ordered"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("endpoint", schema=None) as batch_op:
        batch_op.drop_index("ix_endpoint_ordered")
    op.execute(
        "UPDATE delivery SET next_attempt_at = updated_at"
        " WHERE status = 'pending' AND next_attempt_at IS NULL"
    )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_held")
        batch_op.drop_index("ix_delivery_scheduled")
        batch_op.drop_index("ix_delivery_due")
        batch_op.create_index("ix_delivery_due", ["status", "next_attempt_at"], unique=False)
        batch_op.drop_constraint("ck_delivery_finished_unscheduled", type_="check")
        batch_op.drop_column("occurred_at")
