"""`SqlStore`: the core's `Store`/`Tx` over SQLAlchemy Core, on SQLite or PostgreSQL.

Batch methods issue a bounded number of statements (executemany, IN lists in chunks): the NGSI-LD batch
upsert path goes get_entities → put_entities → add_observations once per batch, not once per entity.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import DataError

from citytwin.ioc.core.errors import Invalid
from citytwin.ioc.core.model import (
    OPEN311_CLOSED,
    Alert,
    AlertStatus,
    ApiKey,
    Entity,
    EntityQuery,
    Near,
    Observation,
    Reporter,
    RequestEvent,
    RequestQuery,
    Role,
    ServiceRequest,
    Status,
    Subscription,
)
from citytwin.ioc.core.requests import EARTH_RADIUS_M, haversine_m
from citytwin.ioc.core.store import iter_chunks

from .engine import BEGIN_OPTION, is_memory_sqlite
from .schema import alerts, api_keys, entities, observations, request_events, requests, subscriptions

# Ids per IN list: far below SQLite's 32766 bound variables and PostgreSQL's 65535.
CHUNK = 900


class SqlStore:
    """A `Store` on a SQLAlchemy engine (see `citytwin.ioc.storage.open_store`)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name
        self._sqlite = self.dialect == "sqlite"
        self._upsert = sqlite.insert if self._sqlite else postgresql.insert
        # SQLite has one writer: serialising writers here makes them queue on a lock instead of failing
        # with 'database is locked' when a deferred transaction tries to upgrade to a write.
        self._write_lock = threading.Lock()
        self._memory = self._sqlite and is_memory_sqlite(engine.url)

    @contextmanager
    def transaction(self, readonly: bool = False) -> Iterator[SqlTx]:
        """One database transaction, committed when the block exits, rolled back if it raises.
        `readonly=True` (an SqlStore extension): on SQLite such transactions do not take the write lock
        and run concurrently; writing in one raises."""
        serialise = self._sqlite and (not readonly or self._memory)
        with self._write_lock if serialise else nullcontext():
            with self.engine.connect() as connection:
                if self._sqlite:
                    connection.execution_options(**{BEGIN_OPTION: "BEGIN" if readonly else "BEGIN IMMEDIATE"})
                with connection.begin():
                    try:
                        yield SqlTx(connection, self._upsert, readonly)
                    except DataError as error:
                        if _is_nul_refusal(error):
                            raise Invalid("text may not contain the NUL character (\\u0000)") from error
                        raise

    def close(self) -> None:
        self.engine.dispose()


