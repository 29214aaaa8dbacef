"""The IOC's domain objects: service requests and their workflow, entities, alerts, subscriptions, API keys.

Plain dataclasses with no web or database code. Times are timezone-aware `datetime`s: wall-clock in the
server, virtual time (the run's start date plus simulated seconds) when the twin runs the core in-process.
Entity and attribute names are expanded IRIs (see `ldcontext`): that is what NGSI-LD identifies them by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """The field-report workflow. Each step is recorded with time, actor and a public note."""

    RECEIVED = "received"
    ACKNOWLEDGED = "acknowledged"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"


# Which step may follow which. Closing early is how an operator rejects a report or folds a duplicate;
# a resolved request reopens to in-progress when the fix did not hold.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.RECEIVED: frozenset({Status.ACKNOWLEDGED, Status.CLOSED}),
    Status.ACKNOWLEDGED: frozenset({Status.ASSIGNED, Status.CLOSED}),
    Status.ASSIGNED: frozenset({Status.ASSIGNED, Status.IN_PROGRESS, Status.CLOSED}),
    Status.IN_PROGRESS: frozenset({Status.RESOLVED, Status.CLOSED}),
    Status.RESOLVED: frozenset({Status.CLOSED, Status.IN_PROGRESS}),
    Status.CLOSED: frozenset(),
}

# Open311 knows only open and closed; the finer state travels in status_notes.
OPEN311_CLOSED = frozenset({Status.RESOLVED, Status.CLOSED})


class Role(StrEnum):
    CITIZEN = "citizen"    # the citizen app: posts and tracks field reports
    DEVICE = "device"      # one device: writes its own entities only
    OPERATOR = "operator"  # IOC operators and field crews: the workflow, alerts, dashboard
    ADMIN = "admin"        # everything, including keys and subscriptions


class SlaRisk(StrEnum):
    ON_TRACK = "on_track"
    AT_RISK = "at_risk"    # most of the deadline used (see core.requests.AT_RISK_FRACTION)
    BREACHED = "breached"


@dataclass(frozen=True)
class ServiceDef:
    """One category of field report, with the agency responsible and its deadline."""

    code: str
    name: str
    group: str
    agency: str
    sla: timedelta
    description: str = ""
    keywords: tuple[str, ...] = ()
    type: str = "realtime"  # Open311: realtime | batch | blackbox


@dataclass(frozen=True)
class Reporter:
    """Who reported: never shown in the public view."""

    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    device_id: str | None = None
    account_id: str | None = None


@dataclass(frozen=True)
class RequestDraft:
    """What a citizen submits (Open311 POST /requests), before the IOC accepts it."""

    service_code: str
    lat: float | None = None
    lon: float | None = None
    address: str | None = None
    description: str = ""
    media_url: str | None = None
    reporter: Reporter = field(default_factory=Reporter)
    jurisdiction_id: str | None = None
    client_ref: str | None = None  # the submitting client's own id, for idempotent retries


@dataclass
class ServiceRequest:
    id: int | None  # assigned by the store
    token: str
    service_code: str
    status: Status
    requested_at: datetime
    updated_at: datetime
    deadline: datetime
    agency: str
    lat: float | None = None
    lon: float | None = None
    address: str | None = None
    description: str = ""
    media_url: str | None = None
    reporter: Reporter = field(default_factory=Reporter)
    jurisdiction_id: str | None = None
    client_ref: str | None = None
    assignee: str | None = None
    duplicate_of: int | None = None
    status_note: str = ""  # the latest public note
    closed_at: datetime | None = None  # when it first reached resolved or closed


@dataclass(frozen=True)
class RequestEvent:
    """One workflow step: what a reporter sees in the request's history."""

    request_id: int
    status: Status
    at: datetime
    actor: str
    note: str = ""


@dataclass(frozen=True)
class RequestQuery:
    """Open311 GET /requests filters, plus the operator's."""

    ids: tuple[int, ...] = ()
    service_codes: tuple[str, ...] = ()
    statuses: tuple[Status, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    open_only: bool = False
    limit: int = 1000
    offset: int = 0


@dataclass
class Entity:
    """An NGSI-LD entity: latest state. `attrs` maps expanded attribute IRIs to NGSI-LD normalised
    attributes ({"type": "Property", "value": …, "observedAt": …} and so on); `location` is kept out of
    `attrs` as (lon, lat) so it can be indexed."""

    id: str
    type: str
    attrs: dict[str, dict[str, Any]]
    created_at: datetime
    modified_at: datetime
    location: tuple[float, float] | None = None
    location_attr: dict[str, Any] | None = None  # the GeoProperty as posted (any GeoJSON geometry)
    owner: str | None = None  # the device that writes it, when a device does


@dataclass(frozen=True)
class Observation:
    """One attribute value at one time: the entity's history. (entity_id, attr, observed_at) is unique,
    which makes device retries idempotent."""

    entity_id: str
    attr: str
    observed_at: datetime
    value: Any


@dataclass(frozen=True)
class Near:
    lon: float
    lat: float
    max_distance_m: float


@dataclass(frozen=True)
class EntityQuery:
    ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    near: Near | None = None
    limit: int = 20
    offset: int = 0


class AlertStatus(StrEnum):
    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


@dataclass
class Alert:
    id: int | None
    rule_id: str
    kind: str  # threshold | rate | missing | camera
    entity_id: str
    entity_type: str
    severity: str  # informational | low | medium | high | critical (Smart Data Models Alert)
    category: str  # traffic | environment | weather | security | …
    status: AlertStatus
    raised_at: datetime
    message: str
    attribute: str | None = None
    value: Any = None
    lon: float | None = None
    lat: float | None = None
    acknowledged_at: datetime | None = None
    cleared_at: datetime | None = None
    actor: str | None = None


@dataclass
class Subscription:
    """An NGSI-LD subscription, expanded. Notifications go as HTTP POST to `endpoint`."""

    id: str
    entity_types: tuple[str, ...]
    endpoint: str
    watched_attrs: tuple[str, ...] = ()
    notify_attrs: tuple[str, ...] = ()
    q: str | None = None
    context: Any = None  # the subscriber's @context, to compact what it is sent
    accept: str = "application/json"
    throttling_s: float = 0.0
    created_at: datetime | None = None
    times_sent: int = 0
    last_notification: datetime | None = None
    last_failure: datetime | None = None
    active: bool = True


@dataclass(frozen=True)
class ApiKey:
    """A client's key, stored by its SHA-256 digest only."""

    digest: str
    role: Role
    label: str = ""
    device_id: str | None = None  # for a device: the only entities it may write are its own
    entity_type: str | None = None  # for a device: the type its measures become (IoT Agent provisioning)
    rate_per_s: float | None = None  # None: the role's default
    created_at: datetime | None = None
    revoked: bool = False
