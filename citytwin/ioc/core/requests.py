"""Field reports: validation of a citizen's draft, the workflow, SLA risk, duplicates, the public view."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime
from typing import Any

from .errors import Conflict, Invalid
from .model import (
    OPEN311_CLOSED,
    TRANSITIONS,
    RequestDraft,
    ServiceDef,
    ServiceRequest,
    SlaRisk,
    Status,
)

# A request is at risk once this share of the time between its report and its deadline has gone by:
# late enough that most requests pass it untroubled, early enough to leave a quarter of the SLA to act.
AT_RISK_FRACTION = 0.75
MAX_DESCRIPTION = 4000
MAX_ADDRESS = 1000
MAX_URL = 2000
EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)

_RISK_ORDER = {SlaRisk.BREACHED: 0, SlaRisk.AT_RISK: 1, SlaRisk.ON_TRACK: 2}


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def is_open(request: ServiceRequest) -> bool:
    """Open in the Open311 sense: not yet resolved or closed."""
    return request.status not in OPEN311_CLOSED


def validate_draft(draft: RequestDraft) -> None:
    """Raise Invalid naming the Open311 field that is wrong (lat, long, address_string, description…)."""
    if (draft.lat is None) != (draft.lon is None):
        field = "long" if draft.lon is None else "lat"
        raise Invalid(f"{field} is missing: give both lat and long, or neither (and an address_string)", field)
    if draft.lat is not None:
        _check_coordinate(draft.lat, -90.0, 90.0, "lat")
        _check_coordinate(draft.lon, -180.0, 180.0, "long")
    elif not (draft.address or "").strip():
        raise Invalid("a location is required: lat and long, or address_string", "lat")
    if len(draft.description or "") > MAX_DESCRIPTION:
        raise Invalid(f"description is {len(draft.description)} characters long; at most {MAX_DESCRIPTION} "
                      "are accepted", "description")
    if draft.address is not None and len(draft.address) > MAX_ADDRESS:
        raise Invalid(f"address_string is longer than {MAX_ADDRESS} characters", "address_string")
    if draft.media_url is not None:
        if len(draft.media_url) > MAX_URL or not draft.media_url.startswith(("http://", "https://")):
            raise Invalid(f"media_url must be an http(s) URL of at most {MAX_URL} characters", "media_url")
    if draft.client_ref is not None and not 0 < len(draft.client_ref) <= 200:
        raise Invalid("client_ref must be 1 to 200 characters long", "client_ref")


def _check_coordinate(value: Any, low: float, high: float, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Invalid(f"{field} must be a number in degrees (WGS84), got {value!r}", field)
    if not low <= value <= high:
        raise Invalid(f"{field} must be between {low:g} and {high:g} degrees, got {value}", field)


def new_request(draft: RequestDraft, service: ServiceDef, token: str, now: datetime) -> ServiceRequest:
    """The request as received (no id yet): deadline from the service's SLA, agency from the catalog."""
    return ServiceRequest(
        id=None, token=token, service_code=service.code, status=Status.RECEIVED, requested_at=now,
        updated_at=now, deadline=now + service.sla, agency=service.agency, lat=draft.lat, lon=draft.lon,
        address=draft.address, description=draft.description or "", media_url=draft.media_url,
        reporter=draft.reporter, jurisdiction_id=draft.jurisdiction_id, client_ref=draft.client_ref,
        status_note="Report received")


def transition(request: ServiceRequest, to: Status, now: datetime, note: str = "",
               **changes: Any) -> ServiceRequest:
    """The request after one workflow step; Conflict when TRANSITIONS does not allow it."""
    if to not in TRANSITIONS[request.status]:
        allowed = ", ".join(sorted(TRANSITIONS[request.status])) or "none (it is closed)"
        raise Conflict(f"request {request.id} is {request.status}; it cannot become {to} (allowed: {allowed})",
                       "status")
    closed_at = request.closed_at
    if closed_at is None and to in OPEN311_CLOSED:
        closed_at = now
    return replace(request, status=to, updated_at=now, status_note=note or request.status_note,
                   closed_at=closed_at, **changes)


def sla_risk(request: ServiceRequest, now: datetime) -> SlaRisk:
    """Breached past the deadline (or closed after it); at risk once AT_RISK_FRACTION of the SLA is used."""
    if not is_open(request):
        done = request.closed_at or request.updated_at
        return SlaRisk.BREACHED if done > request.deadline else SlaRisk.ON_TRACK
    if now > request.deadline:
        return SlaRisk.BREACHED
    allowed = (request.deadline - request.requested_at).total_seconds()
    used = (now - request.requested_at).total_seconds()
    if allowed <= 0 or used >= AT_RISK_FRACTION * allowed:
        return SlaRisk.AT_RISK
    return SlaRisk.ON_TRACK


def risk_order(request: ServiceRequest, risk: SlaRisk) -> tuple:
    """Sort key: breached first, then at risk, then by deadline."""
    return (_RISK_ORDER[risk], request.deadline, request.id or 0)


def pick_duplicate(candidates: list[ServiceRequest], lon: float, lat: float) -> ServiceRequest | None:
    """The open request a new report most likely repeats: the nearest, then the oldest. Only originals
    count: linking to duplicates would chain reports along a street far beyond the radius."""
    best = None
    best_key = None
    for candidate in candidates:
        if (not is_open(candidate) or candidate.duplicate_of is not None or candidate.lat is None
                or candidate.lon is None):
            continue
        key = (haversine_m(lon, lat, candidate.lon, candidate.lat), candidate.requested_at, candidate.id or 0)
        if best_key is None or key < best_key:
            best, best_key = candidate, key
    return best


def public_view(request: ServiceRequest, service: ServiceDef | None) -> dict[str, Any]:
    """What anyone may see of a request (Open311 GET /requests): never the reporter, never the token."""
    return {
        "service_request_id": str(request.id),
        "status": "closed" if request.status in OPEN311_CLOSED else "open",
        "status_notes": request.status_note,
        "service_name": service.name if service else request.service_code,
        "service_code": request.service_code,
        "description": request.description,
        "agency_responsible": request.agency,
        "service_notice": _service_notice(service),
        "requested_datetime": request.requested_at,
        "updated_datetime": request.updated_at,
        "expected_datetime": request.deadline,
        "address": request.address,
        "lat": request.lat,
        "long": request.lon,
        "media_url": request.media_url,
    }


def _service_notice(service: ServiceDef | None) -> str:
    if service is None:
        return ""
    hours = service.sla.total_seconds() / 3600
    return f"Thời hạn xử lý: {hours:g} giờ (handled within {hours:g} h)"
