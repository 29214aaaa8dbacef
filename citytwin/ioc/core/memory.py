"""The store the twin runs in-process: dicts with the indexes the hot paths need, and rollback.

Writes inside a transaction go straight to the dicts and leave an undo entry each; an exception in the
`transaction()` block undoes them in reverse, so a failed batch leaves nothing behind, as in SQL.
Objects are copied in and out so that a caller changing what it got cannot change the store behind its
back. One lock serialises transactions (the server's threads may share a store).
"""

from __future__ import annotations

import bisect
import copy
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from .model import (
    OPEN311_CLOSED,
    Alert,
    AlertStatus,
    ApiKey,
    Entity,
    EntityQuery,
    Observation,
    RequestEvent,
    RequestQuery,
    ServiceRequest,
    Status,
    Subscription,
)
from .requests import haversine_m


_CELL_DEG = 0.01  # about 1.1 km: a duplicate radius of tens of metres touches one to four cells
_METRES_PER_DEGREE = 111_195.0  # of latitude, on the mean Earth radius


def _cell(service_code: str, lon: float, lat: float) -> tuple[str, int, int]:
    return service_code, math.floor(lon / _CELL_DEG), math.floor(lat / _CELL_DEG)


def _copy_entity(entity: Entity) -> Entity:
    # Attribute objects are shared: the core builds new ones on every write and never edits them.
    clone = copy.copy(entity)
    clone.attrs = dict(entity.attrs)
    return clone


