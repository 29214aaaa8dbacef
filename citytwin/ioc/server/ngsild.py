"""The NGSI-LD API subset the IOC serves (ETSI GS CIM 009): entities, batch upsert, temporal history and
subscriptions, under `/ngsi-ld/v1`.

Bodies are read and checked against the @context rules by `ngsi_render`; the core gets expanded documents
and answers with expanded entities, which are compacted again with the caller's context. Every error is a
ProblemDetails (the route class below maps core errors, validation errors and auth errors to it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from citytwin.ioc.core import ldcontext
from citytwin.ioc.core.entities import LOCATION, to_document
from citytwin.ioc.core.errors import Conflict, Forbidden, Invalid, IocError, NotFound
from citytwin.ioc.core.model import ApiKey, Entity, EntityQuery, Near, Role, Subscription

from . import ngsi_render as render
from .deps import now, require
from .ngsi_render import JSON, JSONLD, NgsiError, bad_request

MAX_LIMIT = 1000
PREFIX = "/ngsi-ld/v1"
_Geometry = Literal["Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"]
_GEOMETRIES = get_args(_Geometry)
# Query parameter shapes, so the OpenAPI document says what is accepted.
_NAME_RE = r"[A-Za-z_][A-Za-z0-9_:/.#-]*"
_NAMES = rf"^{_NAME_RE}(,{_NAME_RE})*$"
_URI_RE = r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,]+"
_URIS = rf"^{_URI_RE}(,{_URI_RE})*$"
_GEOREL = r"^(near;(max|min)Distance==[0-9]+(\.[0-9]+)?|(within|contains|intersects|equals|disjoint|overlaps)(;.*)?)$"
_DATETIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:[0-9]{2})$"
_URI_PATH = rf"^{_URI_RE}$"
_NUMBER_RE = r"\s*-?[0-9]+(\.[0-9]+)?\s*"
_POINT = rf"^\[{_NUMBER_RE},{_NUMBER_RE}\]$"
_ENTITY_OPTIONS = r"^(keyValues|sysAttrs|normalized)(,(keyValues|sysAttrs|normalized))*$"
_TEMPORAL_OPTIONS = r"^(temporalValues|sysAttrs)(,(temporalValues|sysAttrs))*$"
_Format = Literal["normalized", "keyValues", "simplified"]


# -- errors as ProblemDetails -------------------------------------------------------------------------------
def classify(exc: Exception) -> tuple[int, str, str, dict[str, str]] | None:
    """(status, ProblemDetails type, detail, headers) for an error a client caused; None for a bug."""
    if isinstance(exc, NgsiError):
        return exc.status, exc.kind, exc.detail, exc.headers
    if isinstance(exc, ldcontext.ContextNotAvailable):
        return 503, "LdContextNotAvailable", str(exc), {}
    if isinstance(exc, ldcontext.ContextError):
        return 400, "BadRequestData", f"@context: {exc}", {}
    if isinstance(exc, IocError):
        detail = exc.message if not exc.field or exc.field in exc.message else f"{exc.field}: {exc.message}"
        if isinstance(exc, Invalid):
            return 400, "BadRequestData", detail, {}
        if isinstance(exc, NotFound):
            return 404, "ResourceNotFound", detail, {}
        if isinstance(exc, Conflict):
            return 409, "AlreadyExists", detail, {}
        if isinstance(exc, Forbidden):
            return 403, "PermissionDenied", detail, {}
        return 400, "BadRequestData", detail, {}
    if isinstance(exc, RequestValidationError):
        return 400, "BadRequestData", _validation_detail(exc), {}
    if isinstance(exc, HTTPException):
        kind = {401: "Unauthorized", 403: "PermissionDenied", 404: "ResourceNotFound",
                429: "TooManyRequests"}.get(exc.status_code, "InvalidRequest")
        return exc.status_code, kind, str(exc.detail), dict(exc.headers or {})
    return None


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path", "header", "body"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class NgsiRoute(APIRoute):
    """Answers every client error of an NGSI-LD route as ProblemDetails, whatever raised it."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                known = classify(exc)
                if known is None:
                    raise
                status, kind, detail, headers = known
                return render.problem(status, kind, detail, headers)

        return route


router = APIRouter(prefix=PREFIX, tags=["NGSI-LD"], route_class=NgsiRoute)


