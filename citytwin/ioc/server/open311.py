"""Open311 GeoReport v2 (https://wiki.open311.org/GeoReport_v2): services, requests, tokens.

Every route answers JSON, or XML with a `.xml` suffix (`.json` is accepted too). GETs are public and give
the public view only: the reporter is never shown. POST /requests takes the spec's form encoding (and
JSON, and multipart), with the key in `api_key` (form or query) or in a header. The fine workflow state
travels in `status_notes`, since Open311 itself knows only open and closed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core import DEFAULT_CATALOG, IOC
from ..core.model import OPEN311_CLOSED, ApiKey, Reporter, RequestDraft, RequestQuery, Role, ServiceDef, \
    ServiceRequest, Status
from ..core.requests import public_view
from . import open311_xml
from .deps import authenticate, content_types, now, optional_key, sent_key

ROOTS = frozenset({"services", "requests", "tokens"})  # the first path segment of every Open311 route
XML_TYPE = "application/xml"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "application/json")
MAX_SPAN = timedelta(days=90)  # the spec's limit on start_date..end_date, and the default window
POSTERS = (Role.CITIZEN, Role.OPERATOR)
SERVICE_CODES = sorted(DEFAULT_CATALOG)  # for the OpenAPI document; the server's IOC uses this catalog


def comma_list(values: Sequence[str]) -> str:
    """A pattern for a comma-separated list of `values` (so the OpenAPI document names them)."""
    one = "(" + "|".join(re.escape(value) for value in values) + ")"
    return f"^{one}(,{one})*$"

router = APIRouter(tags=["open311"])


# -- the documents --------------------------------------------------------------------------------------------
class Service(BaseModel):
    service_code: str
    service_name: str
    description: str
    metadata: bool
    type: str
    keywords: str
    group: str


class ServiceAttribute(BaseModel):
    variable: bool
    code: str
    datatype: str
    required: bool
    datatype_description: str
    order: int
    description: str
    values: list[dict[str, str]] = []


class ServiceDefinition(BaseModel):
    service_code: str
    attributes: list[ServiceAttribute]


class PublicRequest(BaseModel):
    """A request as anyone may see it: no reporter."""

    service_request_id: str
    status: str = Field(description="open or closed")
    status_notes: str | None = Field(None, description="the workflow state and its latest public note")
    service_name: str | None = None
    service_code: str
    description: str | None = None
    agency_responsible: str | None = None
    service_notice: str | None = None
    requested_datetime: str | None = None
    updated_datetime: str | None = None
    expected_datetime: str | None = None
    address: str | None = None
    lat: float | None = None
    long: float | None = None
    media_url: str | None = None


class Submitted(BaseModel):
    service_request_id: str
    token: str
    service_notice: str | None = None
    account_id: str | None = None


class TokenAnswer(BaseModel):
    service_request_id: str
    token: str


class NewRequest(BaseModel):
    """The POST /requests fields (the spec's names). Empty form fields count as absent."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    service_code: str = Field(min_length=1, max_length=100)
    jurisdiction_id: str | None = Field(None, max_length=200)
    api_key: str | None = Field(None, max_length=500)
    lat: float | None = Field(None, ge=-90, le=90, allow_inf_nan=False)
    long: float | None = Field(None, ge=-180, le=180, allow_inf_nan=False)
    address_string: str | None = Field(None, max_length=1000)
    address_id: str | None = Field(None, max_length=200)
    email: str | None = Field(None, max_length=320)
    device_id: str | None = Field(None, max_length=200)
    account_id: str | None = Field(None, max_length=200)
    first_name: str | None = Field(None, max_length=200)
    last_name: str | None = Field(None, max_length=200)
    phone: str | None = Field(None, max_length=50)
    description: str | None = None  # the core checks its length
    media_url: str | None = Field(None, max_length=2000, pattern=r"^https?://")


def new_request_schema() -> dict[str, Any]:
    """The POST body as OpenAPI shows it: optional fields are simply left out (a form has no null), and
    service_code is one of the catalog's."""
    schema = NewRequest.model_json_schema()
    for name, prop in schema["properties"].items():
        options = [option for option in prop.pop("anyOf", ()) if option.get("type") != "null"]
        if options:
            prop.update(options[0])
        prop.pop("default", None)
    schema["properties"]["service_code"]["enum"] = SERVICE_CODES
    schema["properties"]["address_string"]["pattern"] = r"\S"
    schema["anyOf"] = [{"required": ["lat", "long"]}, {"required": ["address_string"]}]  # a location
    schema["dependentRequired"] = {"lat": ["long"], "long": ["lat"]}
    return schema


# -- formatting ---------------------------------------------------------------------------------------------
def wants_xml(request: Request) -> bool:
    return request.url.path.endswith(".xml")


def iso(value: datetime | None, tz: ZoneInfo) -> str | None:
    """ISO 8601 in the city's time zone (e.g. 2024-05-01T08:30:00+07:00)."""
    return None if value is None else value.astimezone(tz).isoformat(timespec="seconds")


def timezone(request: Request) -> ZoneInfo:
    return ZoneInfo(request.app.state.settings.timezone)


def ioc_of(request: Request) -> IOC:
    return request.app.state.ioc


def service_doc(service: ServiceDef) -> dict[str, Any]:
    return {"service_code": service.code, "service_name": service.name, "description": service.description,
            "metadata": False, "type": service.type, "keywords": ",".join(service.keywords),
            "group": service.group}


def public_doc(request: ServiceRequest, service: ServiceDef, tz: ZoneInfo) -> dict[str, Any]:
    view = public_view(request, service)
    doc = {name: iso(value, tz) if isinstance(value, datetime) else value for name, value in view.items()}
    doc["service_request_id"] = str(doc["service_request_id"])
    return doc


def render(request: Request, root: str, item: str, docs: Sequence[Mapping[str, Any]], status: int = 200) -> Any:
    """XML for `.xml` routes; otherwise the documents, which FastAPI checks against the response model."""
    if wants_xml(request):
        return Response(open311_xml.document(root, item, docs), status, media_type=XML_TYPE)
    return docs


def routes(path: str, *, methods: Sequence[str], name: str, model: Any, status_code: int = 200,
           summary: str, **extra: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register one handler under `path`, `path.xml` and `path.json`, each documented with its content type.
    The suffixed paths go first so `/requests/{id}` does not swallow `/requests/7.json`."""

    def register(handler: Callable[..., Any]) -> Callable[..., Any]:
        xml_answer = {status_code: {"description": "XML", "content": {XML_TYPE: {"schema": {"type": "string"}}}}}
        router.add_api_route(f"{path}.xml", handler, methods=list(methods), name=f"{name}_xml",
                             status_code=status_code, summary=f"{summary} (XML)", response_model=None,
                             response_class=Response, responses=xml_answer, **extra)
        for suffix in (".json", ""):
            router.add_api_route(f"{path}{suffix}", handler, methods=list(methods),
                                 name=f"{name}{suffix.replace('.', '_')}", status_code=status_code,
                                 summary=summary, response_model=model, **extra)
        return handler

    return register


# -- services ------------------------------------------------------------------------------------------------
@routes("/services", methods=["GET"], name="services", model=list[Service], summary="The service list")
def get_services(request: Request, jurisdiction_id: str | None = None,
                 key: ApiKey | None = Depends(optional_key())) -> Any:
    docs = [service_doc(service) for service in ioc_of(request).services()]
    return render(request, "services", "service", docs)


@routes("/services/{service_code}", methods=["GET"], name="service_definition", model=ServiceDefinition,
        summary="A service definition")
def get_service_definition(request: Request, jurisdiction_id: str | None = None,
                           service_code: str = Path(json_schema_extra={"enum": SERVICE_CODES}),
                           key: ApiKey | None = Depends(optional_key())) -> Any:
    service = ioc_of(request).service(service_code)  # UnknownService: 400, as the spec says
    doc = {"service_code": service.code, "attributes": []}
    if wants_xml(request):
        return Response(open311_xml.single("service_definition", doc), media_type=XML_TYPE)
    return doc


# -- requests -------------------------------------------------------------------------------------------------
@routes("/requests", methods=["GET"], name="requests", model=list[PublicRequest],
        summary="Requests, newest first (default: the last 90 days)")
def get_requests(request: Request, jurisdiction_id: str | None = None,
                 service_request_id: str | None = Query(None, description="comma-separated ids; when given, "
                                                                            "the other filters are ignored"),
                 service_code: str | None = Query(None, description="comma-separated service codes",
                                                  json_schema_extra={"pattern": comma_list(SERVICE_CODES)}),
                 start_date: str | None = Query(None, description="ISO 8601; at most 90 days before end_date"),
                 end_date: str | None = Query(None, description="ISO 8601"),
                 status: str | None = Query(None, description="open, closed or both, comma-separated",
                                            json_schema_extra={"pattern": comma_list(("open", "closed"))}),
                 key: ApiKey | None = Depends(optional_key()),
                 at: datetime = Depends(now)) -> Any:
    ioc, tz = ioc_of(request), timezone(request)
    if service_request_id is not None:
        query = RequestQuery(ids=_ids(service_request_id))
        found = ioc.find_requests(query) if query.ids else []
    else:
        codes = _codes(ioc, service_code)
        start, end = _window(start_date, end_date, at, tz)
        found = ioc.find_requests(RequestQuery(service_codes=codes, statuses=_statuses(status),
                                               start=start, end=end))
    services = {service.code: service for service in ioc.services()}
    docs = [public_doc(item, services[item.service_code], tz) for item in found]
    return render(request, "service_requests", "request", docs)


@routes("/requests/{service_request_id}", methods=["GET"], name="request", model=list[PublicRequest],
        summary="One request")
def get_request(request: Request, service_request_id: str, jurisdiction_id: str | None = None,
                key: ApiKey | None = Depends(optional_key())) -> Any:
    ioc = ioc_of(request)
    if not service_request_id.isdigit() or len(service_request_id) > 18:
        raise HTTPException(404, f"no service request {service_request_id!r}")
    found = ioc.get_request(int(service_request_id))
    doc = public_doc(found, ioc.service(found.service_code), timezone(request))
    return render(request, "service_requests", "request", [doc])


@routes("/requests", methods=["POST"], name="post_request", model=list[Submitted], status_code=201,
        summary="Report a problem", dependencies=[Depends(content_types(*FORM_TYPES))],
        openapi_extra={"requestBody": {"required": True, "content": {
            media: {"schema": new_request_schema()} for media in FORM_TYPES}}})
async def post_request(request: Request, plain_key: str | None = Depends(sent_key),
                       at: datetime = Depends(now)) -> Any:
    fields = await _form(request)
    plain_key = plain_key or (fields.get("api_key") if isinstance(fields.get("api_key"), str) else None)
    if not plain_key:
        raise HTTPException(401, "an API key is required (api_key, header X-API-Key or Authorization: Bearer)")
    key = await run_in_threadpool(authenticate, request, plain_key, POSTERS)
    try:
        new = NewRequest.model_validate({name: value for name, value in fields.items() if value != ""})
    except ValidationError as err:
        raise HTTPException(400, _problems(err)) from None
    draft = _draft(new, request, key)
    ioc = ioc_of(request)
    created = await run_in_threadpool(ioc.submit, draft, at)
    notice = public_view(created, ioc.service(created.service_code)).get("service_notice")
    doc = {"service_request_id": str(created.id), "token": created.token, "service_notice": notice,
           "account_id": None}
    return render(request, "service_requests", "request", [doc], status=201)


@routes("/tokens/{token}", methods=["GET"], name="token", model=list[TokenAnswer],
        summary="The request id a token was given for")
def get_token(request: Request, token: str, jurisdiction_id: str | None = None,
              key: ApiKey | None = Depends(optional_key())) -> Any:
    found = ioc_of(request).request_by_token(token)
    return render(request, "service_requests", "request",
                  [{"service_request_id": str(found.id), "token": found.token}])


# -- parsing -------------------------------------------------------------------------------------------------
async def _form(request: Request) -> dict[str, Any]:
    """The POST body as a flat dict, whatever its encoding (UTF-8, even when a client does not escape it)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if not body:
        return {}
    if media == "application/json":
        try:
            fields = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise HTTPException(400, f"body: expected a JSON object ({err})") from None
        if not isinstance(fields, dict):
            raise HTTPException(400, "body: expected a JSON object")
        return fields
    if media == "multipart/form-data":
        form = await request.form()
        return {name: value for name, value in form.items() if isinstance(value, str)}
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise HTTPException(400, "body: form fields must be UTF-8") from None


def _problems(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
                     for problem in err.errors())


def _draft(new: NewRequest, request: Request, key: ApiKey) -> RequestDraft:
    reporter = Reporter(email=new.email, first_name=new.first_name, last_name=new.last_name, phone=new.phone,
                        device_id=new.device_id, account_id=new.account_id)
    # An Idempotency-Key makes a retried POST return the first answer; scoped to the key that sent it.
    retry_id = request.headers.get("idempotency-key")
    client_ref = f"{key.digest[:16]}:{retry_id[:200]}" if retry_id else None
    return RequestDraft(service_code=new.service_code, lat=new.lat, lon=new.long, address=new.address_string,
                        description=new.description or "", media_url=new.media_url, reporter=reporter,
                        jurisdiction_id=new.jurisdiction_id, client_ref=client_ref)


def _ids(text: str) -> tuple[int, ...]:
    # Ids that are not numbers cannot match any request: they just find nothing.
    return tuple(int(part) for part in text.split(",") if part.strip().isdigit() and len(part.strip()) < 19)


def _codes(ioc: IOC, text: str | None) -> tuple[str, ...]:
    codes = tuple(code.strip() for code in (text or "").split(",") if code.strip())
    for code in codes:
        ioc.service(code)  # UnknownService: 400
    return codes


def _statuses(text: str | None) -> tuple[Status, ...]:
    wanted = {part.strip().lower() for part in (text or "").split(",") if part.strip()}
    if wanted - {"open", "closed"}:
        raise HTTPException(400, f"status: expected open, closed or open,closed, got {text!r}")
    if wanted == {"open"}:
        return tuple(status for status in Status if status not in OPEN311_CLOSED)
    if wanted == {"closed"}:
        return tuple(sorted(OPEN311_CLOSED))
    return ()


def _parse_date(name: str, text: str, tz: ZoneInfo) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise HTTPException(400, f"{name}: expected an ISO 8601 date-time such as 2024-05-01T08:00:00+07:00, "
                                 f"got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=tz)  # a bare time is the city's local time


def _window(start_text: str | None, end_text: str | None, at: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """start..end as the spec says: both optional, 90 days by default and at most."""
    start = _parse_date("start_date", start_text, tz) if start_text else None
    end = _parse_date("end_date", end_text, tz) if end_text else None
    if start is None and end is None:
        end = at
    if end is None:
        end = start + MAX_SPAN
    if start is None:
        start = end - MAX_SPAN
    if start > end:
        raise HTTPException(400, "start_date: must not be after end_date")
    if end - start > MAX_SPAN:
        raise HTTPException(400, "end_date: may be at most 90 days after start_date")
    return start, end
