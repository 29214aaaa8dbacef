"""The operator API: the request workflow, the list by SLA risk, alerts, the dashboard figures.

Operators see everything about a request, the reporter included; every step is recorded with the
operator's key label as actor. Roles: operator (and admin).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ..core import IOC
from ..core.model import OPEN311_CLOSED, Alert, AlertStatus, ApiKey, RequestQuery, Role, ServiceRequest, SlaRisk, \
    Status
from .deps import actor, content_types, now, require
from .open311 import comma_list

RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]  # what the database's BIGINT ids can be
router = APIRouter(prefix="/operator/v1", tags=["operator"],
                   dependencies=[Depends(content_types("application/json"))])
operator_key = require(Role.OPERATOR)
# Filter values as patterns, so the OpenAPI document names them (the handlers check them with clear messages).
RISKS = comma_list([risk.value for risk in SlaRisk])
STATUSES = comma_list([status.value for status in Status])
ALERT_STATUSES = comma_list([status.value for status in AlertStatus])


class Action(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    ASSIGN = "assign"
    START = "start"
    RESOLVE = "resolve"
    CLOSE = "close"


class ReporterOut(BaseModel):
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    device_id: str | None = None
    account_id: str | None = None


class RequestOut(BaseModel):
    id: int
    token: str
    service_code: str
    status: Status
    sla_risk: SlaRisk
    requested_at: datetime
    updated_at: datetime
    deadline: datetime
    agency: str
    lat: float | None = None
    lon: float | None = None
    address: str | None = None
    description: str = ""
    media_url: str | None = None
    reporter: ReporterOut
    jurisdiction_id: str | None = None
    assignee: str | None = None
    duplicate_of: int | None = None
    status_note: str = ""
    closed_at: datetime | None = None


class EventOut(BaseModel):
    status: Status
    at: datetime
    actor: str
    note: str = ""


class RequestDetail(RequestOut):
    history: list[EventOut]


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = Field("", max_length=4000, description="public note shown to the reporter")
    crew: str = Field("", max_length=200, description="who does the work (needed to assign)")


class DuplicateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    of: int = Field(ge=1, le=2**63 - 1, description="the id of the request this one duplicates")


class AlertOut(BaseModel):
    id: int
    rule_id: str
    kind: str
    entity_id: str
    entity_type: str
    severity: str
    category: str
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


def _ioc(request: Request) -> IOC:
    return request.app.state.ioc


def _local(value: datetime | None, tz: ZoneInfo) -> datetime | None:
    return None if value is None else value.astimezone(tz)


def request_out(item: ServiceRequest, risk: SlaRisk, tz: ZoneInfo) -> dict[str, Any]:
    return {"id": item.id, "token": item.token, "service_code": item.service_code, "status": item.status,
            "sla_risk": risk, "requested_at": _local(item.requested_at, tz),
            "updated_at": _local(item.updated_at, tz), "deadline": _local(item.deadline, tz),
            "agency": item.agency, "lat": item.lat, "lon": item.lon, "address": item.address,
            "description": item.description, "media_url": item.media_url,
            "reporter": asdict(item.reporter),
            "jurisdiction_id": item.jurisdiction_id, "assignee": item.assignee, "duplicate_of": item.duplicate_of,
            "status_note": item.status_note, "closed_at": _local(item.closed_at, tz)}


def alert_out(alert: Alert, tz: ZoneInfo) -> dict[str, Any]:
    doc = asdict(alert)
    for name in ("raised_at", "acknowledged_at", "cleared_at"):
        doc[name] = _local(doc[name], tz)
    return doc


def _tz(request: Request) -> ZoneInfo:
    return ZoneInfo(request.app.state.settings.timezone)


def _split(text: str | None, kind: type[StrEnum], name: str) -> tuple[Any, ...]:
    values = [part.strip() for part in (text or "").split(",") if part.strip()]
    allowed = [member.value for member in kind]
    wrong = [value for value in values if value not in allowed]
    if wrong:
        raise HTTPException(400, f"{name}: expected any of {', '.join(allowed)} (comma-separated), got {wrong[0]!r}")
    return tuple(kind(value) for value in values)


# -- requests -------------------------------------------------------------------------------------------------
@router.get("/requests", response_model=list[RequestOut], summary="Requests by SLA risk (breached first)")
def list_requests(request: Request,
                  risk: str | None = Query(None, description="on_track, at_risk, breached (comma-separated)",
                                           json_schema_extra={"pattern": RISKS}),
                  status: str | None = Query(None, description="workflow states, comma-separated; default: "
                                                                "the open ones",
                                             json_schema_extra={"pattern": STATUSES}),
                  limit: int = Query(100, ge=1, le=1000), key: ApiKey = Depends(operator_key),
                  at: datetime = Depends(now)) -> list[dict[str, Any]]:
    ioc, tz = _ioc(request), _tz(request)
    risks = set(_split(risk, SlaRisk, "risk"))
    statuses = set(_split(status, Status, "status"))
    if statuses & OPEN311_CLOSED:
        # The risk list holds open requests only: closed ones come by status, newest first.
        query = RequestQuery(statuses=tuple(statuses), limit=10_000)
        found = [(item, ioc.sla_risk(item, at)) for item in ioc.find_requests(query)]
    else:
        found = ioc.by_sla_risk(at, limit=limit if not (risks or statuses) else 100_000)
    picked = [(item, item_risk) for item, item_risk in found
              if (not risks or item_risk in risks) and (not statuses or item.status in statuses)]
    return [request_out(item, item_risk, tz) for item, item_risk in picked[:limit]]


@router.get("/requests/{request_id}", response_model=RequestDetail, summary="One request with its history")
def get_request(request: Request, request_id: RowId, key: ApiKey = Depends(operator_key),
                at: datetime = Depends(now)) -> dict[str, Any]:
    ioc, tz = _ioc(request), _tz(request)
    item = ioc.get_request(request_id)
    doc = request_out(item, ioc.sla_risk(item, at), tz)
    doc["history"] = [{"status": event.status, "at": _local(event.at, tz), "actor": event.actor,
                       "note": event.note} for event in ioc.request_history(request_id)]
    return doc


@router.post("/requests/{request_id}/duplicate", response_model=RequestOut, summary="Mark as a duplicate")
def mark_duplicate(request: Request, request_id: RowId, body: DuplicateBody, key: ApiKey = Depends(operator_key),
                   at: datetime = Depends(now)) -> dict[str, Any]:
    ioc = _ioc(request)
    item = ioc.mark_duplicate(request_id, body.of, actor(key), at)
    return request_out(item, ioc.sla_risk(item, at), _tz(request))


@router.post("/requests/{request_id}/{action}", response_model=RequestOut,
             summary="A workflow step: acknowledge, assign (needs crew), start, resolve or close")
def act(request: Request, request_id: RowId, action: Action, body: ActionBody | None = None,
        key: ApiKey = Depends(operator_key), at: datetime = Depends(now)) -> dict[str, Any]:
    ioc, body = _ioc(request), body or ActionBody()
    who = actor(key)
    if action is Action.ASSIGN:
        if not body.crew.strip():
            raise HTTPException(400, "crew: required to assign a request")
        item = ioc.assign(request_id, who, body.crew.strip(), at, note=body.note)
    else:
        step = {Action.ACKNOWLEDGE: ioc.acknowledge, Action.START: ioc.start, Action.RESOLVE: ioc.resolve,
                Action.CLOSE: ioc.close}[action]
        item = step(request_id, who, at, note=body.note)
    return request_out(item, ioc.sla_risk(item, at), _tz(request))


# -- alerts -------------------------------------------------------------------------------------------------
@router.get("/alerts", response_model=list[AlertOut], summary="Alerts, newest first")
def list_alerts(request: Request,
                status: str | None = Query(None, description="raised, acknowledged, cleared (comma-separated)",
                                           json_schema_extra={"pattern": ALERT_STATUSES}),
                limit: int = Query(1000, ge=1, le=10_000),
                key: ApiKey = Depends(operator_key)) -> list[dict[str, Any]]:
    found = _ioc(request).alerts(statuses=_split(status, AlertStatus, "status"), limit=limit)
    tz = _tz(request)
    return [alert_out(alert, tz) for alert in found]


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertOut, summary="Acknowledge an alert")
def acknowledge_alert(request: Request, alert_id: RowId, key: ApiKey = Depends(operator_key),
                      at: datetime = Depends(now)) -> dict[str, Any]:
    return alert_out(_ioc(request).acknowledge_alert(alert_id, actor(key), at), _tz(request))


@router.post("/alerts/{alert_id}/clear", response_model=AlertOut, summary="Clear an alert")
def clear_alert(request: Request, alert_id: RowId, key: ApiKey = Depends(operator_key),
                at: datetime = Depends(now)) -> dict[str, Any]:
    cleared = _ioc(request).clear_alert(alert_id, actor(key), at)
    publisher = getattr(request.app.state, "alerts", None)
    if publisher is not None:  # a clear by hand goes out on MQTT like one by a rule
        publisher.submit([cleared])
    return alert_out(cleared, _tz(request))


# -- KPIs -----------------------------------------------------------------------------------------------------
@router.get("/dashboard", response_model=dict[str, Any], summary="The dashboard's KPI figures")
def dashboard(request: Request, key: ApiKey = Depends(operator_key), at: datetime = Depends(now)) -> dict[str, Any]:
    return _ioc(request).dashboard(at)