# -- OpenAPI: what the routes answer ------------------------------------------------------------------------
_PROBLEM = {"type": "object", "required": ["type", "title"],
            "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                           "status": {"type": "integer"}, "detail": {"type": "string"}}}
_ENTITY_OUT = {"type": "object", "required": ["id", "type"],
               "properties": {"id": {"type": "string"},
                              "type": {"anyOf": [{"type": "string"},
                                                 {"type": "array", "items": {"type": "string"}}]}}}
_IDS = {"type": "array", "items": {"type": "string"}}
_BATCH_RESULT = {"type": "object", "required": ["success", "errors"],
                 "properties": {"success": _IDS,
                                "errors": {"type": "array", "items": {
                                    "type": "object", "required": ["entityId", "error"],
                                    "properties": {"entityId": {"type": "string"}, "error": _PROBLEM}}}}}
_SUBSCRIPTION_OUT = {"type": "object", "required": ["id", "type", "notification"],
                     "properties": {"id": {"type": "string"}, "type": {"type": "string"},
                                    "notification": {"type": "object"}}}
_LINK_HEADER = {"Link": {"description": "the @context the body is compacted with (JSON answers)",
                         "schema": {"type": "string"}}}
_COUNT_HEADER = {"NGSILD-Results-Count": {"description": "total matches (with count=true)",
                                          "schema": {"type": "integer"}}}
_ERROR_TEXT = {400: "BadRequestData or InvalidRequest", 401: "no or unknown API key", 403: "not allowed",
               404: "ResourceNotFound", 406: "Accept allows neither JSON nor JSON-LD",
               409: "AlreadyExists", 413: "body too large", 415: "Content-Type is neither JSON nor JSON-LD",
               422: "OperationNotSupported", 429: "rate limit exceeded (Retry-After)",
               503: "LdContextNotAvailable"}


def _json(schema: dict[str, Any], ld: bool = True) -> dict[str, Any]:
    content = {JSON: {"schema": schema}}
    if ld:
        content[JSONLD] = {"schema": schema}
    return content


def _responses(*errors: int, **ok: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """Success answers (given as s201={...}) plus the listed errors, all ProblemDetails."""
    out: dict[int | str, dict[str, Any]] = {int(code[1:]): spec for code, spec in ok.items()}
    for status in (400, 401, 403, 406, 429, 503, *errors):
        schema = {"type": "object"} if status == 413 else _PROBLEM  # 413 comes from the body-size guard
        out[status] = {"description": _ERROR_TEXT[status], "content": {JSON: {"schema": schema}}}
    return out


_KNOWN_CONTEXTS = sorted(ldcontext.KNOWN_CONTEXTS)
_CONTEXT_IN = {"anyOf": [{"type": "string", "enum": _KNOWN_CONTEXTS},
                         {"type": "array", "minItems": 1, "items": {"type": "string", "enum": _KNOWN_CONTEXTS}}]}
_POSITION = {"type": "array", "minItems": 2, "maxItems": 2,
             "prefixItems": [{"type": "number", "minimum": -180, "maximum": 180},
                             {"type": "number", "minimum": -90, "maximum": 90}]}
_ATTRIBUTE_IN = {"oneOf": [
    {"type": "object", "required": ["type", "value"],
     "properties": {"type": {"const": "Property"}, "value": {"type": ["number", "string", "boolean"]},
                    "observedAt": {"type": "string", "format": "date-time"}}},
    {"type": "object", "required": ["type", "object"],
     "properties": {"type": {"const": "Relationship"},
                    "object": {"type": "string", "pattern": "^urn:ngsi-ld:[A-Za-z]+:[A-Za-z0-9_-]+$"}}},
]}
_GEO_IN = {"type": "object", "required": ["type", "value"],
           "properties": {"type": {"const": "GeoProperty"},
                          "value": {"type": "object", "required": ["type", "coordinates"],
                                    "properties": {"type": {"const": "Point"}, "coordinates": _POSITION}}}}
_NAME = "^[A-Za-z][A-Za-z0-9_]{0,40}$"


def _entity_in(ld: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": {"type": "string", "pattern": "^urn:ngsi-ld:[A-Za-z]+:[A-Za-z0-9_-]+$"},
        "type": {"type": "string", "pattern": _NAME}, "location": _GEO_IN}
    for keyword in ldcontext.CORE_KEYWORDS - {"id", "type"}:
        properties[keyword] = False  # structural keywords are not attributes
    names = "^[A-Za-z][A-Za-z0-9_]{0,40}$"
    if ld:
        properties["@context"] = _CONTEXT_IN
        names = "^(@context|[A-Za-z][A-Za-z0-9_]{0,40})$"
    return {"type": "object", "required": ["id", "type", "@context"] if ld else ["id", "type"],
            "properties": properties, "additionalProperties": _ATTRIBUTE_IN,
            "propertyNames": {"pattern": names}}


def _fragment_in(ld: bool) -> dict[str, Any]:
    schema = _entity_in(ld)
    schema["required"] = ["@context"] if ld else []
    schema["minProperties"] = 2 if ld else 1
    schema["properties"] = {**schema["properties"], "id": False, "type": False}
    return schema


def _body(json_schema: dict[str, Any], ld_schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {JSON: {"schema": json_schema},
                                                          JSONLD: {"schema": ld_schema}}}}


def _array(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "items": schema}


_SUBSCRIPTION_IN = {
    "type": "object", "required": ["type", "entities", "notification"],
    "properties": {
        "id": {"type": "string", "pattern": "^urn:ngsi-ld:Subscription:[A-Za-z0-9_-]+$"},
        "type": {"const": "Subscription"},
        "entities": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["type"], "properties": {"type": {"type": "string", "pattern": _NAME}},
            "additionalProperties": False}},
        "watchedAttributes": {"type": "array", "items": {"type": "string", "pattern": _NAME}},
        "q": {"type": "string", "minLength": 1},
        "notification": {"type": "object", "required": ["endpoint"], "properties": {
            "attributes": {"type": "array", "items": {"type": "string", "pattern": _NAME}},
            "format": {"enum": ["normalized"]},
            "endpoint": {"type": "object", "required": ["uri"], "properties": {
                "uri": {"type": "string", "format": "uri", "pattern": "^https?://[^/?#\\s]+"},
                "accept": {"enum": [JSON, JSONLD]}}}}},
        "throttling": {"type": "number", "minimum": 0, "maximum": 86400},
        "isActive": {"type": "boolean"}},
}


