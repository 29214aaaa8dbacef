"""The operator dashboard: one page with its own assets, and the JSON it polls.

The page shell and its assets are public (they hold no data); the two data endpoints need an operator
key, which the page sends as `X-API-Key`. Assets ship inside the package (`static/`) because IOC machines
are offline: no CDN, no web fonts.
"""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from ..core.errors import UnknownService
from ..core.model import Alert, AlertStatus, Role, ServiceRequest, SlaRisk
from . import deps

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Only these files are served: a fixed list rules out path tricks and stray files in the package dir.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
DEFAULT_TITLE = "Trung tâm Giám sát, Điều hành Đô thị thông minh"
REQUEST_LIMIT = 200  # markers beyond this would not be readable on one screen anyway
ALERT_LIMIT = 200
ACTIVE_ALERTS = (AlertStatus.RAISED, AlertStatus.ACKNOWLEDGED)
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key"},
    403: {"description": "The key's role is not operator or admin"},
    429: {"description": "Rate limit of the key exceeded"},
}

router = APIRouter(prefix="/dashboard", tags=["dashboard"])


class RequestItem(BaseModel):
    id: int
    service_code: str
    service_name: str
    status: str
    risk: str
    lon: float | None
    lat: float | None
    requested_at: str
    deadline: str


class AlertItem(BaseModel):
    id: int
    kind: str
    category: str
    severity: str
    message: str
    entity_id: str
    lon: float | None
    lat: float | None
    raised_at: str
    status: str


class DashboardState(BaseModel):
    summary: dict[str, Any]
    requests: list[RequestItem]
    alerts: list[AlertItem]
    timezone: str


def city_name(network: dict[str, Any] | None) -> str:
    """The city's name as the road network names it (foreign member `name` or `properties.name`)."""
    if not network:
        return DEFAULT_TITLE
    props = network.get("properties")
    name = network.get("name") or (props.get("name") if isinstance(props, dict) else None)
    return name if isinstance(name, str) and name.strip() else DEFAULT_TITLE


def request_item(request: ServiceRequest, risk: SlaRisk, service_name: str) -> dict[str, Any]:
    return {
        "id": request.id, "service_code": request.service_code, "service_name": service_name,
        "status": str(request.status), "risk": str(risk), "lon": request.lon, "lat": request.lat,
        "requested_at": request.requested_at.isoformat(), "deadline": request.deadline.isoformat(),
    }


def alert_item(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id, "kind": alert.kind, "category": alert.category, "severity": alert.severity,
        "message": alert.message, "entity_id": alert.entity_id, "lon": alert.lon, "lat": alert.lat,
        "raised_at": alert.raised_at.isoformat(), "status": str(alert.status),
    }


def _service_name(ioc: Any, code: str, cache: dict[str, str]) -> str:
    if code not in cache:
        try:
            cache[code] = ioc.service(code).name
        except UnknownService:  # a category dropped from the catalog after the report came in
            cache[code] = code
    return cache[code]


@router.get("", response_class=HTMLResponse, include_in_schema=False)
def page(request: Request) -> HTMLResponse:
    """The page shell; the city's name goes in server-side so the title is right before any data."""
    settings = request.app.state.settings
    text = (STATIC_DIR / "dashboard.html").read_text(encoding="utf-8")
    text = text.replace("{{CITY}}", html.escape(city_name(getattr(settings, "network", None))))
    # The key arrives in the URL once: keep it out of any Referer the page could send.
    return HTMLResponse(text, headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})


@router.get("/static/{name}", include_in_schema=False)
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, f"no dashboard asset {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})


@router.get("/api/network", responses=AUTH_RESPONSES)
def network(request: Request, _key: Any = Depends(deps.require(Role.OPERATOR))) -> dict[str, Any]:
    """The road network (GeoJSON FeatureCollection of LineStrings in lon/lat); empty when none is set."""
    fc = getattr(request.app.state.settings, "network", None)
    return fc if fc else {"type": "FeatureCollection", "features": []}


@router.get("/api/state", response_model=DashboardState, responses=AUTH_RESPONSES)
def state(request: Request, _key: Any = Depends(deps.require(Role.OPERATOR)),
          now: datetime = Depends(deps.now)) -> dict[str, Any]:
    """KPIs, open requests (most urgent first) and active alerts (latest first)."""
    ioc = request.app.state.ioc
    names: dict[str, str] = {}
    requests = [request_item(r, risk, _service_name(ioc, r.service_code, names))
                for r, risk in ioc.by_sla_risk(now, limit=REQUEST_LIMIT)]
    alerts = sorted(ioc.alerts(statuses=ACTIVE_ALERTS, limit=ALERT_LIMIT),
                    key=lambda a: a.raised_at, reverse=True)
    return {
        "summary": ioc.dashboard(now),
        "requests": requests,
        "alerts": [alert_item(a) for a in alerts],
        "timezone": getattr(request.app.state.settings, "timezone", "Asia/Ho_Chi_Minh"),
    }
