"""The FastAPI application: lifespan (store, rule ticks, notifier, MQTT ingestion and alerts), routers, errors,
access log."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core import IOC
from ..core.errors import Conflict, Forbidden, Invalid, IocError, NotFound
from ..core.ldcontext import ContextError, ContextNotAvailable
from ..storage import open_store
from . import admin, dashboard, ngsild, open311, open311_xml, operator
from .alert_publish import AlertPublisher
from .deps import KeyCache, RateLimiter
from .mqtt_ingest import MqttIngest
from .notify import Notifier
from .settings import Settings

log = logging.getLogger("citytwin.ioc")
access_log = logging.getLogger("citytwin.ioc.access")

VERSION = "0.1.0"
NGSI_ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
# The NGSI-LD error type for each status (ETSI GS CIM 009 §5.5.2, and the names ngsild.py uses for the
# statuses the spec leaves unnamed). ngsild's own routes answer their errors themselves; this covers the
# rest of /ngsi-ld/ (unknown paths, methods, oversized bodies).
NGSI_ERROR_TYPES = {400: "BadRequestData", 401: "Unauthorized", 403: "PermissionDenied", 404: "ResourceNotFound",
                    409: "AlreadyExists", 413: "InvalidRequest", 415: "InvalidRequest", 429: "TooManyRequests",
                    503: "LdContextNotAvailable", 500: "InternalError"}
CORE_STATUS: tuple[tuple[type[IocError], int], ...] = (
    (NotFound, 404), (Conflict, 409), (Forbidden, 403), (Invalid, 400), (IocError, 400))
ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 415, 429)


# -- errors, in the shape each route family speaks ----------------------------------------------------------
def family(path: str) -> str:
    """"open311", "ngsild" or "api": which error format a path answers in."""
    if path.startswith("/ngsi-ld/"):
        return "ngsild"
    head = path.lstrip("/").split("/", 1)[0].split(".", 1)[0]
    return "open311" if head in open311.ROOTS else "api"


def error_response(path: str, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    kind = family(path)
    if kind == "open311":
        items = [{"code": status, "description": message}]
        if path.endswith(".xml"):
            return Response(open311_xml.errors(items), status, headers, media_type=open311.XML_TYPE)
        return JSONResponse(items, status, headers)
    if kind == "ngsild":
        title = NGSI_ERROR_TYPES.get(status, "InvalidRequest" if status < 500 else "InternalError")
        body = {"type": NGSI_ERRORS + title, "title": title, "status": status, "detail": message}
        return JSONResponse(body, status, headers)
    return JSONResponse({"detail": message}, status, headers)


def core_status(err: IocError) -> int:
    return next(status for cls, status in CORE_STATUS if isinstance(err, cls))


def describe(err: IocError) -> str:
    """The message, naming the field when the message does not already."""
    return f"{err.field}: {err.message}" if err.field and err.field not in err.message else err.message


def validation_message(err: RequestValidationError) -> str:
    """One line per problem: `where.field: what was expected`."""
    lines = []
    for problem in err.errors():
        loc = [str(part) for part in problem.get("loc", ())]
        where = ".".join(loc[1:]) or (loc[0] if loc else "request")
        source = f" ({loc[0]})" if loc and loc[0] in ("query", "path", "header") else ""
        lines.append(f"{where}{source}: {problem.get('msg', 'invalid')}")
    return "; ".join(lines) or "invalid request"


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's 405 names only the first route's."""
    methods = []
    for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            methods.append(method)
    return methods


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(IocError)
    async def _core(request: Request, err: IocError) -> Response:
        return error_response(request.url.path, core_status(err), describe(err))

    @app.exception_handler(ContextError)
    async def _context(request: Request, err: ContextError) -> Response:
        status = 503 if isinstance(err, ContextNotAvailable) else 400
        return error_response(request.url.path, status, str(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> Response:
        headers = dict(getattr(err, "headers", None) or {})
        if err.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(request.url.path, err.status_code, str(err.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> Response:
        # Bad input is a 400 everywhere (Open311 and NGSI-LD say so; one rule is simpler for clients).
        return error_response(request.url.path, 400, validation_message(err))


# -- body size ------------------------------------------------------------------------------------------------
class BodyLimit:
    """413 for a body over `max_bytes`: at once when Content-Length says so, else as soon as the bytes read
    pass it (chunked bodies). Starlette's own limit answers in plain text whatever the route; this one
    answers in the route family's error format, as the OpenAPI document says."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"the body may be at most {self.max_bytes} bytes"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(scope["path"], 413, too_large)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # An HTTPException reaches the app's handlers, which answer in the route's format.
                raise StarletteHTTPException(413, too_large)
            return message

        await self.app(scope, counted, send)


# -- access log ---------------------------------------------------------------------------------------------
def redacted_query(query: bytes) -> str:
    """The query string with any api_key value hidden: keys never reach a log."""
    if not query:
        return ""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    return "?" + urlencode([(name, "***" if name.lower() in ("api_key", "apikey") else value)
                            for name, value in pairs])


class AccessLog:
    """method, path (api_key redacted), status, duration — and never a header, so never a key."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            millis = (time.perf_counter() - started) * 1000
            client = (scope.get("client") or ("-",))[0]
            access_log.info("%s %s %s%s %d %.1fms", client, scope["method"], scope["path"],
                            redacted_query(scope.get("query_string", b"")), status, millis)


# -- lifespan -----------------------------------------------------------------------------------------------
async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


async def _tick_forever(ioc: IOC, every_s: float, alerts: AlertPublisher | None = None) -> None:
    """Missing-data and auto-clear rules need time to pass, not a message: run them on a timer."""
    while True:
        await asyncio.sleep(every_s)
        try:
            changed = await asyncio.to_thread(ioc.tick, datetime.now(UTC))
        except Exception:  # a failed tick must not stop the next one
            log.exception("rule tick failed")
            continue
        if alerts is not None:
            alerts.submit(changed)


def _hand_on(*sinks: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
    """One callback for MqttIngest's results that gives each to every sink (notifier, alert publisher)."""
    live = [sink for sink in sinks if sink is not None]
    if not live:
        return None

    def hand_on(result: Any) -> None:
        for sink in live:
            sink(result)

    return hand_on


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    store = await asyncio.to_thread(open_store, settings.db_url)
    ioc = IOC(store)
    app.state.ioc = ioc
    app.state.notifier = None
    app.state.mqtt = None
    # With a broker, every alert raised or cleared also goes out on MQTT (alert_publish.py).
    alerts = app.state.alerts = AlertPublisher(settings.mqtt_url) if settings.mqtt_url else None
    tick = asyncio.create_task(_tick_forever(ioc, settings.tick_s, alerts))
    try:
        if alerts is not None:
            alerts.start()
        if settings.notify:
            app.state.notifier = Notifier(ioc)
            await _maybe_await(app.state.notifier.start())
        if settings.mqtt_url:
            on_result = _hand_on(app.state.notifier.submit if app.state.notifier else None,
                                 alerts.submit_result if alerts else None)
            app.state.mqtt = MqttIngest(ioc, settings.mqtt_url, on_result)
            await asyncio.to_thread(app.state.mqtt.start)
        yield
    finally:
        tick.cancel()
        with suppress(asyncio.CancelledError):
            await tick
        if app.state.mqtt is not None:
            await asyncio.to_thread(app.state.mqtt.stop)
        if alerts is not None:  # after ingestion stops, so the alerts of its last messages still go out
            await asyncio.to_thread(alerts.stop)
        if app.state.notifier is not None:
            await _maybe_await(app.state.notifier.stop())
        await asyncio.to_thread(store.close)


# -- the app ------------------------------------------------------------------------------------------------
class Health(BaseModel):
    status: str
    db: str
    mqtt: str


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="citytwin reference IOC", version=VERSION, lifespan=lifespan,
        description="Open311 GeoReport v2, an NGSI-LD subset, the operator and admin APIs and the dashboard "
                    "of the reference Intelligent Operations Center.")
    app.state.settings = settings
    app.state.key_cache = KeyCache(settings.key_cache_s)
    app.state.rate_limiter = RateLimiter()
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog)

    @app.get("/health", response_model=Health, tags=["health"])
    def health(request: Request) -> Health:
        mqtt = request.app.state.mqtt
        state = "off" if mqtt is None else "connected" if mqtt.connected else "disconnected"
        return Health(status="ok", db=settings.db_kind(), mqtt=state)

    app.include_router(open311.router)
    app.include_router(operator.router)
    app.include_router(admin.router)
    if ngsild is not None:
        app.include_router(ngsild.router)
    if dashboard is not None:
        app.include_router(dashboard.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


# -- OpenAPI: the error answers every operation may give ------------------------------------------------------
def _error_content(kind: str, xml: bool) -> dict[str, Any]:
    if xml:
        return {open311.XML_TYPE: {"schema": {"type": "string"}}}
    if kind == "open311":
        return {"application/json": {"schema": {"$ref": "#/components/schemas/Open311Errors"}}}
    if kind == "ngsild":
        return {"application/json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    return {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}}


_ERROR_SCHEMAS = {
    "Open311Errors": {"type": "array", "items": {
        "type": "object", "required": ["code", "description"],
        "properties": {"code": {"type": "integer"}, "description": {"type": "string"}}}},
    "ProblemDetails": {"type": "object", "required": ["type"], "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}}},
    "ErrorDetail": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with 422 replaced by the 400 this server answers and the other 4xx declared
    in each family's error shape."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_ERROR_SCHEMAS)
    for path, operations in schema.get("paths", {}).items():
        kind = family(path)
        for method, operation in operations.items():
            if kind == "open311" and method == "get" and operation.get("security"):
                operation["security"].append({})  # public reads: a key is optional
            responses = operation.setdefault("responses", {})
            if "HTTPValidationError" in str(responses.get("422", "")):
                responses.pop("422")  # FastAPI's own; NGSI-LD's OperationNotSupported 422 stays
            for status in ERROR_STATUSES:
                responses.setdefault(str(status), {
                    "description": _REASONS[status],
                    "content": _error_content(kind, path.endswith(".xml"))})
    app.openapi_schema = schema
    return schema


_REASONS = {400: "Bad request: a parameter or the body is invalid", 401: "No API key, or an unknown or "
            "revoked one", 403: "The key's role may not do this", 404: "Not found", 409: "Conflict with the "
            "current state", 413: "Body too large", 415: "Unsupported Content-Type", 429: "Rate limit "
            "exceeded (see Retry-After)"}