def _subscription_in(ld: bool) -> dict[str, Any]:
    schema = json.loads(json.dumps(_SUBSCRIPTION_IN))
    if ld:
        schema["properties"]["@context"] = _CONTEXT_IN
        schema["required"].append("@context")
    else:
        schema["not"] = {"required": ["@context"]}
    return schema


def _subscription_patch_in(ld: bool) -> dict[str, Any]:
    schema = _subscription_in(ld)
    schema["required"] = ["@context"] if ld else []
    schema["properties"].pop("id")
    schema["minProperties"] = 1
    return schema


# -- helpers -------------------------------------------------------------------------------------------------
def _ioc(request: Request) -> Any:
    return request.app.state.ioc


def _submit(request: Request, result: Any) -> None:
    """Hand a write's result on: changed entities to the notifier, its alerts to the MQTT alert publisher."""
    if result is None:
        return
    notifier = getattr(request.app.state, "notifier", None)
    if notifier is not None:
        notifier.submit(result)
    alerts = getattr(request.app.state, "alerts", None)
    if alerts is not None:
        alerts.submit_result(result)


def _owner(key: ApiKey) -> str | None:
    """The device a write is made for: a device key writes its own entities only."""
    if key.role is not Role.DEVICE:
        return None
    if not key.device_id:
        raise NgsiError(403, "PermissionDenied", "this device key is not bound to a device id")
    return key.device_id


def _check_reader(key: ApiKey, entity: Entity) -> None:
    if key.role is Role.DEVICE and entity.owner != key.device_id:
        raise NgsiError(403, "PermissionDenied", f"a device may read only its own entities, not {entity.id}")


def _check_id(entity_id: str, what: str = "entity id") -> str:
    if ":" not in entity_id or any(c.isspace() for c in entity_id):
        raise bad_request(f"{what} {entity_id[:80]!r} is not a URI (expected e.g. urn:ngsi-ld:Type:name)")
    return entity_id


def _options(options: str | None, allowed: frozenset[str]) -> set[str]:
    chosen = {o.strip() for o in (options or "").split(",") if o.strip()}
    unknown = chosen - allowed
    if unknown:
        raise bad_request(f"options: unknown {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})")
    return chosen


def _key_values(opts: set[str], format_: str | None) -> bool:
    if format_ not in (None, "normalized", "keyValues", "simplified"):
        raise bad_request(f"format: expected normalized, keyValues or simplified, got {format_!r}")
    return "keyValues" in opts or format_ in ("keyValues", "simplified")


def _expand_entity(item: Any, incoming: render.Incoming, where: str) -> dict[str, Any]:
    _, context = render.body_context(item, incoming, where)
    kind = item.get("type")
    names = isinstance(kind, str) or (isinstance(kind, list) and all(isinstance(t, str) for t in kind))
    if "type" not in item or names:
        return ldcontext.expand_entity(item, context)
    # A type that is no name: left as it is for the core to reject, naming this entity.
    return {**ldcontext.expand_entity({k: v for k, v in item.items() if k != "type"}, context), "type": kind}


def _problem_body(exc: Exception) -> dict[str, Any]:
    known = classify(exc)
    if known is None:
        raise exc
    status, kind, detail, _ = known
    return {"type": render.ERRORS + kind, "title": render._TITLES.get(kind, kind), "status": status,
            "detail": detail}


def _entity_id_of(document: Mapping[str, Any]) -> str:
    value = document.get("id")
    return value if isinstance(value, str) else ""


# -- batch operations -----------------------------------------------------------------------------------------
async def _read_batch(request: Request) -> list[dict[str, Any]]:
    incoming = await render.read(request)
    if not isinstance(incoming.body, list) or not incoming.body:
        raise bad_request("the body must be a non-empty JSON array of entities")
    if len(incoming.body) > MAX_LIMIT:
        raise bad_request(f"a batch holds at most {MAX_LIMIT} entities, got {len(incoming.body)}")
    return [_expand_entity(item, incoming, f"entity #{n}") for n, item in enumerate(incoming.body)]