class SqlTx:
    """The `Tx` of one `SqlStore.transaction()`."""

    def __init__(self, connection: Connection, upsert, readonly: bool = False):
        self._c = connection
        self._upsert = upsert
        self._readonly = readonly

    def _write(self) -> Connection:
        if self._readonly:
            raise RuntimeError("write in a read-only transaction")
        return self._c

    # -- service requests ------------------------------------------------------------------------------
    def insert_request(self, request: ServiceRequest) -> int:
        row = _request_row(request)
        del row["id"]
        result = self._write().execute(insert(requests).values(**row))
        return int(result.inserted_primary_key[0])

    def update_request(self, request: ServiceRequest) -> None:
        row = _request_row(request)
        del row["id"]
        self._write().execute(update(requests).where(requests.c.id == request.id).values(**row))

    def get_request(self, request_id: int) -> ServiceRequest | None:
        return self._one_request(requests.c.id == request_id)

    def request_by_token(self, token: str) -> ServiceRequest | None:
        return self._one_request(requests.c.token == token)

    def request_by_client_ref(self, client_ref: str) -> ServiceRequest | None:
        return self._one_request(requests.c.client_ref == client_ref)

    def _one_request(self, condition) -> ServiceRequest | None:
        row = self._c.execute(select(requests).where(condition)).mappings().first()
        return None if row is None else _request(row)

    def find_requests(self, query: RequestQuery) -> list[ServiceRequest]:
        conditions = []
        if query.service_codes:
            conditions.append(requests.c.service_code.in_(query.service_codes))
        if query.statuses:
            conditions.append(requests.c.status.in_([str(s) for s in query.statuses]))
        if query.start is not None:
            conditions.append(requests.c.requested_at >= query.start)
        if query.end is not None:
            conditions.append(requests.c.requested_at <= query.end)
        if query.open_only:
            conditions.append(requests.c.status.not_in([str(s) for s in OPEN311_CLOSED]))
        order = (requests.c.requested_at.desc(), requests.c.id.desc())
        ids = list(dict.fromkeys(query.ids))
        if len(ids) <= CHUNK:
            if ids:
                conditions.append(requests.c.id.in_(ids))
            stmt = select(requests).where(*conditions).order_by(*order).offset(query.offset).limit(query.limit)
            return [_request(row) for row in self._c.execute(stmt).mappings()]
        # Too many ids for one IN list: gather every match, then order and page here.
        found = [_request(row) for chunk in iter_chunks(ids, CHUNK)
                 for row in self._c.execute(select(requests).where(requests.c.id.in_(chunk), *conditions))
                 .mappings()]
        found.sort(key=lambda r: (r.requested_at, r.id), reverse=True)
        return found[query.offset:query.offset + query.limit]

    def open_requests_near(self, service_code: str, lon: float, lat: float, radius_m: float,
                           since: datetime) -> list[ServiceRequest]:
        stmt = (select(requests)
                .where(requests.c.service_code == service_code,
                       requests.c.status != str(Status.CLOSED),
                       requests.c.duplicate_of.is_(None),  # only originals can be linked to
                       requests.c.requested_at >= since,
                       *_bbox(requests, Near(lon, lat, radius_m)))
                .order_by(requests.c.id))
        return [r for r in (_request(row) for row in self._c.execute(stmt).mappings())
                if distance_m(lon, lat, r.lon, r.lat) <= radius_m]

    def add_request_event(self, event: RequestEvent) -> None:
        self._write().execute(insert(request_events).values(
            request_id=event.request_id, status=str(event.status), at=event.at, actor=event.actor,
            note=event.note))

    def request_events(self, request_id: int) -> list[RequestEvent]:
        stmt = (select(request_events).where(request_events.c.request_id == request_id)
                .order_by(request_events.c.at, request_events.c.id))
        return [RequestEvent(request_id=row["request_id"], status=Status(row["status"]), at=row["at"],
                             actor=row["actor"], note=row["note"])
                for row in self._c.execute(stmt).mappings()]

    def count_requests(self, since: datetime | None = None) -> int:
        stmt = select(func.count()).select_from(requests)
        if since is not None:
            stmt = stmt.where(requests.c.requested_at >= since)
        return int(self._c.execute(stmt).scalar_one())

    # -- entities --------------------------------------------------------------------------------------
    def get_entities(self, ids: Iterable[str]) -> dict[str, Entity]:
        found: dict[str, Entity] = {}
        for chunk in iter_chunks(list(dict.fromkeys(ids)), CHUNK):
            for row in self._c.execute(select(entities).where(entities.c.id.in_(chunk))).mappings():
                found[row["id"]] = _entity(row)
        return found

    def put_entities(self, batch: Sequence[Entity]) -> None:
        # Last one wins for a repeated id: one row per id, as PostgreSQL's ON CONFLICT requires.
        rows = list({e.id: _entity_row(e) for e in batch}.values())
        if not rows:
            return
        stmt = self._upsert(entities)
        stmt = stmt.on_conflict_do_update(
            index_elements=[entities.c.id],
            set_={c.name: stmt.excluded[c.name] for c in entities.columns if c.name != "id"})
        self._write().execute(stmt, rows)

    def delete_entity(self, entity_id: str) -> bool:
        connection = self._write()
        result = connection.execute(delete(entities).where(entities.c.id == entity_id))
        return result.rowcount > 0

    def query_entities(self, query: EntityQuery) -> list[Entity]:
        ids = list(dict.fromkeys(query.ids))
        if query.near is None and len(ids) <= CHUNK:
            stmt = (select(entities).where(*_entity_conditions(query, ids)).order_by(entities.c.id)
                    .offset(query.offset).limit(query.limit))
            return [_entity(row) for row in self._c.execute(stmt).mappings()]
        found = self._entity_candidates(query, ids)
        return found[query.offset:query.offset + query.limit]

    def count_entities(self, query: EntityQuery) -> int:
        ids = list(dict.fromkeys(query.ids))
        if query.near is None and len(ids) <= CHUNK:
            stmt = select(func.count()).select_from(entities).where(*_entity_conditions(query, ids))
            return int(self._c.execute(stmt).scalar_one())
        return len(self._entity_candidates(query, ids))

    def _entity_candidates(self, query: EntityQuery, ids: list[str]) -> list[Entity]:
        """Every match, ordered by id: the bounding box and the id chunks in SQL, the exact distance
        here."""
        found: list[Entity] = []
        for chunk in iter_chunks(ids, CHUNK) if ids else [()]:
            conditions = _entity_conditions(query, list(chunk))
            if query.near is not None:
                conditions += _bbox(entities, query.near)
            found += (_entity(row) for row in self._c.execute(select(entities).where(*conditions)).mappings())
        if query.near is not None:
            near = query.near
            found = [e for e in found if e.location is not None
                     and distance_m(near.lon, near.lat, *e.location) <= near.max_distance_m]
        found.sort(key=lambda e: e.id)
        return found

    def add_observations(self, batch: Sequence[Observation]) -> None:
        rows = [{"entity_id": o.entity_id, "attr": o.attr, "observed_at": o.observed_at, "value": o.value}
                for o in batch]
        if not rows:
            return
        stmt = self._upsert(observations).on_conflict_do_nothing(
            index_elements=[observations.c.entity_id, observations.c.attr, observations.c.observed_at])
        self._write().execute(stmt, rows)

    def observations(self, entity_id: str, attr: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, limit: int = 1000) -> list[Observation]:
        conditions = [observations.c.entity_id == entity_id]
        if attr is not None:
            conditions.append(observations.c.attr == attr)
        if since is not None:
            conditions.append(observations.c.observed_at >= since)
        if until is not None:
            conditions.append(observations.c.observed_at <= until)
        stmt = (select(observations).where(*conditions)
                .order_by(observations.c.observed_at, observations.c.attr).limit(limit))
        return [Observation(row["entity_id"], row["attr"], row["observed_at"], row["value"])
                for row in self._c.execute(stmt).mappings()]

    def stale_entities(self, entity_type: str, modified_before: datetime) -> list[Entity]:
        stmt = (select(entities)
                .where(entities.c.type == entity_type, entities.c.modified_at < modified_before)
                .order_by(entities.c.id))
        return [_entity(row) for row in self._c.execute(stmt).mappings()]

    def freshness(self) -> list[tuple[str, int, datetime, datetime]]:
        stmt = (select(entities.c.type, func.count(), func.min(entities.c.modified_at),
                       func.max(entities.c.modified_at))
                .group_by(entities.c.type).order_by(entities.c.type))
        return [(t, int(n), oldest, newest) for t, n, oldest, newest in self._c.execute(stmt)]

    # -- alerts ----------------------------------------------------------------------------------------
    def insert_alert(self, alert: Alert) -> int:
        row = _alert_row(alert)
        del row["id"]
        return int(self._write().execute(insert(alerts).values(**row)).inserted_primary_key[0])

    def update_alert(self, alert: Alert) -> None:
        row = _alert_row(alert)
        del row["id"]
        self._write().execute(update(alerts).where(alerts.c.id == alert.id).values(**row))

    def get_alert(self, alert_id: int) -> Alert | None:
        row = self._c.execute(select(alerts).where(alerts.c.id == alert_id)).mappings().first()
        return None if row is None else _alert(row)

    def active_alerts_for(self, entity_ids: Iterable[str]) -> list[Alert]:
        found: list[Alert] = []
        for chunk in iter_chunks(list(dict.fromkeys(entity_ids)), CHUNK):
            stmt = select(alerts).where(alerts.c.entity_id.in_(chunk),
                                        alerts.c.status != str(AlertStatus.CLEARED))
            found += (_alert(row) for row in self._c.execute(stmt).mappings())
        found.sort(key=lambda a: a.id)
        return found

    def find_alerts(self, statuses: Sequence[AlertStatus] = (), limit: int = 1000) -> list[Alert]:
        stmt = select(alerts).order_by(alerts.c.raised_at.desc(), alerts.c.id.desc()).limit(limit)
        if statuses:
            stmt = stmt.where(alerts.c.status.in_([str(s) for s in statuses]))
        return [_alert(row) for row in self._c.execute(stmt).mappings()]

    # -- subscriptions ---------------------------------------------------------------------------------
    def put_subscription(self, subscription: Subscription) -> None:
        stmt = self._upsert(subscriptions).values(id=subscription.id, document=_subscription_doc(subscription))
        stmt = stmt.on_conflict_do_update(index_elements=[subscriptions.c.id],
                                          set_={"document": stmt.excluded.document})
        self._write().execute(stmt)

    def get_subscription(self, subscription_id: str) -> Subscription | None:
        stmt = select(subscriptions.c.document).where(subscriptions.c.id == subscription_id)
        document = self._c.execute(stmt).scalar_one_or_none()
        return None if document is None else _subscription(document)

    def subscriptions(self) -> list[Subscription]:
        stmt = select(subscriptions.c.document).order_by(subscriptions.c.id)
        return [_subscription(document) for document in self._c.execute(stmt).scalars()]

    def delete_subscription(self, subscription_id: str) -> bool:
        result = self._write().execute(delete(subscriptions).where(subscriptions.c.id == subscription_id))
        return result.rowcount > 0

    # -- API keys --------------------------------------------------------------------------------------
    def put_key(self, key: ApiKey) -> None:
        row = {"digest": key.digest, "role": str(key.role), "label": key.label, "device_id": key.device_id,
               "entity_type": key.entity_type, "rate_per_s": key.rate_per_s, "created_at": key.created_at,
               "revoked": key.revoked}
        stmt = self._upsert(api_keys).values(**row)
        stmt = stmt.on_conflict_do_update(index_elements=[api_keys.c.digest],
                                          set_={k: stmt.excluded[k] for k in row if k != "digest"})
        self._write().execute(stmt)

    def get_key(self, digest: str) -> ApiKey | None:
        row = self._c.execute(select(api_keys).where(api_keys.c.digest == digest)).mappings().first()
        return None if row is None else _key(row)

    def keys(self) -> list[ApiKey]:
        stmt = select(api_keys).order_by(api_keys.c.created_at.asc().nulls_last(), api_keys.c.digest)
        return [_key(row) for row in self._c.execute(stmt).mappings()]


