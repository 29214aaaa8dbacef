"""What the core needs from storage: one transaction at a time, batch-friendly.

`MemoryStore` (core.memory) serves the twin in-process; `SqlStore` (ioc.storage) serves the server on
SQLite or PostgreSQL. Both pass the same contract tests (tests/test_ioc_store_contract.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

from .model import (
    Alert,
    AlertStatus,
    ApiKey,
    Entity,
    EntityQuery,
    Observation,
    RequestEvent,
    RequestQuery,
    ServiceRequest,
    Subscription,
)


class Tx(Protocol):
    """One unit of work. Everything written inside it is durable once the `transaction()` block exits
    without an exception, and none of it is if it raises."""

    # -- service requests --------------------------------------------------------------------------------
    def insert_request(self, request: ServiceRequest) -> int:
        """Store a new request (its id is None) and return the id given to it."""

    def update_request(self, request: ServiceRequest) -> None: ...

    def get_request(self, request_id: int) -> ServiceRequest | None: ...

    def request_by_token(self, token: str) -> ServiceRequest | None: ...

    def request_by_client_ref(self, client_ref: str) -> ServiceRequest | None: ...

    def find_requests(self, query: RequestQuery) -> list[ServiceRequest]:
        """Matching requests, newest first (requested_at descending, then id descending)."""

    def open_requests_near(self, service_code: str, lon: float, lat: float, radius_m: float,
                           since: datetime) -> list[ServiceRequest]:
        """Requests of that service, not closed, requested at or after `since`, within the radius. A store
        may leave out requests that are themselves duplicates (only originals are linked to)."""

    def add_request_event(self, event: RequestEvent) -> None: ...

    def request_events(self, request_id: int) -> list[RequestEvent]:
        """In the order they happened."""

    def count_requests(self, since: datetime | None = None) -> int: ...

    # -- entities ----------------------------------------------------------------------------------------
    def get_entities(self, ids: Iterable[str]) -> dict[str, Entity]: ...

    def put_entities(self, entities: Sequence[Entity]) -> None:
        """Insert or replace, by id."""

    def delete_entity(self, entity_id: str) -> bool: ...

    def query_entities(self, query: EntityQuery) -> list[Entity]:
        """By ids and/or types (any of), and within `near` (great-circle metres), ordered by id.
        `limit`/`offset` page the result."""

    def count_entities(self, query: EntityQuery) -> int: ...

    def add_observations(self, observations: Sequence[Observation]) -> None:
        """History; an (entity_id, attr, observed_at) already present is left as it is."""

    def observations(self, entity_id: str, attr: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, limit: int = 1000) -> list[Observation]:
        """Oldest first."""

    def stale_entities(self, entity_type: str, modified_before: datetime) -> list[Entity]: ...

    def freshness(self) -> list[tuple[str, int, datetime, datetime]]:
        """Per entity type: (type, count, oldest modified_at, newest modified_at)."""

    # -- alerts ------------------------------------------------------------------------------------------
    def insert_alert(self, alert: Alert) -> int: ...

    def update_alert(self, alert: Alert) -> None: ...

    def get_alert(self, alert_id: int) -> Alert | None: ...

    def active_alerts_for(self, entity_ids: Iterable[str]) -> list[Alert]:
        """Alerts not cleared, on any of these entities."""

    def find_alerts(self, statuses: Sequence[AlertStatus] = (), limit: int = 1000) -> list[Alert]:
        """Newest first."""

    # -- subscriptions -----------------------------------------------------------------------------------
    def put_subscription(self, subscription: Subscription) -> None: ...

    def get_subscription(self, subscription_id: str) -> Subscription | None: ...

    def subscriptions(self) -> list[Subscription]: ...

    def delete_subscription(self, subscription_id: str) -> bool: ...

    # -- API keys ----------------------------------------------------------------------------------------
    def put_key(self, key: ApiKey) -> None: ...

    def get_key(self, digest: str) -> ApiKey | None: ...

    def keys(self) -> list[ApiKey]: ...


class Store(Protocol):
    def transaction(self, readonly: bool = False) -> AbstractContextManager[Tx]:
        """`readonly=True` promises no writes, so a store may run it beside others (SQLite: without
        taking the single-writer lock)."""

    def close(self) -> None: ...


def iter_chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """Batches for IN (...) lists, which databases cap."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
