"""NGSI-LD entities: validating expanded documents, merging them into the latest state, the history they
leave, and the query language (`q`) subset the IOC answers.

Documents reach the core expanded (see `ldcontext`): type and attribute names are IRIs.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Union

from .errors import Invalid
from .ldcontext import NGSI_LD
from .model import Alert, Entity, Observation

LOCATION = NGSI_LD + "location"
ATTRIBUTE_TYPES = frozenset({"Property", "Relationship", "GeoProperty", "LanguageProperty", "VocabProperty",
                             "JsonProperty", "ListProperty", "ListRelationship"})
# Keys of a document that are not attributes.
_ENTITY_KEYS = frozenset({"id", "type", "@context", "createdAt", "modifiedAt", "scope"})
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]+$")
_GEOMETRIES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"})


@dataclass
class UpsertResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    changed: list[tuple[Entity, tuple[str, ...]]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


@dataclass(frozen=True)
class Document:
    """A validated document: what `merge` needs."""

    id: str
    type: str
    attrs: dict[str, dict[str, Any]]
    location: tuple[float, float] | None
    location_attr: dict[str, Any] | None


# -- validation -----------------------------------------------------------------------------------------

def validate(document: Any) -> Document:
    """Check an expanded, normalised entity; Invalid names the field and what was expected."""
    if not isinstance(document, dict):
        raise Invalid(f"an entity must be a JSON object, got {type(document).__name__}", "entity")
    entity_id = document.get("id")
    if not isinstance(entity_id, str) or not entity_id:
        raise Invalid("entity id is missing: every entity needs an \"id\" (a URI)", "id")
    if len(entity_id) > 512 or not _URI.match(entity_id):
        raise Invalid(f"entity id {entity_id[:80]!r} is not a URI (expected e.g. urn:ngsi-ld:Type:name)", "id")
    entity_type = _entity_type(document.get("type"), entity_id)
    attrs: dict[str, dict[str, Any]] = {}
    location = location_attr = None
    for name, attr in document.items():
        if name in _ENTITY_KEYS:
            continue
        _check_attribute(entity_id, name, attr)
        if name == LOCATION:
            location, location_attr = geo_point(attr["value"], f"{entity_id}: location"), attr
        else:
            attrs[name] = attr
    return Document(entity_id, entity_type, attrs, location, location_attr)


def _entity_type(value: Any, entity_id: str) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value:
        raise Invalid(f"entity {entity_id}: \"type\" is missing or not a single type name", "type")
    return value


def _check_attribute(entity_id: str, name: str, attr: Any) -> None:
    where = f"entity {entity_id}: attribute {name}"
    if not isinstance(attr, dict):
        raise Invalid(f"{where} must be an object with a \"type\" (Property, Relationship, GeoProperty, …) "
                      "(NGSI-LD normalised form)", name)
    kind = attr.get("type")
    if not isinstance(kind, str) or kind not in ATTRIBUTE_TYPES:
        raise Invalid(f"{where} has type {kind!r}; expected one of {', '.join(sorted(ATTRIBUTE_TYPES))}", name)
    if kind == "Relationship" and not isinstance(attr.get("object"), (str, list)):
        raise Invalid(f"{where} is a Relationship without an \"object\" URI", name)
    if kind in ("Property", "GeoProperty") and "value" not in attr:
        raise Invalid(f"{where} is a {kind} without a \"value\"", name)
    if kind == "GeoProperty":
        geo_point(attr["value"], where)
    if "observedAt" in attr:
        parse_time(attr["observedAt"], f"{where}: observedAt", name)


def parse_time(value: Any, where: str, field_name: str | None = None) -> datetime:
    """An ISO 8601 date-time; a time without zone is taken as UTC."""
    if not isinstance(value, str):
        raise Invalid(f"{where} must be an ISO 8601 date-time string, got {value!r}", field_name)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"{where} must be an ISO 8601 date-time, got {value[:40]!r}", field_name) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def geo_point(geometry: Any, where: str) -> tuple[float, float]:
    """Check a GeoJSON geometry and give the point that stands for it: the point itself, or the centre
    of its positions' bounding box."""
    if not isinstance(geometry, dict) or not isinstance(geometry.get("type"), str) \
            or geometry["type"] not in _GEOMETRIES:
        raise Invalid(f"{where} must be a GeoJSON geometry ({', '.join(sorted(_GEOMETRIES))}) with "
                      "coordinates", "location")
    positions = list(_positions(geometry.get("coordinates"), where))
    if not positions:
        raise Invalid(f"{where} has no coordinates", "location")
    lons = [p[0] for p in positions]
    lats = [p[1] for p in positions]
    return ((min(lons) + max(lons)) / 2, (min(lats) + max(lats)) / 2)