def _is_nul_refusal(error: DataError) -> bool:
    """PostgreSQL stores no NUL in text or JSONB (SQLite does): bad input, not a server fault."""
    return "NUL" in str(error.orig) or getattr(error.orig, "sqlstate", None) == "22P05"


# -- geometry ----------------------------------------------------------------------------------------------
def distance_m(lon1: float, lat1: float, lon2: float | None, lat2: float | None) -> float:
    """The core's great-circle distance (so every store draws the same circle); infinite when a point is
    missing."""
    if lon2 is None or lat2 is None:
        return math.inf
    return haversine_m(lon1, lat1, lon2, lat2)


def _bbox(table, near: Near) -> list:
    """A box that surely holds the circle (1 % margin), for the lat/lon index; the exact test is
    `distance_m`. No longitude bound near the poles or across the antimeridian."""
    dlat = math.degrees(near.max_distance_m / EARTH_RADIUS_M) * 1.01
    conditions = [table.c.lat.is_not(None), table.c.lon.is_not(None),
                  table.c.lat.between(near.lat - dlat, near.lat + dlat)]
    cos_lat = math.cos(math.radians(min(89.0, abs(near.lat) + dlat)))
    dlon = dlat / cos_lat if abs(near.lat) + dlat < 89.0 else 360.0
    if near.lon - dlon >= -180.0 and near.lon + dlon <= 180.0:
        conditions.append(table.c.lon.between(near.lon - dlon, near.lon + dlon))
    return conditions


