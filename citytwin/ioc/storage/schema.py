"""The IOC's tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Alembic migrations (`migrations/versions`) create these; `tests/test_ioc_store_contract.py` checks the
migrated database matches this metadata, so a change here needs a new revision.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator):
    """A tz-aware instant. PostgreSQL: timestamptz. SQLite: a fixed-width UTC ISO string, so that text
    order is time order and SQL comparisons work. Always returns tz-aware UTC datetimes; refuses naive
    ones, since the core compares with tz-aware values and a naive one would be a silent bug."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, got {value!r}")
        if dialect.name == "sqlite":
            return value.astimezone(UTC).isoformat(timespec="microseconds")
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            return datetime.fromisoformat(value)
        return value.astimezone(UTC)


# Documents: TEXT in SQLite, JSONB in PostgreSQL. none_as_null: Python None is SQL NULL, not JSON null.
Json = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# INTEGER PRIMARY KEY is SQLite's auto-increment rowid; BIGINT would not be.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

requests = Table(
    "requests", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("token", String(64), nullable=False),
    Column("client_ref", String(200)),
    Column("service_code", String(100), nullable=False),
    Column("status", String(20), nullable=False),
    Column("requested_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("deadline", UtcDateTime, nullable=False),
    Column("agency", Text, nullable=False),
    Column("lat", Float),
    Column("lon", Float),
    Column("address", Text),
    Column("description", Text, nullable=False),
    Column("media_url", Text),
    Column("reporter", Json),
    Column("jurisdiction_id", String(200)),
    Column("assignee", Text),
    Column("duplicate_of", BigInteger),
    Column("status_note", Text, nullable=False),
    Column("closed_at", UtcDateTime),
    Index("ix_requests_token", "token", unique=True),
    Index("ix_requests_client_ref", "client_ref", unique=True),  # NULLs never collide
    Index("ix_requests_service_status", "service_code", "status"),
    Index("ix_requests_requested_at", "requested_at"),
    Index("ix_requests_lat_lon", "lat", "lon"),
)

request_events = Table(
    "request_events", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("request_id", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("actor", Text, nullable=False),
    Column("note", Text, nullable=False),
    Index("ix_request_events_request_id", "request_id"),
)

entities = Table(
    "entities", metadata,
    Column("id", String(512), primary_key=True),
    Column("type", String(512), nullable=False),
    Column("attrs", Json, nullable=False),
    Column("lon", Float),
    Column("lat", Float),
    Column("location_attr", Json),
    Column("owner", String(200)),
    Column("created_at", UtcDateTime, nullable=False),
    Column("modified_at", UtcDateTime, nullable=False),
    Index("ix_entities_type", "type", "id"),  # with id: a page of one type comes out of the index in order
    Index("ix_entities_modified_at", "modified_at"),
    Index("ix_entities_lat_lon", "lat", "lon"),
)

observations = Table(
    "observations", metadata,
    Column("entity_id", String(512), primary_key=True),
    Column("attr", String(512), primary_key=True),
    Column("observed_at", UtcDateTime, primary_key=True),
    Column("value", Json),
)

alerts = Table(
    "alerts", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("rule_id", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("entity_id", String(512), nullable=False),
    Column("entity_type", String(512), nullable=False),
    Column("severity", String(20), nullable=False),
    Column("category", String(50), nullable=False),
    Column("status", String(20), nullable=False),
    Column("raised_at", UtcDateTime, nullable=False),
    Column("message", Text, nullable=False),
    Column("attribute", String(512)),
    Column("value", Json),
    Column("lon", Float),
    Column("lat", Float),
    Column("acknowledged_at", UtcDateTime),
    Column("cleared_at", UtcDateTime),
    Column("actor", Text),
    Index("ix_alerts_status", "status"),
    Index("ix_alerts_entity_id", "entity_id"),
)

subscriptions = Table(
    "subscriptions", metadata,
    Column("id", String(512), primary_key=True),
    Column("document", Json, nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("digest", String(64), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("label", Text, nullable=False),
    Column("device_id", String(200)),
    Column("entity_type", String(512)),
    Column("rate_per_s", Float),
    Column("created_at", UtcDateTime),
    Column("revoked", Boolean, nullable=False),
)