def _positions(coords: Any, where: str):
    if isinstance(coords, (list, tuple)) and coords and all(_is_number(c) for c in coords):
        if len(coords) < 2:
            raise Invalid(f"{where}: a position needs longitude and latitude", "location")
        lon, lat = float(coords[0]), float(coords[1])
        if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
            raise Invalid(f"{where}: position [{lon}, {lat}] is out of range (longitude within ±180, latitude "
                          "within ±90, in that order)", "location")
        yield lon, lat
    elif isinstance(coords, (list, tuple)):
        for item in coords:
            yield from _positions(item, where)
    else:
        raise Invalid(f"{where}: coordinates must be nested arrays of [longitude, latitude]", "location")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- merging ----------------------------------------------------------------------------------------------

def merge(existing: Entity | None, doc: Document, now: datetime, owner: str | None,
          replace: bool) -> tuple[Entity, tuple[str, ...], list[Observation]]:
    """The entity after writing `doc` over `existing`, the attributes that changed, and the history rows.

    The entity's modified_at moves on every write, even one that changes nothing: a sensor that keeps
    sending the same value is alive, which is what the missing-data rules watch."""
    if existing is None or replace:
        attrs = dict(doc.attrs)
    else:
        attrs = {**existing.attrs, **doc.attrs}
    location, location_attr = doc.location, doc.location_attr
    if existing is not None and not replace and doc.location_attr is None:
        location, location_attr = existing.location, existing.location_attr
    changed = _changed(existing, attrs, location_attr)
    entity = Entity(
        id=doc.id, type=doc.type, attrs=attrs,
        created_at=existing.created_at if existing else now, modified_at=now,
        location=location, location_attr=location_attr,
        owner=existing.owner if existing else owner)
    return entity, changed, observations(doc, now)


def _changed(existing: Entity | None, attrs: dict[str, dict[str, Any]],
             location_attr: dict[str, Any] | None) -> tuple[str, ...]:
    before = existing.attrs if existing else {}
    changed = [name for name, attr in attrs.items() if before.get(name) != attr]
    changed.extend(name for name in before if name not in attrs)
    if (existing.location_attr if existing else None) != location_attr:
        changed.append(LOCATION)
    return tuple(changed)


def observations(doc: Document, now: datetime) -> list[Observation]:
    """One history row per Property, at its observedAt (or now)."""
    rows = []
    for name, attr in doc.attrs.items():
        if attr["type"] != "Property":
            continue
        observed = attr.get("observedAt")
        at = parse_time(observed, name) if observed is not None else now
        rows.append(Observation(doc.id, name, at, attr["value"]))
    return rows


def observed_at(entity: Entity, attr: str) -> datetime:
    """When an attribute's value was observed: its observedAt, or the entity's last write."""
    observed = entity.attrs.get(attr, {}).get("observedAt")
    return parse_time(observed, attr) if observed is not None else entity.modified_at


def attr_value(entity: Entity, attr: str) -> Any:
    """The value of a Property (the object of a Relationship); None when absent."""
    item = entity.attrs.get(attr)
    if item is None:
        return None
    return item.get("object") if item.get("type") in ("Relationship", "ListRelationship") else item.get("value")