def _entity_conditions(query: EntityQuery, ids: Sequence[str]) -> list:
    conditions = []
    if ids:
        conditions.append(entities.c.id.in_(ids))
    if query.types:
        conditions.append(entities.c.type.in_(query.types))
    return conditions


# -- rows <-> domain objects -------------------------------------------------------------------------------
_REPORTER_FIELDS = tuple(f.name for f in fields(Reporter))


def _request_row(r: ServiceRequest) -> dict[str, Any]:
    reporter = {name: getattr(r.reporter, name) for name in _REPORTER_FIELDS
                if getattr(r.reporter, name) is not None}
    return {"id": r.id, "token": r.token, "client_ref": r.client_ref, "service_code": r.service_code,
            "status": str(r.status), "requested_at": r.requested_at, "updated_at": r.updated_at,
            "deadline": r.deadline, "agency": r.agency, "lat": r.lat, "lon": r.lon, "address": r.address,
            "description": r.description, "media_url": r.media_url, "reporter": reporter,
            "jurisdiction_id": r.jurisdiction_id, "assignee": r.assignee, "duplicate_of": r.duplicate_of,
            "status_note": r.status_note, "closed_at": r.closed_at}


def _request(row: RowMapping) -> ServiceRequest:
    return ServiceRequest(
        id=row["id"], token=row["token"], service_code=row["service_code"], status=Status(row["status"]),
        requested_at=row["requested_at"], updated_at=row["updated_at"], deadline=row["deadline"],
        agency=row["agency"], lat=row["lat"], lon=row["lon"], address=row["address"],
        description=row["description"], media_url=row["media_url"], reporter=Reporter(**(row["reporter"] or {})),
        jurisdiction_id=row["jurisdiction_id"], client_ref=row["client_ref"], assignee=row["assignee"],
        duplicate_of=row["duplicate_of"], status_note=row["status_note"], closed_at=row["closed_at"])