def _upsert_batch(ioc: Any, docs: list[dict[str, Any]], at: datetime, owner: str | None,
                  replace: bool) -> tuple[list[Any], list[tuple[str, Exception]]]:
    """All documents in one transaction; when that fails, one by one so each error names its entity."""
    try:
        return [ioc.upsert(docs, at, owner=owner, replace=replace)], []
    except (Invalid, Forbidden, Conflict) as exc:
        if len(docs) == 1:
            return [], [(_entity_id_of(docs[0]), exc)]
    results, errors = [], []
    for doc in docs:
        try:
            results.append(ioc.upsert([doc], at, owner=owner, replace=replace))
        except (Invalid, Forbidden, Conflict) as exc:
            errors.append((_entity_id_of(doc), exc))
    return results, errors


def _create_batch(ioc: Any, docs: list[dict[str, Any]], at: datetime,
                  owner: str | None) -> tuple[list[Any], list[tuple[str, Exception]]]:
    results, errors = [], []
    for doc in docs:
        try:
            results.append(ioc.create_entity(doc, at, owner=owner))
        except (Invalid, Forbidden, Conflict) as exc:
            errors.append((_entity_id_of(doc), exc))
    return results, errors


def _batch_answer(request: Request, results: list[Any], errors: list[tuple[str, Exception]]) -> Response:
    for result in results:
        _submit(request, result)
    created = list(dict.fromkeys(i for r in results for i in r.created))
    touched = list(dict.fromkeys([*created, *(i for r in results for i in r.updated)]))
    if errors:
        body = {"success": touched,
                "errors": [{"entityId": entity_id, "error": _problem_body(exc)} for entity_id, exc in errors]}
        return JSONResponse(body, status_code=207)
    if created:
        return JSONResponse(created, status_code=201)
    return Response(status_code=204)


_WRITE = (Role.DEVICE, Role.OPERATOR)
_BATCH_OK = {"s201": {"description": "ids of the entities created", "content": {JSON: {"schema": _IDS}}},
             "s204": {"description": "all entities updated"},
             "s207": {"description": "some failed: BatchOperationResult",
                      "content": {JSON: {"schema": _BATCH_RESULT}}}}


@router.post("/entityOperations/upsert", status_code=201, response_class=Response,
             summary="Batch entity upsert", responses=_responses(413, 415, **_BATCH_OK),
             openapi_extra=_body(_array(_entity_in(False)), _array(_entity_in(True))))
async def upsert_entities(request: Request,
                          options: Literal["update", "replace"] | None = Query(
                              None, description="update (merge) or replace (default)"),
                          key: ApiKey = Depends(require(*_WRITE)), at: datetime = Depends(now)) -> Response:
    mode = {options} if options else set()
    docs = await _read_batch(request)
    owner = _owner(key)
    results, errors = await run_in_threadpool(_upsert_batch, _ioc(request), docs, at, owner, "update" not in mode)
    return _batch_answer(request, results, errors)


@router.post("/entityOperations/create", status_code=201, response_class=Response,
             summary="Batch entity creation", responses=_responses(413, 415, **_BATCH_OK),
             openapi_extra=_body(_array(_entity_in(False)), _array(_entity_in(True))))
async def create_entities(request: Request, key: ApiKey = Depends(require(*_WRITE)),
                          at: datetime = Depends(now)) -> Response:
    docs = await _read_batch(request)
    results, errors = await run_in_threadpool(_create_batch, _ioc(request), docs, at, _owner(key))
    return _batch_answer(request, results, errors)


# -- entities ------------------------------------------------------------------------------------------------
@router.post("/entities", status_code=201, response_class=Response, summary="Create entity",
             responses=_responses(409, 413, 415, s201={
                 "description": "created", "headers": {"Location": {"schema": {"type": "string"}}}}),
             openapi_extra=_body(_entity_in(False), _entity_in(True)))
async def create_entity(request: Request, key: ApiKey = Depends(require(*_WRITE)),
                        at: datetime = Depends(now)) -> Response:
    incoming = await render.read(request)
    doc = _expand_entity(incoming.body, incoming, "body")
    result = await run_in_threadpool(_ioc(request).create_entity, doc, at, owner=_owner(key))
    _submit(request, result)
    return Response(status_code=201, headers={"Location": f"{PREFIX}/entities/{doc['id']}"})


def _near(georel: str | None, geometry: str | None, coordinates: str | None,
          geoproperty: str | None) -> Near | None:
    """`georel=near;maxDistance==N` around `geometry=Point`, `coordinates=[lon,lat]`."""
    if geoproperty not in (None, "location"):
        raise NgsiError(422, "OperationNotSupported", "geoproperty: only location is indexed")
    if georel is None:
        if geometry is not None or coordinates is not None:
            raise bad_request("geometry and coordinates need georel")
        return None
    relation, *modifiers = [part.strip() for part in georel.split(";")]
    if relation in ("within", "contains", "intersects", "equals", "disjoint", "overlaps"):
        raise NgsiError(422, "OperationNotSupported", f"georel: only near;maxDistance==<metres> is supported")
    if relation != "near" or len(modifiers) != 1:
        raise bad_request(f"georel: expected near;maxDistance==<metres>, got {georel!r}")
    name, sep, number = modifiers[0].partition("==")
    if name == "minDistance" and sep:
        raise NgsiError(422, "OperationNotSupported", "georel: minDistance is not supported, use maxDistance")
    try:
        distance = float(number) if name == "maxDistance" and sep else -1.0
    except ValueError:
        distance = -1.0
    if not 0 <= distance < float("inf"):
        raise bad_request(f"georel: expected near;maxDistance==<metres ≥ 0>, got {georel!r}")
    if geometry != "Point":
        if geometry in _GEOMETRIES:
            raise NgsiError(422, "OperationNotSupported", "geometry: near works around a Point only")
        raise bad_request(f"geometry: expected Point, got {geometry!r}")
    lon, lat = _coordinates(coordinates)
    return Near(lon=lon, lat=lat, max_distance_m=distance)


