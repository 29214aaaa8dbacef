"""NGSI-LD on the wire: content negotiation, `@context` rules, ProblemDetails, and how entities are shown.

The routes in `ngsild` stay thin: they read a body or a query with the helpers here, call the core with
expanded documents, and render what it returns compacted with the caller's own context
(ETSI GS CIM 009 §6.3: JSON bodies take their context from the Link header, JSON-LD bodies carry it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from citytwin.ioc.core import ldcontext
from citytwin.ioc.core.ldcontext import CORE_CONTEXT, Context

JSON = "application/json"
JSONLD = "application/ld+json"
LINK_REL = "http://www.w3.org/ns/json-ld#context"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
SYS_ATTRS = ("createdAt", "modifiedAt")


class NgsiError(Exception):
    """An error answered as an NGSI-LD ProblemDetails."""

    def __init__(self, status: int, kind: str, detail: str, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})


def bad_request(detail: str) -> NgsiError:
    return NgsiError(400, "BadRequestData", detail)


def problem(status: int, kind: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = {"type": ERRORS + kind, "title": _TITLES.get(kind, kind), "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


_TITLES = {
    "BadRequestData": "Bad request data",
    "InvalidRequest": "Invalid request",
    "ResourceNotFound": "Resource not found",
    "AlreadyExists": "Already exists",
    "OperationNotSupported": "Operation not supported",
    "LdContextNotAvailable": "@context not available",
    "NotAcceptable": "Not acceptable",
    "UnsupportedMediaType": "Unsupported media type",
    "Unauthorized": "Unauthorized",
    "PermissionDenied": "Permission denied",
    "TooManyRequests": "Too many requests",
}


# -- @context on the way in ---------------------------------------------------------------------------
_LINK_PART = re.compile(r'\s*<([^>]*)>\s*((?:;\s*[A-Za-z]+\s*=\s*(?:"[^"]*"|[^;,]*)\s*)*)')
_PARAM = re.compile(r';\s*([A-Za-z]+)\s*=\s*("[^"]*"|[^;,]*)')


def link_context(header: str | None) -> str | None:
    """The context URL of a `Link: <url>; rel="http://www.w3.org/ns/json-ld#context"` header, if any."""
    if not header:
        return None
    pos = 0
    while pos < len(header):
        match = _LINK_PART.match(header, pos)
        if not match:
            raise bad_request(f"Link header is malformed: expected <url>; rel=\"{LINK_REL}\"")
        params = {k.lower(): v.strip().strip('"') for k, v in _PARAM.findall(match.group(2))}
        if params.get("rel") == LINK_REL:
            url = match.group(1).strip()
            if not _REMOTE.match(url):
                raise bad_request(f"Link header: the @context link {url[:80]!r} is not an http(s) URL")
            return url
        pos = match.end()
        if pos < len(header):
            if header[pos] != ",":
                raise bad_request("Link header is malformed: links must be separated by commas")
            pos += 1
    return None


@dataclass(frozen=True)
class Incoming:
    """A parsed request: its body (if any), whether it is JSON-LD, and the context to expand names with."""

    body: Any
    ld: bool
    link: str | None  # the Link header's context URL (JSON bodies and bodiless requests)
    context: Context  # the Link context, or the core one


def context_of(request: Request) -> tuple[str | None, Context]:
    """The Link header's context (resolved), for requests without a body."""
    url = link_context(request.headers.get("link"))
    return url, ldcontext.resolve(url)