class MemoryTx:
    """One transaction over a MemoryStore (the `Tx` protocol)."""

    def __init__(self, store: MemoryStore):
        self._s = store
        self._undo: list[Callable[[], None]] = []

    def rollback(self) -> None:
        while self._undo:
            self._undo.pop()()

    # -- service requests --------------------------------------------------------------------------------
    def insert_request(self, request: ServiceRequest) -> int:
        s = self._s
        s.next_request_id += 1
        request_id = s.next_request_id
        self._set_request(request_id, copy.copy(request), id=request_id)
        return request_id

    def update_request(self, request: ServiceRequest) -> None:
        if request.id not in self._s.requests:
            raise KeyError(f"no request {request.id}")
        self._set_request(request.id, copy.copy(request))

    def _set_request(self, request_id: int, request: ServiceRequest | None, **changes: Any) -> None:
        s = self._s
        previous = s.requests.get(request_id)
        self._undo.append(lambda: s.put_request(request_id, previous))
        if request is not None and changes:
            for name, value in changes.items():
                setattr(request, name, value)
        s.put_request(request_id, request)

    def get_request(self, request_id: int) -> ServiceRequest | None:
        request = self._s.requests.get(request_id)
        return copy.copy(request) if request else None

    def request_by_token(self, token: str) -> ServiceRequest | None:
        return self.get_request(self._s.request_tokens.get(token, -1))

    def request_by_client_ref(self, client_ref: str) -> ServiceRequest | None:
        return self.get_request(self._s.request_refs.get(client_ref, -1))

    def find_requests(self, query: RequestQuery) -> list[ServiceRequest]:
        s = self._s
        if query.ids:
            candidates: Iterable[ServiceRequest] = (s.requests[i] for i in set(query.ids) if i in s.requests)
        else:
            candidates = s.requests.values()
        codes = set(query.service_codes)
        statuses = set(query.statuses)
        found = [r for r in candidates
                 if (not codes or r.service_code in codes)
                 and (not statuses or r.status in statuses)
                 and (query.start is None or r.requested_at >= query.start)
                 and (query.end is None or r.requested_at <= query.end)
                 and (not query.open_only or r.status not in OPEN311_CLOSED)]
        found.sort(key=lambda r: (r.requested_at, r.id), reverse=True)
        return [copy.copy(r) for r in found[query.offset:query.offset + query.limit]]

    def open_requests_near(self, service_code: str, lon: float, lat: float, radius_m: float,
                           since: datetime) -> list[ServiceRequest]:
        s = self._s
        found = []
        for request_id in s.open_candidates(service_code, lon, lat, radius_m):
            r = s.requests[request_id]
            if (r.requested_at >= since and r.lat is not None and r.lon is not None
                    and haversine_m(lon, lat, r.lon, r.lat) <= radius_m):
                found.append(copy.copy(r))
        found.sort(key=lambda r: r.id)
        return found

    def add_request_event(self, event: RequestEvent) -> None:
        events = self._s.events.setdefault(event.request_id, [])
        events.append(event)
        self._undo.append(events.pop)

    def request_events(self, request_id: int) -> list[RequestEvent]:
        return list(self._s.events.get(request_id, ()))

    def count_requests(self, since: datetime | None = None) -> int:
        if since is None:
            return len(self._s.requests)
        return sum(1 for r in self._s.requests.values() if r.requested_at >= since)

    # -- entities ----------------------------------------------------------------------------------------
    def get_entities(self, ids: Iterable[str]) -> dict[str, Entity]:
        entities = self._s.entities
        return {i: _copy_entity(entities[i]) for i in ids if i in entities}

    def put_entities(self, entities: Sequence[Entity]) -> None:
        for entity in entities:
            self._set_entity(entity.id, _copy_entity(entity))

    def delete_entity(self, entity_id: str) -> bool:
        if entity_id not in self._s.entities:
            return False
        self._set_entity(entity_id, None)
        return True

    def _set_entity(self, entity_id: str, entity: Entity | None) -> None:
        s = self._s
        previous = s.entities.get(entity_id)
        self._undo.append(lambda: s.put_entity(entity_id, previous))
        s.put_entity(entity_id, entity)

    def _matching(self, query: EntityQuery) -> list[Entity]:
        s = self._s
        if query.ids:
            candidates: Iterable[Entity] = (s.entities[i] for i in set(query.ids) if i in s.entities)
            if query.types:
                types = set(query.types)
                candidates = [e for e in candidates if e.type in types]
        elif query.types:
            candidates = [s.entities[i] for t in set(query.types) for i in s.by_type.get(t, ())]
        else:
            candidates = s.entities.values()
        near = query.near
        if near is not None:
            candidates = [e for e in candidates if e.location is not None
                          and haversine_m(near.lon, near.lat, e.location[0], e.location[1]) <= near.max_distance_m]
        return sorted(candidates, key=lambda e: e.id)

    def query_entities(self, query: EntityQuery) -> list[Entity]:
        found = self._matching(query)
        return [_copy_entity(e) for e in found[query.offset:query.offset + query.limit]]

    def count_entities(self, query: EntityQuery) -> int:
        return len(self._matching(query))

    def add_observations(self, observations: Sequence[Observation]) -> None:
        history = self._s.history
        for row in observations:
            series = history.get((row.entity_id, row.attr))
            if series is None:
                series = history[(row.entity_id, row.attr)] = _Series()
                self._s.history_attrs.setdefault(row.entity_id, set()).add(row.attr)
            if series.add(row):
                self._undo.append(lambda series=series, row=row: series.remove(row))

    def observations(self, entity_id: str, attr: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, limit: int = 1000) -> list[Observation]:
        s = self._s
        if attr is not None:
            series = s.history.get((entity_id, attr))
            rows = series.between(since, until) if series else []
        else:
            rows = [row for name in s.history_attrs.get(entity_id, ())
                    for row in s.history[(entity_id, name)].between(since, until)]
            rows.sort(key=lambda row: (row.observed_at, row.attr))
        return rows[:limit]

    def stale_entities(self, entity_type: str, modified_before: datetime) -> list[Entity]:
        entities = self._s.entities
        return [_copy_entity(entities[i]) for i in sorted(self._s.by_type.get(entity_type, ()))
                if entities[i].modified_at < modified_before]

    def freshness(self) -> list[tuple[str, int, datetime, datetime]]:
        entities = self._s.entities
        rows = []
        for entity_type, ids in sorted(self._s.by_type.items()):
            if ids:
                times = [entities[i].modified_at for i in ids]
                rows.append((entity_type, len(ids), min(times), max(times)))
        return rows

    # -- alerts ------------------------------------------------------------------------------------------
    def insert_alert(self, alert: Alert) -> int:
        s = self._s
        s.next_alert_id += 1
        alert = copy.copy(alert)
        alert.id = s.next_alert_id
        self._set_alert(alert.id, alert)
        return alert.id

    def update_alert(self, alert: Alert) -> None:
        if alert.id not in self._s.alerts:
            raise KeyError(f"no alert {alert.id}")
        self._set_alert(alert.id, copy.copy(alert))

    def _set_alert(self, alert_id: int, alert: Alert | None) -> None:
        s = self._s
        previous = s.alerts.get(alert_id)
        self._undo.append(lambda: s.put_alert(alert_id, previous))
        s.put_alert(alert_id, alert)

    def get_alert(self, alert_id: int) -> Alert | None:
        alert = self._s.alerts.get(alert_id)
        return copy.copy(alert) if alert else None

    def active_alerts_for(self, entity_ids: Iterable[str]) -> list[Alert]:
        s = self._s
        found = [s.alerts[a] for i in set(entity_ids) for a in s.active_by_entity.get(i, ())]
        found.sort(key=lambda a: a.id)
        return [copy.copy(a) for a in found]

    def find_alerts(self, statuses: Sequence[AlertStatus] = (), limit: int = 1000) -> list[Alert]:
        s = self._s
        wanted = set(statuses)
        if wanted and wanted <= {AlertStatus.RAISED, AlertStatus.ACKNOWLEDGED}:
            candidates: Iterable[Alert] = (s.alerts[a] for ids in s.active_by_entity.values() for a in ids)
        else:
            candidates = s.alerts.values()
        found = [a for a in candidates if not wanted or a.status in wanted]
        found.sort(key=lambda a: (a.raised_at, a.id), reverse=True)
        return [copy.copy(a) for a in found[:limit]]

    # -- subscriptions -----------------------------------------------------------------------------------
    def put_subscription(self, subscription: Subscription) -> None:
        self._set(self._s.subscriptions, subscription.id, copy.copy(subscription))

    def get_subscription(self, subscription_id: str) -> Subscription | None:
        sub = self._s.subscriptions.get(subscription_id)
        return copy.copy(sub) if sub else None

    def subscriptions(self) -> list[Subscription]:
        return [copy.copy(sub) for _, sub in sorted(self._s.subscriptions.items())]

    def delete_subscription(self, subscription_id: str) -> bool:
        if subscription_id not in self._s.subscriptions:
            return False
        self._set(self._s.subscriptions, subscription_id, None)
        return True

    # -- API keys ----------------------------------------------------------------------------------------
    def put_key(self, key: ApiKey) -> None:
        self._set(self._s.keys, key.digest, key)  # frozen: no copy needed

    def get_key(self, digest: str) -> ApiKey | None:
        return self._s.keys.get(digest)

    def keys(self) -> list[ApiKey]:
        return sorted(self._s.keys.values(), key=lambda k: (k.created_at is None, k.created_at, k.digest))

    def _set(self, table: dict, key: Any, value: Any) -> None:
        missing = object()
        previous = table.get(key, missing)

        def undo() -> None:
            if previous is missing:
                table.pop(key, None)
            else:
                table[key] = previous

        self._undo.append(undo)
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