def _coordinates(text: str | None) -> tuple[float, float]:
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        value = None
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
    if not ok or not (-180 <= value[0] <= 180 and -90 <= value[1] <= 90):
        raise bad_request(f"coordinates: expected [longitude, latitude] within ±180/±90, got {text!r}")
    return float(value[0]), float(value[1])


def _query(ioc: Any, query: EntityQuery, q: str | None, attrs: tuple[str, ...]) -> tuple[list[Entity], int]:
    # `attrs` also selects: an entity matches when it has at least one of them (q's existence test).
    wanted = [a for a in attrs if a != LOCATION]
    if wanted and len(wanted) == len(attrs):
        having = "|".join(wanted)
        q = f"({q});({having})" if q else having
    return ioc.query_entities(query, q=q)


@router.get("/entities", summary="Query entities",
            responses=_responses(422, s200={"description": "matching entities", "headers": {
                **_LINK_HEADER, **_COUNT_HEADER}, "content": _json({"type": "array", "items": _ENTITY_OUT})}))
async def query_entities(
        request: Request,
        type_: str | None = Query(None, alias="type", pattern=_NAMES, description="comma-separated entity types"),
        id_: str | None = Query(None, alias="id", pattern=_URIS, description="comma-separated entity ids"),
        attrs: str | None = Query(None, pattern=_NAMES,
                                  description="comma-separated attribute names (select and project)"),
        q: str | None = Query(None, description="NGSI-LD query, e.g. waterLevel>0.4;floodRisk==\"high\""),
        georel: str | None = Query(None, pattern=_GEOREL, description="near;maxDistance==<metres>"),
        geometry: _Geometry | None = Query(None, description="Point (the only one near works with)"),
        coordinates: str | None = Query(None, pattern=_POINT, description="[longitude,latitude]"),
        geoproperty: Literal["location"] | None = Query(None, description="location (the only one indexed)"),
        limit: int = Query(20, ge=0, le=MAX_LIMIT), offset: int = Query(0, ge=0, le=10_000_000),
        count: bool = Query(False),
        options: str | None = Query(None, pattern=_ENTITY_OPTIONS, description="keyValues, sysAttrs"),
        format_: _Format | None = Query(None, alias="format", description="normalized, keyValues or simplified"),
        key: ApiKey = Depends(require(Role.OPERATOR))) -> Response:
    link, context = render.context_of(request)
    out = render.outgoing(request, link, context)
    opts = _options(options, frozenset({"keyValues", "sysAttrs", "normalized"}))
    key_values = _key_values(opts, format_)
    types = render.expand_names(type_, context, "type")
    ids = tuple(_check_id(i) for i in render.expand_names(id_, ldcontext.Context({}), "id")) if id_ else ()
    names = render.expand_names(attrs, context, "attrs")
    near = _near(georel, geometry, coordinates, geoproperty)
    expanded_q = render.expand_q(q, context)
    if not (types or ids or names or expanded_q or near):
        raise bad_request("at least one of type, id, attrs, q or georel is required")
    if limit == 0 and not count:
        raise bad_request("limit=0 is only allowed with count=true")
    query = EntityQuery(ids=ids, types=types, near=near, limit=limit, offset=offset)
    entities, total = await run_in_threadpool(_query, _ioc(request), query, expanded_q, names)
    sys_attrs = "sysAttrs" in opts
    body = [render.render_entity(to_document(e, sys_attrs=sys_attrs), context, names, key_values)
            for e in entities]
    return out.response(body, headers={"NGSILD-Results-Count": str(total)} if count else None)


@router.get("/entities/{entityId}", summary="Retrieve entity",
            responses=_responses(404, s200={"description": "the entity", "headers": _LINK_HEADER,
                                            "content": _json(_ENTITY_OUT)}))
