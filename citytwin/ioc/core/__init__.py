"""The IOC's domain core: field reports and their workflow, device entities, rules and alerts, KPIs.
No web and no database code: the server and the twin both drive it through `IOC`."""

from __future__ import annotations

from .catalog import DEFAULT_CATALOG
from .entities import UpsertResult
from .errors import Conflict, Forbidden, Invalid, IocError, NotFound, UnknownService
from .memory import MemoryStore
from .model import (
    OPEN311_CLOSED,
    TRANSITIONS,
    Alert,
    AlertStatus,
    ApiKey,
    Entity,
    EntityQuery,
    Near,
    Observation,
    Reporter,
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
from .rules import DEFAULT_RULES, CameraEventRule, MissingDataRule, RateRule, Rule, ThresholdRule
from .service import IOC

__all__ = [
    "IOC", "MemoryStore", "DEFAULT_CATALOG", "DEFAULT_RULES", "UpsertResult",
    "Rule", "ThresholdRule", "RateRule", "MissingDataRule", "CameraEventRule",
    "IocError", "Invalid", "NotFound", "UnknownService", "Conflict", "Forbidden",
    "OPEN311_CLOSED", "TRANSITIONS", "Alert", "AlertStatus", "ApiKey", "Entity", "EntityQuery", "Near",
    "Observation", "Reporter", "RequestDraft", "RequestEvent", "RequestQuery", "Role", "ServiceDef",
    "ServiceRequest", "SlaRisk", "Status", "Subscription",
]