def iso(moment: datetime) -> str:
    """An NGSI-LD DateTime: ISO 8601 in UTC with a Z."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def to_document(entity: Entity, sys_attrs: bool = False) -> dict[str, Any]:
    """The expanded, normalised NGSI-LD document of an entity."""
    document: dict[str, Any] = {"id": entity.id, "type": entity.type, **entity.attrs}
    if entity.location_attr is not None:
        document[LOCATION] = entity.location_attr
    if sys_attrs:
        document["createdAt"] = iso(entity.created_at)
        document["modifiedAt"] = iso(entity.modified_at)
    return document


# -- the query language -------------------------------------------------------------------------------------
# The subset of NGSI-LD q the IOC answers (ETSI GS CIM 009 §4.9):
#   q    := or
#   or   := and ( "|" and )*
#   and  := term ( ";" term )*
#   term := "(" or ")" | ATTR [ OP value ]         (ATTR alone: the attribute exists)
#   OP   := == | != | > | >= | < | <=
#   value := number | "string" | true | false
# Attribute names are IRIs already expanded by the caller, so they may hold ':', '/', '#', '.'.

OPS = ("==", "!=", ">=", "<=", ">", "<")
Value = Union[float, int, str, bool]


@dataclass(frozen=True)
class Compare:
    attr: str
    op: str | None  # None: the attribute exists
    value: Value | None = None


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


Node = Union[Compare, And, Or]

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<op>==|!=|>=|<=|>|<)
    | (?P<punct>[;|()])
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<word>[^\s=!<>;|()"]+)
    )""", re.VERBOSE)
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise Invalid(f"q: unexpected character {text[position:].lstrip()[:1]!r} at position {position}", "q")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.position = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise Invalid("q: the query ends too early", "q")
        self.position += 1
        return token

    def parse(self) -> Node:
        node = self.or_()
        if self.peek() is not None:
            raise Invalid(f"q: unexpected {self.peek()[1]!r}", "q")
        return node

    def or_(self) -> Node:
        items = [self.and_()]
        while self.peek() == ("punct", "|"):
            self.take()
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_(self) -> Node:
        items = [self.term()]
        while self.peek() == ("punct", ";"):
            self.take()
            items.append(self.term())
        return items[0] if len(items) == 1 else And(tuple(items))

    def term(self) -> Node:
        kind, text = self.take()
        if (kind, text) == ("punct", "("):
            node = self.or_()
            if self.take() != ("punct", ")"):
                raise Invalid("q: a '(' is not closed", "q")
            return node
        if kind != "word":
            raise Invalid(f"q: expected an attribute name, got {text!r}", "q")
        token = self.peek()
        if token is None or token[0] != "op":
            return Compare(text, None)
        self.take()
        return Compare(text, token[1], self.value())

    def value(self) -> Value:
        kind, text = self.take()
        if kind == "string":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "word":
            if text == "true":
                return True
            if text == "false":
                return False
            if _NUMBER.match(text):
                number = float(text)
                return int(text) if re.fullmatch(r"[+-]?\d+", text) else number
        raise Invalid(f"q: {text!r} is not a value (expected a number, a \"quoted string\", true or false)", "q")


@functools.lru_cache(maxsize=1024)
def parse_q(text: str) -> Node:
    """Parse a q expression (Invalid on a bad one). Cached: subscriptions re-use theirs on every change."""
    if not isinstance(text, str) or not text.strip():
        raise Invalid("q is empty", "q")
    if len(text) > 4000:
        raise Invalid("q is longer than 4000 characters", "q")
    return _Parser(text).parse()


def format_q(node: Node) -> str:
    """The q text of a parsed expression (parse_q(format_q(n)) == n)."""
    if isinstance(node, Compare):
        if node.op is None:
            return node.attr
        return f"{node.attr}{node.op}{_format_value(node.value)}"
    if isinstance(node, And):
        return ";".join(_group(item) for item in node.items)
    return "|".join(_group(item) for item in node.items)


def _group(node: Node) -> str:
    # Parenthesise every nested group, not only where precedence needs it, so the shape survives a round trip.
    text = format_q(node)
    return f"({text})" if isinstance(node, (And, Or)) else text


def _format_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def matches(node: Node, entity: Entity) -> bool:
    """Does the entity satisfy the expression? Missing attributes and mismatched types never match."""
    if isinstance(node, And):
        return all(matches(item, entity) for item in node.items)
    if isinstance(node, Or):
        return any(matches(item, entity) for item in node.items)
    if node.attr not in entity.attrs:
        return False
    if node.op is None:
        return True
    actual = attr_value(entity, node.attr)
    if isinstance(actual, list):  # a list value matches when one of its members does
        return any(compare(item, node.op, node.value) for item in actual)
    return compare(actual, node.op, node.value)


def compare(actual: Any, op: str, expected: Value) -> bool:
    """One comparison with NGSI-LD typing: numbers with numbers, strings with strings, booleans only
    equal or not."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        if not (isinstance(expected, bool) and isinstance(actual, bool)) or op not in ("==", "!="):
            return False
    elif isinstance(expected, (int, float)):
        if not isinstance(actual, (int, float)):
            return False
    elif not isinstance(actual, str):
        return False
    if op == "==":
        return actual == expected
    if op == "!=":
        return actual != expected
    if op == ">":
        return actual > expected
    if op == ">=":
        return actual >= expected
    if op == "<":
        return actual < expected
    return actual <= expected