async def get_entity(request: Request, entityId: str = Path(pattern=_URI_PATH),
                     attrs: str | None = Query(None, pattern=_NAMES, description="attribute names to show"),
                     options: str | None = Query(None, pattern=_ENTITY_OPTIONS, description="keyValues, sysAttrs"),
                     format_: _Format | None = Query(None, alias="format"),
                     key: ApiKey = Depends(require(Role.OPERATOR, Role.DEVICE))) -> Response:
    link, context = render.context_of(request)
    out = render.outgoing(request, link, context)
    opts = _options(options, frozenset({"keyValues", "sysAttrs", "normalized"}))
    key_values = _key_values(opts, format_)
    names = render.expand_names(attrs, context, "attrs")
    entity = await run_in_threadpool(_ioc(request).get_entity, _check_id(entityId))
    _check_reader(key, entity)
    document = to_document(entity, sys_attrs="sysAttrs" in opts)
    return out.response(render.render_entity(document, context, names, key_values))


@router.patch("/entities/{entityId}/attrs", status_code=204, response_class=Response,
              summary="Update entity attributes",
              responses=_responses(404, 413, 415, s204={"description": "updated"}),
              openapi_extra=_body(_fragment_in(False), _fragment_in(True)))
async def update_attrs(request: Request, entityId: str = Path(pattern=_URI_PATH),
                       key: ApiKey = Depends(require(*_WRITE)),
                       at: datetime = Depends(now)) -> Response:
    incoming = await render.read(request)
    _check_id(entityId)
    fragment = _expand_entity(incoming.body, incoming, "body")
    attrs = {k: v for k, v in fragment.items() if k not in ("id", "type")}
    if not attrs:
        raise bad_request("body: no attributes to update")
    result = await run_in_threadpool(_ioc(request).update_attrs, entityId, attrs, at, owner=_owner(key))
    _submit(request, result)
    return Response(status_code=204)


@router.delete("/entities/{entityId}", status_code=204, response_class=Response, summary="Delete entity",
               responses=_responses(404, s204={"description": "deleted"}))
async def delete_entity(request: Request, entityId: str = Path(pattern=_URI_PATH),
                        key: ApiKey = Depends(require(*_WRITE))) -> Response:
    await run_in_threadpool(_ioc(request).delete_entity, _check_id(entityId), owner=_owner(key))
    return Response(status_code=204)


