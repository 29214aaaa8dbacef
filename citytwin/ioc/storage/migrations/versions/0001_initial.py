"""The initial IOC schema: requests and their events, entities and observations, alerts, subscriptions,
API keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from citytwin.ioc.storage.schema import BigId, Json, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("client_ref", sa.String(200)),
        sa.Column("service_code", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("requested_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("deadline", UtcDateTime, nullable=False),
        sa.Column("agency", sa.Text, nullable=False),
        sa.Column("lat", sa.Float),
        sa.Column("lon", sa.Float),
        sa.Column("address", sa.Text),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("media_url", sa.Text),
        sa.Column("reporter", Json),
        sa.Column("jurisdiction_id", sa.String(200)),
        sa.Column("assignee", sa.Text),
        sa.Column("duplicate_of", sa.BigInteger),
        sa.Column("status_note", sa.Text, nullable=False),
        sa.Column("closed_at", UtcDateTime),
    )
    op.create_index("ix_requests_token", "requests", ["token"], unique=True)
    op.create_index("ix_requests_client_ref", "requests", ["client_ref"], unique=True)
    op.create_index("ix_requests_service_status", "requests", ["service_code", "status"])
    op.create_index("ix_requests_requested_at", "requests", ["requested_at"])
    op.create_index("ix_requests_lat_lon", "requests", ["lat", "lon"])

    op.create_table(
        "request_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_index("ix_request_events_request_id", "request_events", ["request_id"])

    op.create_table(
        "entities",
        sa.Column("id", sa.String(512), primary_key=True),
        sa.Column("type", sa.String(512), nullable=False),
        sa.Column("attrs", Json, nullable=False),
        sa.Column("lon", sa.Float),
        sa.Column("lat", sa.Float),
        sa.Column("location_attr", Json),
        sa.Column("owner", sa.String(200)),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("modified_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_entities_type", "entities", ["type", "id"])
    op.create_index("ix_entities_modified_at", "entities", ["modified_at"])
    op.create_index("ix_entities_lat_lon", "entities", ["lat", "lon"])

    op.create_table(
        "observations",
        sa.Column("entity_id", sa.String(512), primary_key=True),
        sa.Column("attr", sa.String(512), primary_key=True),
        sa.Column("observed_at", UtcDateTime, primary_key=True),
        sa.Column("value", Json),
    )

    op.create_table(
        "alerts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("rule_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("entity_id", sa.String(512), nullable=False),
        sa.Column("entity_type", sa.String(512), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("category", sa.String(50), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("raised_at", UtcDateTime, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("attribute", sa.String(512)),
        sa.Column("value", Json),
        sa.Column("lon", sa.Float),
        sa.Column("lat", sa.Float),
        sa.Column("acknowledged_at", UtcDateTime),
        sa.Column("cleared_at", UtcDateTime),
        sa.Column("actor", sa.Text),
    )
    op.create_index("ix_alerts_status", "alerts", ["status"])
    op.create_index("ix_alerts_entity_id", "alerts", ["entity_id"])

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(512), primary_key=True),
        sa.Column("document", Json, nullable=False),
    )

    op.create_table(
        "api_keys",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("device_id", sa.String(200)),
        sa.Column("entity_type", sa.String(512)),
        sa.Column("rate_per_s", sa.Float),
        sa.Column("created_at", UtcDateTime),
        sa.Column("revoked", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    for table in ("api_keys", "subscriptions", "alerts", "observations", "entities", "request_events",
                  "requests"):
        op.drop_table(table)