async def read(request: Request) -> Incoming:
    """Read a JSON or JSON-LD body and check the @context rules that do not depend on its shape."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in (JSON, JSONLD):
        raise NgsiError(415, "UnsupportedMediaType",
                        f"Content-Type must be {JSON} or {JSONLD}, got {media or 'none'!r}")
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    link = link_context(request.headers.get("link"))
    if media == JSONLD and link is not None:
        raise bad_request(f"a {JSONLD} body carries its @context in the body; a Link header is not allowed")
    return Incoming(body, media == JSONLD, link, ldcontext.resolve(link))


def body_context(item: Any, incoming: Incoming, where: str = "body") -> tuple[Any, Context]:
    """The raw and resolved @context that applies to one JSON object of the body."""
    if not isinstance(item, Mapping):
        raise bad_request(f"{where}: expected a JSON object")
    if incoming.ld:
        if "@context" not in item:
            raise bad_request(f"{where}: a {JSONLD} body must carry @context")
        raw = item["@context"]
        return raw, _resolve_cached(raw)
    if "@context" in item:
        raise bad_request(f"{where}: a {JSON} body must not carry @context (send it in a Link header "
                          f"or use {JSONLD})")
    return incoming.link, incoming.context


_CACHE: dict[str, Context] = {}
_REMOTE = re.compile(r"^https?://[^\s/?#]+")


def _resolve_cached(raw: Any) -> Context:
    # Batches from one device repeat the same context in every entity: resolve it once.
    try:
        key = json.dumps(raw, sort_keys=True)
    except (TypeError, ValueError):
        raise ldcontext.ContextError("@context is not valid JSON-LD") from None
    context = _CACHE.get(key)
    if context is None:
        for item in raw if isinstance(raw, list) else [raw]:
            # Only an http(s) URL can be retrieved at all: anything else is malformed, not unavailable.
            if isinstance(item, str) and not _REMOTE.match(item):
                raise bad_request(f"@context: {item[:80]!r} is neither an http(s) URL nor an inline context")
        context = ldcontext.resolve(raw)
        if len(_CACHE) > 256:
            _CACHE.clear()
        _CACHE[key] = context
    return context


def expand_names(csv: str | None, context: Context, what: str) -> tuple[str, ...]:
    """A comma-separated list of type or attribute names, expanded."""
    if csv is None:
        return ()
    names = [name.strip() for name in csv.split(",")]
    if not all(names):
        raise bad_request(f"{what}: expected a comma-separated list of names, got {csv!r}")
    return ldcontext.expand_names(names, context)


_Q_TERM = re.compile(r"^(\s*)([^\s=!<>~]+)(\s*)(==|!=|>=|<=|>|<|~=|!~=)?(.*)$", re.S)


def expand_q(q: str | None, context: Context) -> str | None:
    """The NGSI-LD query with its attribute names expanded (values and quoted strings left as they are)."""
    return _map_q(q, lambda name: _expand_path(name, context))


def compact_q(q: str | None, context: Context) -> str | None:
    """An expanded query with its attribute names compacted again (to show a subscription)."""
    return _map_q(q, context.compact)


def _map_q(q: str | None, rename) -> str | None:
    if q is None:
        return None
    if not q.strip():
        raise bad_request("q: empty query")
    out: list[str] = []
    for piece in _split_q(q):
        if piece in (";", "|", "(", ")"):
            out.append(piece)
            continue
        match = _Q_TERM.match(piece)
        if not match or not match.group(2):
            raise bad_request(f"q: cannot read the term {piece!r} (expected attr<op>value)")
        lead, name, space, op, rest = match.groups()
        out.append(f"{lead}{rename(name)}{space}{op or ''}{rest}")
    return "".join(out)


def _expand_path(name: str, context: Context) -> str:
    # `attr.sub` and `attr[key]` address parts of an attribute: only the attribute name is a term.
    # An absolute IRI has dots and colons of its own and is already expanded.
    if "://" in name or name.startswith("urn:"):
        return name
    match = re.match(r"^([^.\[]+)(.*)$", name)
    head, tail = (match.group(1), match.group(2)) if match else (name, "")
    return context.expand(head) + tail


def _split_q(q: str) -> list[str]:
    """Terms and the logical operators and parentheses between them; quoted strings kept whole."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in q:
        if char == '"':
            quoted = not quoted
        if not quoted and char in ";|()":
            if current:
                parts.append("".join(current))
                current = []
            parts.append(char)
        else:
            current.append(char)
    if quoted:
        raise bad_request("q: unterminated quoted string")
    if current:
        parts.append("".join(current))
    return [p for p in parts if p.strip() or p in ";|()"]