# -- temporal ------------------------------------------------------------------------------------------------
def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{name}: expected an ISO 8601 date-time, got {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise bad_request(f"{name}: the date-time needs a time zone (e.g. Z)")
    return moment


def _time_window(timerel: str | None, time_at: str | None,
                 end_time_at: str | None) -> tuple[datetime | None, datetime | None]:
    start, end = _time(time_at, "timeAt"), _time(end_time_at, "endTimeAt")
    if timerel is None:
        if start or end:
            raise bad_request("timeAt and endTimeAt need timerel")
        return None, None
    if start is None:
        raise bad_request("timerel needs timeAt")
    if timerel == "before":
        return None, start
    if timerel == "after":
        return start, None
    if timerel == "between":
        if end is None or end < start:
            raise bad_request("timerel=between needs endTimeAt at or after timeAt")
        return start, end
    raise bad_request(f"timerel: expected before, after or between, got {timerel!r}")


@router.get("/temporal/entities/{entityId}", summary="Retrieve temporal evolution of an entity",
            responses=_responses(404, s200={"description": "the entity's history (temporal representation)",
                                            "headers": _LINK_HEADER, "content": _json(_ENTITY_OUT)}))
async def temporal_entity(request: Request, entityId: str = Path(pattern=_URI_PATH),
                          attrs: str | None = Query(None, pattern=_NAMES, description="attribute names"),
                          timerel: Literal["before", "after", "between"] | None = Query(None),
                          timeAt: str | None = Query(None, pattern=_DATETIME),
                          endTimeAt: str | None = Query(None, pattern=_DATETIME),
                          lastN: int | None = Query(None, ge=1, le=MAX_LIMIT),
                          options: str | None = Query(None, pattern=_TEMPORAL_OPTIONS, description="temporalValues"),
                          key: ApiKey = Depends(require(Role.OPERATOR, Role.DEVICE))) -> Response:
    link, context = render.context_of(request)
    out = render.outgoing(request, link, context)
    opts = _options(options, frozenset({"temporalValues", "sysAttrs"}))
    since, until = _time_window(timerel, timeAt, endTimeAt)
    names = render.expand_names(attrs, context, "attrs")
    ioc = _ioc(request)
    entity = await run_in_threadpool(ioc.get_entity, _check_id(entityId))
    _check_reader(key, entity)
    history = []
    for name in names or (None,):
        history += await run_in_threadpool(ioc.entity_history, entityId, name, since, until, MAX_LIMIT)
    body = render.temporal_entity(entity.id, entity.type, history, context,
                                  temporal_values="temporalValues" in opts, last_n=lastN)
    return out.response(body)


# -- subscriptions --------------------------------------------------------------------------------------------
def _parse_subscription(item: Mapping[str, Any], context: ldcontext.Context, raw_context: Any,
                        sub_id: str) -> Subscription:
    """A Subscription from its NGSI-LD JSON, names expanded."""
    if item.get("type") != "Subscription":
        raise bad_request("type: a subscription's type must be \"Subscription\"")
    for unsupported in ("timeInterval", "geoQ", "csf", "scopeQ", "temporalQ", "lang"):
        if unsupported in item:
            raise NgsiError(422, "OperationNotSupported", f"{unsupported}: not supported by this IOC")
    entities = item.get("entities", [])
    if not isinstance(entities, list) or not all(isinstance(e, Mapping) for e in entities):
        raise bad_request("entities: expected an array of {\"type\": …} objects")
    types = []
    for selector in entities:
        if "id" in selector or "idPattern" in selector:
            raise NgsiError(422, "OperationNotSupported", "entities: only selection by type is supported")
        if not isinstance(selector.get("type"), str) or not selector["type"]:
            raise bad_request("entities: each selector needs a \"type\"")
        types.append(context.expand(selector["type"]))
    watched = _names(item.get("watchedAttributes", []), context, "watchedAttributes")
    if not types and not watched:
        raise bad_request("a subscription needs entities or watchedAttributes")
    q = item.get("q")
    if q is not None and not isinstance(q, str):
        raise bad_request("q: expected a string")
    notification = item.get("notification")
    if not isinstance(notification, Mapping):
        raise bad_request("notification: expected an object with an endpoint")
    fmt = notification.get("format", "normalized")
    if not isinstance(fmt, str) or fmt not in ("normalized", "keyValues", "concise", "simplified"):
        raise bad_request("notification.format: expected normalized")
    if fmt != "normalized":
        raise NgsiError(422, "OperationNotSupported", "notification.format: only normalized is supported")
    endpoint = notification.get("endpoint")
    if not isinstance(endpoint, Mapping) or not isinstance(endpoint.get("uri"), str):
        raise bad_request("notification.endpoint.uri: expected the URL to notify")
    uri = endpoint["uri"]
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        if parts.scheme in ("mqtt", "mqtts"):
            raise NgsiError(422, "OperationNotSupported", "notification.endpoint.uri: only HTTP endpoints")
        raise bad_request(f"notification.endpoint.uri: expected an http(s) URL, got {uri[:80]!r}")
    accept = endpoint.get("accept", JSON)
    if accept not in (JSON, JSONLD):
        raise bad_request(f"notification.endpoint.accept: expected {JSON} or {JSONLD}")
    throttling = item.get("throttling", 0)
    if isinstance(throttling, bool) or not isinstance(throttling, (int, float)) or not 0 <= throttling <= 86400:
        raise bad_request("throttling: expected seconds between 0 and 86400")
    active = item.get("isActive", True)
    if not isinstance(active, bool):
        raise bad_request("isActive: expected true or false")
    return Subscription(
        id=sub_id, entity_types=tuple(types), endpoint=uri, watched_attrs=watched,
        notify_attrs=_names(notification.get("attributes", []), context, "notification.attributes"),
        q=render.expand_q(q, context), context=raw_context, accept=accept, throttling_s=float(throttling),
        active=active)


def _names(value: Any, context: ldcontext.Context, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise bad_request(f"{where}: expected an array of attribute names")
    return ldcontext.expand_names(value, context)


def subscription_json(sub: Subscription, context: ldcontext.Context) -> dict[str, Any]:
    """A Subscription as NGSI-LD shows it, compacted."""
    failed = sub.last_failure is not None and (sub.last_notification is None
                                               or sub.last_failure >= sub.last_notification)
    notification: dict[str, Any] = {"format": "normalized",
                                     "endpoint": {"uri": sub.endpoint, "accept": sub.accept},
                                     "status": "failed" if failed else "ok", "timesSent": sub.times_sent}
    if sub.notify_attrs:
        notification["attributes"] = [context.compact(a) for a in sub.notify_attrs]
    if sub.last_notification:
        notification["lastNotification"] = render.iso(sub.last_notification)
    if sub.last_failure:
        notification["lastFailure"] = render.iso(sub.last_failure)
    out: dict[str, Any] = {"id": sub.id, "type": "Subscription"}
    if sub.entity_types:
        out["entities"] = [{"type": context.compact(t)} for t in sub.entity_types]
    if sub.watched_attrs:
        out["watchedAttributes"] = [context.compact(a) for a in sub.watched_attrs]
    if sub.q:
        out["q"] = render.compact_q(sub.q, context)
    out["notification"] = notification
    if sub.throttling_s:
        out["throttling"] = sub.throttling_s
    out["isActive"] = sub.active
    out["status"] = "active" if sub.active else "paused"
    return out


async def _read_subscription(request: Request) -> tuple[dict[str, Any], Any, ldcontext.Context]:
    incoming = await render.read(request)
    raw, context = render.body_context(incoming.body, incoming, "body")
    body = {k: v for k, v in incoming.body.items() if k != "@context"}
    return body, raw, context


@router.post("/subscriptions", status_code=201, response_class=Response, summary="Create subscription",
             responses=_responses(409, 413, 415, 422, s201={
                 "description": "created", "headers": {"Location": {"schema": {"type": "string"}}}}),
             openapi_extra=_body(_subscription_in(False), _subscription_in(True)))
async def create_subscription(request: Request, key: ApiKey = Depends(require(Role.OPERATOR)),
                              at: datetime = Depends(now)) -> Response:
    body, raw, context = await _read_subscription(request)
    sub_id = body.get("id", f"urn:ngsi-ld:Subscription:{uuid.uuid4().hex}")
    if not isinstance(sub_id, str):
        raise bad_request("id: expected a URI")
    sub = _parse_subscription(body, context, raw, _check_id(sub_id, "subscription id"))
    sub.created_at = at
    await run_in_threadpool(_ioc(request).subscribe, sub)
    return Response(status_code=201, headers={"Location": f"{PREFIX}/subscriptions/{sub_id}"})


@router.get("/subscriptions", summary="Query subscriptions",
            responses=_responses(s200={"description": "subscriptions", "headers": {
                **_LINK_HEADER, **_COUNT_HEADER}, "content": _json({"type": "array", "items": _SUBSCRIPTION_OUT})}))
async def list_subscriptions(request: Request, limit: int = Query(20, ge=0, le=MAX_LIMIT),
                             offset: int = Query(0, ge=0, le=10_000_000), count: bool = Query(False),
                             key: ApiKey = Depends(require(Role.OPERATOR))) -> Response:
    link, context = render.context_of(request)
    out = render.outgoing(request, link, context)
    if limit == 0 and not count:
        raise bad_request("limit=0 is only allowed with count=true")
    subs = await run_in_threadpool(_ioc(request).subscriptions)
    page = [subscription_json(s, context) for s in subs[offset:offset + limit]]
    return out.response(page, headers={"NGSILD-Results-Count": str(len(subs))} if count else None)


@router.get("/subscriptions/{subscriptionId}", summary="Retrieve subscription",
            responses=_responses(404, s200={"description": "the subscription", "headers": _LINK_HEADER,
                                            "content": _json(_SUBSCRIPTION_OUT)}))
async def get_subscription(request: Request, subscriptionId: str = Path(pattern=_URI_PATH),
                           key: ApiKey = Depends(require(Role.OPERATOR))) -> Response:
    link, context = render.context_of(request)
    out = render.outgoing(request, link, context)
    sub = await run_in_threadpool(_ioc(request).subscription, _check_id(subscriptionId, "subscription id"))
    return out.response(subscription_json(sub, context))


def _patch_subscription(ioc: Any, sub_id: str, fragment: dict[str, Any], context: ldcontext.Context) -> None:
    sub = ioc.subscription(sub_id)
    merged = subscription_json(sub, context)
    for name, value in fragment.items():
        if name == "notification" and isinstance(value, Mapping):
            merged["notification"] = {**merged["notification"], **value}
        else:
            merged[name] = value
    updated = _parse_subscription(merged, context, sub.context, sub.id)
    for name in ("created_at", "times_sent", "last_notification", "last_failure"):
        setattr(updated, name, getattr(sub, name))
    ioc.update_subscription(updated)


@router.patch("/subscriptions/{subscriptionId}", status_code=204, response_class=Response,
              summary="Update subscription", responses=_responses(404, 413, 415, 422, s204={"description": "updated"}),
              openapi_extra=_body(_subscription_patch_in(False), _subscription_patch_in(True)))
async def update_subscription(request: Request, subscriptionId: str = Path(pattern=_URI_PATH),
                              key: ApiKey = Depends(require(Role.OPERATOR))) -> Response:
    body, _, context = await _read_subscription(request)
    if "id" in body and body["id"] != subscriptionId:
        raise bad_request("id: a subscription's id cannot change")
    body.pop("id", None)
    if not body:
        raise bad_request("body: nothing to update")
    await run_in_threadpool(_patch_subscription, _ioc(request), _check_id(subscriptionId, "subscription id"),
                            body, context)
    return Response(status_code=204)


@router.delete("/subscriptions/{subscriptionId}", status_code=204, response_class=Response,
               summary="Delete subscription", responses=_responses(404, s204={"description": "deleted"}))
async def delete_subscription(request: Request, subscriptionId: str = Path(pattern=_URI_PATH),
                              key: ApiKey = Depends(require(Role.OPERATOR))) -> Response:
    await run_in_threadpool(_ioc(request).unsubscribe, _check_id(subscriptionId, "subscription id"))
    return Response(status_code=204)


# -- 405 with the right Allow header --------------------------------------------------------------------------
def _answer_other_methods() -> None:
    """Starlette answers a wrong method with the Allow of the first route on that path only; answer it
    here with every method the path has."""
    methods: dict[str, set[str]] = {}
    for route in router.routes:
        methods.setdefault(route.path, set()).update(route.methods)
    for path, allowed in methods.items():
        allow = ", ".join(sorted(allowed))

        async def not_allowed(request: Request, allow: str = allow) -> Response:
            return render.problem(405, "InvalidRequest", f"{request.method} is not allowed here (allowed: {allow})",
                                  {"Allow": allow})

        others = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        router.add_api_route(path.removeprefix(PREFIX), not_allowed, include_in_schema=False,
                             methods=[m for m in others if m not in allowed])


_answer_other_methods()