def _entity_row(e: Entity) -> dict[str, Any]:
    lon, lat = e.location if e.location is not None else (None, None)
    return {"id": e.id, "type": e.type, "attrs": e.attrs, "lon": lon, "lat": lat,
            "location_attr": e.location_attr, "owner": e.owner, "created_at": e.created_at,
            "modified_at": e.modified_at}


def _entity(row: RowMapping) -> Entity:
    location = None if row["lon"] is None or row["lat"] is None else (row["lon"], row["lat"])
    return Entity(id=row["id"], type=row["type"], attrs=row["attrs"], created_at=row["created_at"],
                  modified_at=row["modified_at"], location=location, location_attr=row["location_attr"],
                  owner=row["owner"])


def _alert_row(a: Alert) -> dict[str, Any]:
    return {"id": a.id, "rule_id": a.rule_id, "kind": a.kind, "entity_id": a.entity_id,
            "entity_type": a.entity_type, "severity": a.severity, "category": a.category,
            "status": str(a.status), "raised_at": a.raised_at, "message": a.message, "attribute": a.attribute,
            "value": a.value, "lon": a.lon, "lat": a.lat, "acknowledged_at": a.acknowledged_at,
            "cleared_at": a.cleared_at, "actor": a.actor}


def _alert(row: RowMapping) -> Alert:
    values = dict(row)
    values["status"] = AlertStatus(values["status"])
    return Alert(**values)


def _key(row: RowMapping) -> ApiKey:
    values = dict(row)
    values["role"] = Role(values["role"])
    return ApiKey(**values)


_SUBSCRIPTION_TIMES = ("created_at", "last_notification", "last_failure")
_SUBSCRIPTION_TUPLES = ("entity_types", "watched_attrs", "notify_attrs")


def _subscription_doc(s: Subscription) -> dict[str, Any]:
    document = {f.name: getattr(s, f.name) for f in fields(Subscription)}
    for name in _SUBSCRIPTION_TUPLES:
        document[name] = list(document[name])
    for name in _SUBSCRIPTION_TIMES:
        if document[name] is not None:
            document[name] = document[name].isoformat()
    return document


def _subscription(document: dict[str, Any]) -> Subscription:
    values = dict(document)
    for name in _SUBSCRIPTION_TUPLES:
        values[name] = tuple(values.get(name) or ())
    for name in _SUBSCRIPTION_TIMES:
        if values.get(name) is not None:
            values[name] = datetime.fromisoformat(values[name])
    known = {f.name for f in fields(Subscription)}
    return Subscription(**{k: v for k, v in values.items() if k in known})