class _Series:
    """One attribute's history, kept sorted by observation time (readings mostly arrive in order)."""

    __slots__ = ("times", "rows")

    def __init__(self) -> None:
        self.times: list[datetime] = []
        self.rows: list[Observation] = []

    def add(self, row: Observation) -> bool:
        times = self.times
        if not times or row.observed_at > times[-1]:
            times.append(row.observed_at)
            self.rows.append(row)
            return True
        at = bisect.bisect_left(times, row.observed_at)
        if at < len(times) and times[at] == row.observed_at:
            return False  # already recorded: device retries are idempotent
        times.insert(at, row.observed_at)
        self.rows.insert(at, row)
        return True

    def remove(self, row: Observation) -> None:
        at = bisect.bisect_left(self.times, row.observed_at)
        del self.times[at]
        del self.rows[at]

    def between(self, since: datetime | None, until: datetime | None) -> list[Observation]:
        start = 0 if since is None else bisect.bisect_left(self.times, since)
        end = len(self.times) if until is None else bisect.bisect_right(self.times, until)
        return self.rows[start:end]


class MemoryStore:
    """All IOC state in dicts (the `Store` protocol)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.requests: dict[int, ServiceRequest] = {}
        self.request_tokens: dict[str, int] = {}
        self.request_refs: dict[str, int] = {}
        # Requests not closed, for duplicate checks: by service, and by service and grid cell.
        self.open_by_service: dict[str, set[int]] = {}
        self.open_grid: dict[tuple[str, int, int], set[int]] = {}
        self.events: dict[int, list[RequestEvent]] = {}
        self.entities: dict[str, Entity] = {}
        self.by_type: dict[str, set[str]] = {}
        self.history: dict[tuple[str, str], _Series] = {}
        self.history_attrs: dict[str, set[str]] = {}
        self.alerts: dict[int, Alert] = {}
        self.active_by_entity: dict[str, set[int]] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.keys: dict[str, ApiKey] = {}
        self.next_request_id = 0
        self.next_alert_id = 0

    @contextmanager
    def transaction(self, readonly: bool = False) -> Iterator[MemoryTx]:
        with self._lock:
            tx = MemoryTx(self)
            try:
                yield tx
            except BaseException:
                tx.rollback()
                raise

    def close(self) -> None:
        pass

    # Index upkeep: each setter replaces (or with None removes) one object and its index entries.
    def put_request(self, request_id: int, request: ServiceRequest | None) -> None:
        previous = self.requests.pop(request_id, None)
        if previous is not None:
            self.request_tokens.pop(previous.token, None)
            if previous.client_ref is not None:
                self.request_refs.pop(previous.client_ref, None)
            self.open_by_service.get(previous.service_code, set()).discard(request_id)
            if previous.lat is not None and previous.lon is not None:
                self.open_grid.get(_cell(previous.service_code, previous.lon, previous.lat), set()).discard(
                    request_id)
        if request is None:
            return
        self.requests[request_id] = request
        self.request_tokens[request.token] = request_id
        if request.client_ref is not None:
            self.request_refs[request.client_ref] = request_id
        if request.status != Status.CLOSED:
            self.open_by_service.setdefault(request.service_code, set()).add(request_id)
            if request.lat is not None and request.lon is not None:
                self.open_grid.setdefault(_cell(request.service_code, request.lon, request.lat), set()).add(
                    request_id)

    def open_candidates(self, service_code: str, lon: float, lat: float, radius_m: float) -> Iterable[int]:
        """Open requests of the service in the grid cells the radius touches (all of them for a wide one)."""
        dlat = radius_m / _METRES_PER_DEGREE
        dlon = radius_m / (_METRES_PER_DEGREE * max(math.cos(math.radians(lat)), 1e-6))
        x0, y0 = math.floor((lon - dlon) / _CELL_DEG), math.floor((lat - dlat) / _CELL_DEG)
        x1, y1 = math.floor((lon + dlon) / _CELL_DEG), math.floor((lat + dlat) / _CELL_DEG)
        if (x1 - x0 + 1) * (y1 - y0 + 1) > 64:
            return list(self.open_by_service.get(service_code, ()))
        grid = self.open_grid
        return [i for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)
                for i in grid.get((service_code, x, y), ())]

    def put_entity(self, entity_id: str, entity: Entity | None) -> None:
        previous = self.entities.pop(entity_id, None)
        if previous is not None:
            self.by_type[previous.type].discard(entity_id)
        if entity is None:
            return
        self.entities[entity_id] = entity
        self.by_type.setdefault(entity.type, set()).add(entity_id)

    def put_alert(self, alert_id: int, alert: Alert | None) -> None:
        previous = self.alerts.pop(alert_id, None)
        if previous is not None:
            active = self.active_by_entity.get(previous.entity_id)
            if active is not None:
                active.discard(alert_id)
                if not active:
                    del self.active_by_entity[previous.entity_id]
        if alert is None:
            return
        self.alerts[alert_id] = alert
        if alert.status != AlertStatus.CLEARED:
            self.active_by_entity.setdefault(alert.entity_id, set()).add(alert_id)
