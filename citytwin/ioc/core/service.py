"""`IOC`: the one entry point to the domain core. The server calls it per HTTP request; the twin calls it
in virtual time. Every method runs in one store transaction, so a failure leaves nothing half-written."""

from __future__ import annotations

import hashlib
import math
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from . import dashboard as dashboard_figures
from . import entities as ent
from . import requests as req
from .catalog import DEFAULT_CATALOG
from .entities import UpsertResult
from .errors import Conflict, Forbidden, Invalid, NotFound, UnknownService
from .model import (
    Alert,
    AlertStatus,
    ApiKey,
    Entity,
    EntityQuery,
    Observation,
    RequestDraft,
    RequestEvent,
    RequestQuery,
    Role,
    ServiceDef,
    ServiceRequest,
    SlaRisk,
    Status,
    Subscription,
)
from .rules import ACTIVE, DEFAULT_RULES, Rule, RuleSet, clear, new_alert
from .store import Store, Tx

_ALL = 2**62


def key_digest(plain_key: str) -> str:
    return hashlib.sha256(plain_key.encode("utf-8")).hexdigest()


class IOC:
    def __init__(self, store: Store, catalog: dict[str, ServiceDef] | None = None,
                 rules: Sequence[Rule] | None = None, *, tokens: Callable[[], str] | None = None,
                 duplicate_radius_m: float = 50.0, duplicate_window: timedelta = timedelta(days=3)):
        self.store = store
        self.catalog = dict(DEFAULT_CATALOG if catalog is None else catalog)
        self.rules = RuleSet(DEFAULT_RULES if rules is None else rules)
        self._tokens = tokens or (lambda: uuid.uuid4().hex)
        self.duplicate_radius_m = duplicate_radius_m
        self.duplicate_window = duplicate_window

    # -- Open311 services and requests -------------------------------------------------------------------
    def services(self) -> list[ServiceDef]:
        return list(self.catalog.values())

    def service(self, code: str) -> ServiceDef:
        service = self.catalog.get(code) if isinstance(code, str) else None
        if service is None:
            raise UnknownService(f"service_code {code!r} is not a service of this IOC (known: "
                                 f"{', '.join(sorted(self.catalog))})", "service_code")
        return service

    def submit(self, draft: RequestDraft, now: datetime) -> ServiceRequest:
        service = self.service(draft.service_code)
        req.validate_draft(draft)
        with self.store.transaction() as tx:
            if draft.client_ref is not None:
                existing = tx.request_by_client_ref(draft.client_ref)
                if existing is not None:
                    return existing  # a retry of a report already accepted
            request = req.new_request(draft, service, self._tokens(), now)
            original = self._duplicate_of(tx, request, now)
            if original is not None:
                request.duplicate_of = original
                request.status_note = f"Report received; possibly the same problem as request {original}"
            request.id = tx.insert_request(request)
            tx.add_request_event(RequestEvent(request.id, Status.RECEIVED, now, "citizen", request.status_note))
            return request

    def _duplicate_of(self, tx: Tx, request: ServiceRequest, now: datetime) -> int | None:
        if request.lat is None or request.lon is None:
            return None
        candidates = tx.open_requests_near(request.service_code, request.lon, request.lat,
                                           self.duplicate_radius_m, now - self.duplicate_window)
        match = req.pick_duplicate(candidates, request.lon, request.lat)
        if match is None:
            return None
        return match.id

    def get_request(self, request_id: int) -> ServiceRequest:
        with self.store.transaction(readonly=True) as tx:
            return self._request(tx, request_id)

    def _request(self, tx: Tx, request_id: int) -> ServiceRequest:
        request = tx.get_request(request_id) if isinstance(request_id, int) else None
        if request is None:
            raise NotFound(f"no service request {request_id}", "service_request_id")
        return request

    def request_by_token(self, token: str) -> ServiceRequest:
        with self.store.transaction(readonly=True) as tx:
            request = tx.request_by_token(token)
        if request is None:
            raise NotFound(f"no service request with token {token!r}", "token")
        return request

    def find_requests(self, query: RequestQuery) -> list[ServiceRequest]:
        if query.limit < 0 or query.offset < 0:
            raise Invalid("limit and offset must not be negative", "limit")
        with self.store.transaction(readonly=True) as tx:
            return tx.find_requests(query)

    def request_history(self, request_id: int) -> list[RequestEvent]:
        with self.store.transaction(readonly=True) as tx:
            self._request(tx, request_id)
            return tx.request_events(request_id)

    def acknowledge(self, request_id: int, actor: str, now: datetime, note: str = "") -> ServiceRequest:
        return self._step(request_id, Status.ACKNOWLEDGED, actor, now, note)

    def assign(self, request_id: int, actor: str, crew: str, now: datetime, note: str = "") -> ServiceRequest:
        if not isinstance(crew, str) or not crew.strip():
            raise Invalid("crew is required to assign a request", "crew")
        return self._step(request_id, Status.ASSIGNED, actor, now, note, assignee=crew.strip())

    def start(self, request_id: int, actor: str, now: datetime, note: str = "") -> ServiceRequest:
        return self._step(request_id, Status.IN_PROGRESS, actor, now, note)

    def resolve(self, request_id: int, actor: str, now: datetime, note: str = "") -> ServiceRequest:
        return self._step(request_id, Status.RESOLVED, actor, now, note)

    def close(self, request_id: int, actor: str, now: datetime, note: str = "") -> ServiceRequest:
        return self._step(request_id, Status.CLOSED, actor, now, note)

    def mark_duplicate(self, request_id: int, of_id: int, actor: str, now: datetime) -> ServiceRequest:
        if of_id == request_id:
            raise Invalid("a request cannot be a duplicate of itself", "of")
        with self.store.transaction() as tx:
            original = self._request(tx, of_id)
            root = original.duplicate_of or original.id
            if root == request_id:
                raise Invalid(f"request {of_id} is itself a duplicate of {request_id}", "of")
            return self._step_in(tx, request_id, Status.CLOSED, actor, now, f"Duplicate of request {root}",
                                 duplicate_of=root)

    def _step(self, request_id: int, to: Status, actor: str, now: datetime, note: str,
              **changes: Any) -> ServiceRequest:
        with self.store.transaction() as tx:
            return self._step_in(tx, request_id, to, actor, now, note, **changes)

    def _step_in(self, tx: Tx, request_id: int, to: Status, actor: str, now: datetime, note: str,
                 **changes: Any) -> ServiceRequest:
        if not isinstance(note, str) or len(note) > req.MAX_DESCRIPTION:
            raise Invalid(f"note must be text of at most {req.MAX_DESCRIPTION} characters", "note")
        updated = req.transition(self._request(tx, request_id), to, now, note, **changes)
        tx.update_request(updated)
        tx.add_request_event(RequestEvent(request_id, to, now, actor, note))
        return updated

    def sla_risk(self, request: ServiceRequest, now: datetime) -> SlaRisk:
        return req.sla_risk(request, now)

    def by_sla_risk(self, now: datetime, limit: int = 100) -> list[tuple[ServiceRequest, SlaRisk]]:
        with self.store.transaction(readonly=True) as tx:
            open_requests = tx.find_requests(RequestQuery(open_only=True, limit=_ALL))
        ranked = [(r, req.sla_risk(r, now)) for r in open_requests]
        ranked.sort(key=lambda pair: req.risk_order(*pair))
        return ranked[:max(0, limit)]

    # -- entities ------------------------------------------------------------------------------------------
    def upsert(self, documents: list[dict], now: datetime, owner: str | None = None,
               replace: bool = False) -> UpsertResult:
        if not isinstance(documents, list):
            raise Invalid("expected a list of entities", "entities")
        docs = [ent.validate(document) for document in documents]
        with self.store.transaction() as tx:
            return self._write(tx, docs, now, owner, replace)

    def create_entity(self, document: dict, now: datetime, owner: str | None = None) -> UpsertResult:
        doc = ent.validate(document)
        with self.store.transaction() as tx:
            if tx.get_entities([doc.id]):
                raise Conflict(f"entity {doc.id} already exists", "id")
            return self._write(tx, [doc], now, owner, False)

    def update_attrs(self, entity_id: str, attrs: dict, now: datetime, owner: str | None = None) -> UpsertResult:
        if not isinstance(attrs, dict):
            raise Invalid("expected an object of attributes", "attrs")
        with self.store.transaction() as tx:
            existing = tx.get_entities([entity_id]).get(entity_id)
            if existing is None:
                raise NotFound(f"no entity {entity_id}", "id")
            document = {**attrs, "id": entity_id, "type": existing.type}
            return self._write(tx, [ent.validate(document)], now, owner, False)

    def _write(self, tx: Tx, docs: list[ent.Document], now: datetime, owner: str | None,
               replace_attrs: bool) -> UpsertResult:
        before = tx.get_entities({doc.id for doc in docs})
        for doc in docs:
            existing = before.get(doc.id)
            if existing is None:
                continue
            if owner is not None and existing.owner != owner:
                raise Forbidden(f"entity {doc.id} belongs to another device; {owner} may write only its own",
                                "id")
            if existing.type != doc.type:
                raise Conflict(f"entity {doc.id} exists with type {existing.type}, not {doc.type}", "type")
        result = UpsertResult()
        current: dict[str, Entity] = dict(before)
        changed: dict[str, set[str]] = {}
        history: list[Observation] = []
        active = self._active_by_rule(tx, current)
        cleared: dict[int, Alert] = {}
        for doc in docs:
            previous = current.get(doc.id)
            entity, attrs, rows = ent.merge(previous, doc, now, owner, replace_attrs)
            current[doc.id] = entity
            history.extend(rows)
            if attrs:
                changed.setdefault(doc.id, set()).update(attrs)
            raised, gone = self.rules.on_write(entity, previous, attrs, active, now)
            result.alerts.extend(raised)
            cleared.update((alert.id, alert) for alert in gone if alert.id is not None)
            # An alert raised and cleared within the batch never reaches the store as active.
            for alert in gone:
                if alert.id is None:
                    self._drop_raised(result.alerts, alert)
                    result.alerts.append(alert)
        written = {doc.id: current[doc.id] for doc in docs}
        tx.put_entities(list(written.values()))
        tx.add_observations(history)
        for alert in result.alerts:
            alert.id = tx.insert_alert(alert)
        for alert in cleared.values():
            tx.update_alert(alert)
        result.alerts.extend(cleared.values())
        result.created = [i for i in written if i not in before]
        result.updated = [i for i in written if i in before]
        result.changed = [(written[i], tuple(sorted(attrs))) for i, attrs in changed.items()]
        return result

    @staticmethod
    def _drop_raised(alerts: list[Alert], cleared_alert: Alert) -> None:
        for position, alert in enumerate(alerts):
            if alert.id is None and alert.rule_id == cleared_alert.rule_id and \
                    alert.entity_id == cleared_alert.entity_id and alert.raised_at == cleared_alert.raised_at:
                del alerts[position]
                return

    @staticmethod
    def _active_by_rule(tx: Tx, entities: Iterable[str]) -> dict[tuple[str, str], list[Alert]]:
        active: dict[tuple[str, str], list[Alert]] = {}
        for alert in tx.active_alerts_for(list(entities)):
            active.setdefault((alert.entity_id, alert.rule_id), []).append(alert)
        return active

    def get_entity(self, entity_id: str) -> Entity:
        with self.store.transaction(readonly=True) as tx:
            entity = tx.get_entities([entity_id]).get(entity_id)
        if entity is None:
            raise NotFound(f"no entity {entity_id}", "id")
        return entity

    def delete_entity(self, entity_id: str, owner: str | None = None, now: datetime | None = None) -> None:
        """Delete an entity and clear its active alerts (at `now`, or when the entity was last written)."""
        with self.store.transaction() as tx:
            entity = tx.get_entities([entity_id]).get(entity_id)
            if entity is None:
                raise NotFound(f"no entity {entity_id}", "id")
            if owner is not None and entity.owner != owner:
                raise Forbidden(f"entity {entity_id} belongs to another device", "id")
            tx.delete_entity(entity_id)
            # Its alerts would otherwise stay active for ever, with nothing left to clear them.
            for alert in tx.active_alerts_for([entity_id]):
                tx.update_alert(clear(alert, now or max(alert.raised_at, entity.modified_at), "system"))

    def query_entities(self, query: EntityQuery, q: str | None = None) -> tuple[list[Entity], int]:
        _check_entity_query(query)
        node = ent.parse_q(q) if q is not None else None
        with self.store.transaction(readonly=True) as tx:
            if node is None:
                return tx.query_entities(query), tx.count_entities(query)
            everything = tx.query_entities(replace(query, limit=_ALL, offset=0))
        found = [entity for entity in everything if ent.matches(node, entity)]
        return found[query.offset:query.offset + query.limit], len(found)

    def entity_history(self, entity_id: str, attr: str | None = None, since: datetime | None = None,
                       until: datetime | None = None, limit: int = 1000) -> list[Observation]:
        if limit < 0:
            raise Invalid("limit must not be negative", "limit")
        with self.store.transaction(readonly=True) as tx:
            rows = tx.observations(entity_id, attr, since, until, limit)
            if not rows and not tx.get_entities([entity_id]):
                raise NotFound(f"no entity {entity_id}", "id")
            return rows

    # -- alerts ----------------------------------------------------------------------------------------------
    def tick(self, now: datetime) -> list[Alert]:
        """Raise missing-data alerts and auto-clear camera alerts that are old enough."""
        changes: list[Alert] = []
        with self.store.transaction() as tx:
            for rule in self.rules.missing:
                stale = tx.stale_entities(rule.entity_type, now - rule.max_age)
                if not stale:
                    continue
                alerted = {a.entity_id for a in tx.active_alerts_for([e.id for e in stale])
                           if a.rule_id == rule.rule_id}
                for entity in stale:
                    if entity.id not in alerted:
                        alert = new_alert(rule, entity, rule.verdict_for(entity, now), now)
                        alert.id = tx.insert_alert(alert)
                        changes.append(alert)
            if self.rules.camera:
                cameras = {rule.rule_id: rule for rule in self.rules.camera}
                for alert in tx.find_alerts(ACTIVE, limit=_ALL):
                    rule = cameras.get(alert.rule_id)
                    if rule is not None and rule.expired(alert, now):
                        done = clear(alert, now, "rule")
                        tx.update_alert(done)
                        changes.append(done)
        return changes

    def alerts(self, statuses: Sequence[AlertStatus] = (), limit: int = 1000) -> list[Alert]:
        with self.store.transaction(readonly=True) as tx:
            return tx.find_alerts(tuple(statuses), max(0, limit))

    def acknowledge_alert(self, alert_id: int, actor: str, now: datetime) -> Alert:
        with self.store.transaction() as tx:
            alert = self._alert(tx, alert_id)
            if alert.status == AlertStatus.ACKNOWLEDGED:
                return alert
            alert = replace(alert, status=AlertStatus.ACKNOWLEDGED, acknowledged_at=now, actor=actor)
            tx.update_alert(alert)
            return alert

    def clear_alert(self, alert_id: int, actor: str, now: datetime) -> Alert:
        with self.store.transaction() as tx:
            alert = clear(self._alert(tx, alert_id), now, actor)
            tx.update_alert(alert)
            return alert

    @staticmethod
    def _alert(tx: Tx, alert_id: int) -> Alert:
        alert = tx.get_alert(alert_id) if isinstance(alert_id, int) else None
        if alert is None:
            raise NotFound(f"no alert {alert_id}", "id")
        if alert.status == AlertStatus.CLEARED:
            raise Conflict(f"alert {alert_id} is already cleared", "status")
        return alert

    # -- subscriptions ---------------------------------------------------------------------------------------
    def subscribe(self, sub: Subscription) -> Subscription:
        _check_subscription(sub)
        with self.store.transaction() as tx:
            if tx.get_subscription(sub.id) is not None:
                raise Conflict(f"subscription {sub.id} already exists", "id")
            tx.put_subscription(sub)
        return sub

    def subscription(self, subscription_id: str) -> Subscription:
        with self.store.transaction(readonly=True) as tx:
            sub = tx.get_subscription(subscription_id)
        if sub is None:
            raise NotFound(f"no subscription {subscription_id}", "id")
        return sub

    def subscriptions(self) -> list[Subscription]:
        with self.store.transaction(readonly=True) as tx:
            return tx.subscriptions()

    def update_subscription(self, sub: Subscription) -> Subscription:
        _check_subscription(sub)
        with self.store.transaction() as tx:
            if tx.get_subscription(sub.id) is None:
                raise NotFound(f"no subscription {sub.id}", "id")
            tx.put_subscription(sub)
        return sub

    def unsubscribe(self, subscription_id: str) -> None:
        with self.store.transaction() as tx:
            if not tx.delete_subscription(subscription_id):
                raise NotFound(f"no subscription {subscription_id}", "id")

    def notifications_for(self, changed: Sequence[tuple[Entity, tuple[str, ...]]]
                          ) -> list[tuple[Subscription, list[Entity]]]:
        if not changed:
            return []
        out = []
        for sub in self.subscriptions():
            if not sub.active:
                continue
            types = set(sub.entity_types)
            watched = set(sub.watched_attrs)
            node = ent.parse_q(sub.q) if sub.q else None
            hits = [entity for entity, attrs in changed
                    if (not types or entity.type in types)
                    and (not watched or not watched.isdisjoint(attrs))
                    and (node is None or ent.matches(node, entity))]
            if hits:
                out.append((sub, hits))
        return out

    def record_notification(self, sub_id: str, ok: bool, now: datetime) -> None:
        with self.store.transaction() as tx:
            sub = tx.get_subscription(sub_id)
            if sub is None:
                return  # deleted while its notification was on the way
            sub.times_sent += 1
            sub.last_notification = now
            if not ok:
                sub.last_failure = now
            tx.put_subscription(sub)

    # -- API keys --------------------------------------------------------------------------------------------
    def create_key(self, role: Role | str, now: datetime, label: str = "", device_id: str | None = None,
                   entity_type: str | None = None, rate_per_s: float | None = None) -> tuple[str, ApiKey]:
        try:
            role = Role(role)
        except ValueError:
            raise Invalid(f"role must be one of {', '.join(r.value for r in Role)}, got {role!r}", "role") from None
        if role == Role.DEVICE and not device_id:
            raise Invalid("a device key needs the device id it writes for", "device_id")
        if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise Invalid("rate must be a positive number of requests per second", "rate_per_s")
        plain = "ioc_" + secrets.token_urlsafe(32)  # never from the seeded tokens: keys must be unguessable
        key = ApiKey(digest=key_digest(plain), role=role, label=label, device_id=device_id,
                     entity_type=entity_type, rate_per_s=rate_per_s, created_at=now)
        with self.store.transaction() as tx:
            tx.put_key(key)
        return plain, key

    def authenticate(self, plain_key: str | None) -> ApiKey | None:
        if not plain_key or not isinstance(plain_key, str):
            return None
        with self.store.transaction(readonly=True) as tx:
            key = tx.get_key(key_digest(plain_key))
        return None if key is None or key.revoked else key

    def revoke_key(self, digest: str) -> ApiKey:
        with self.store.transaction() as tx:
            key = tx.get_key(digest)
            if key is None:
                raise NotFound(f"no key with digest {digest[:12]}…", "digest")
            key = replace(key, revoked=True)
            tx.put_key(key)
            return key

    def keys(self) -> list[ApiKey]:
        with self.store.transaction(readonly=True) as tx:
            return tx.keys()

    # -- dashboard -------------------------------------------------------------------------------------------
    def dashboard(self, now: datetime, freshness_window: timedelta = timedelta(minutes=15)) -> dict:
        with self.store.transaction(readonly=True) as tx:
            return dashboard_figures.compute(tx, now, freshness_window)


def _check_entity_query(query: EntityQuery) -> None:
    if query.limit < 0 or query.offset < 0:
        raise Invalid("limit and offset must not be negative", "limit")
    near = query.near
    if near is not None:
        if not (-180.0 <= near.lon <= 180.0 and -90.0 <= near.lat <= 90.0):
            raise Invalid("near: the point must be [longitude, latitude] within ±180, ±90", "coordinates")
        if not (math.isfinite(near.max_distance_m) and near.max_distance_m >= 0):
            raise Invalid("maxDistance must be a non-negative number of metres", "maxDistance")


def _check_subscription(sub: Subscription) -> None:
    if not sub.id:
        raise Invalid("subscription id is missing", "id")
    if not sub.entity_types and not sub.watched_attrs:
        raise Invalid("a subscription needs entities (types) or watchedAttributes", "entities")
    if not isinstance(sub.endpoint, str) or not sub.endpoint.startswith(("http://", "https://")):
        raise Invalid("notification endpoint must be an http(s) URI", "notification.endpoint.uri")
    if sub.q:
        ent.parse_q(sub.q)