# -- on the way out -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outgoing:
    """How to answer: compacted with `context`, the context in the body (JSON-LD) or in a Link header."""

    ld: bool
    raw: Any  # the request's @context value (URL, inline object, list) or None for the core context
    context: Context

    def link_url(self) -> str:
        # Only a URL can be linked; an inline context is answered with the core context's link.
        return self.raw if isinstance(self.raw, str) else CORE_CONTEXT

    def body_context(self) -> Any:
        return self.raw if self.raw is not None else CORE_CONTEXT

    def response(self, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        extra = dict(headers or {})
        if self.ld:
            payload = [self._with_context(item) for item in payload] if isinstance(payload, list) \
                else self._with_context(payload)
            return JSONResponse(payload, status_code=status, media_type=JSONLD, headers=extra)
        extra["Link"] = f'<{self.link_url()}>; rel="{LINK_REL}"; type="{JSONLD}"'
        return JSONResponse(payload, status_code=status, media_type=JSON, headers=extra)

    def _with_context(self, item: Any) -> Any:
        return {**item, "@context": self.body_context()} if isinstance(item, dict) else item


def wants_ld(accept: str | None) -> bool:
    """Whether the Accept header prefers JSON-LD; 406 when it accepts neither JSON nor JSON-LD."""
    if not accept:
        return False
    best: tuple[float, bool] | None = None
    for position, part in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        media = media.lower()
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if weight <= 0 or media not in (JSON, JSONLD, "*/*", "application/*"):
            continue
        candidate = (weight - position * 1e-6, media == JSONLD)
        if best is None or candidate[0] > best[0]:
            best = candidate
    if best is None:
        raise NgsiError(406, "NotAcceptable", f"Accept must allow {JSON} or {JSONLD}, got {accept!r}")
    return best[1]


def outgoing(request: Request, raw: Any, context: Context) -> Outgoing:
    return Outgoing(wants_ld(request.headers.get("accept")), raw, context)


def render_entity(document: Mapping[str, Any], context: Context, attrs: Sequence[str] = (),
                  key_values: bool = False) -> dict[str, Any]:
    """An expanded normalised document, projected on `attrs`, simplified if asked, then compacted."""
    doc = dict(document)
    if attrs:
        keep = set(attrs) | {"id", "type", *SYS_ATTRS}
        doc = {k: v for k, v in doc.items() if k in keep}
    if key_values:
        doc = {k: (v if k in ("id", "type", *SYS_ATTRS) else simplify(v)) for k, v in doc.items()}
    return ldcontext.compact_entity(doc, context)


def simplify(attribute: Any) -> Any:
    """The keyValues form of one attribute (a multi-attribute becomes a list)."""
    if isinstance(attribute, list):
        return [simplify(a) for a in attribute]
    if not isinstance(attribute, Mapping):
        return attribute
    kind = attribute.get("type")
    if kind in ("Relationship", "ListRelationship"):
        return attribute.get("object", attribute.get("objectList"))
    if kind == "LanguageProperty":
        return attribute.get("languageMap")
    if kind == "VocabProperty":
        return attribute.get("vocab")
    if kind == "JsonProperty":
        return attribute.get("json")
    if kind == "ListProperty":
        return attribute.get("valueList")
    return attribute.get("value")


def temporal_entity(entity_id: str, entity_type: str, observations: Iterable[Any], context: Context,
                    temporal_values: bool = False, last_n: int | None = None) -> dict[str, Any]:
    """The NGSI-LD temporal representation: each attribute as its list of instances, oldest first."""
    by_attr: dict[str, list[Any]] = {}
    for obs in observations:
        by_attr.setdefault(obs.attr, []).append(obs)
    doc: dict[str, Any] = {"id": entity_id, "type": entity_type}
    for attr, items in by_attr.items():
        if last_n:
            items = items[-last_n:]
        if temporal_values:
            doc[attr] = {"type": "Property", "values": [[o.value, iso(o.observed_at)] for o in items]}
        else:
            doc[attr] = [{"type": "Property", "value": o.value, "observedAt": iso(o.observed_at)}
                         for o in items]
    return ldcontext.compact_entity(doc, context)


def iso(moment: datetime | None) -> str | None:
    """NGSI-LD DateTime: UTC with a Z."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
