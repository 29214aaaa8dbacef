"""NGSI-LD `@context` handling: expand terms to IRIs on the way in, compact them on the way out.

NGSI-LD names every entity type and attribute by an IRI; a client's `@context` says which short term means
which IRI. The IOC stores expanded IRIs, so two clients using different contexts never collide and a
client gets back the short names of its own context. Only the part of JSON-LD that NGSI-LD relies on is
needed: term definitions (`"t": "iri"` or `{"@id": "iri"}`), compact IRIs (`prefix:suffix`), `@vocab`,
and the default vocabulary for terms no context defines (ETSI GS CIM 009 §5.5.7).

These machines are offline, so remote contexts cannot be fetched: the core context and the Smart Data
Models domain contexts the twin's devices use are known here by URL. Any other URL is
`ContextNotAvailable` — what the spec prescribes when a context cannot be retrieved (503 LdContextNotAvailable).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
CORE_CONTEXTS = frozenset({CORE_CONTEXT} | {
    f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.{minor}.jsonld" for minor in range(3, 9)})
NGSI_LD = "https://uri.etsi.org/ngsi-ld/"
DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
SDM = "https://smartdatamodels.org/"

# Terms with a meaning in NGSI-LD itself: structural, never expanded as user attributes.
CORE_KEYWORDS = frozenset({
    "id", "type", "value", "object", "objects", "languageMap", "vocab", "json", "observedAt", "unitCode",
    "datasetId", "createdAt", "modifiedAt", "deletedAt", "instanceId", "scope", "@context",
    "Property", "Relationship", "GeoProperty", "LanguageProperty", "VocabProperty", "JsonProperty",
    "ListProperty", "ListRelationship",
})
# Core attributes the core context defines: location, observationSpace, operationSpace, name …
CORE_TERMS = {name: NGSI_LD + name for name in ("location", "observationSpace", "operationSpace")}

# The Smart Data Models domain contexts the twin's payloads use. Each maps its models' terms into its
# domain's namespace; listed here by term so the IOC can work offline.
SDM_DOMAIN_TERMS: dict[str, tuple[str, ...]] = {
    "Transportation": (
        "TrafficFlowObserved", "Vehicle", "Road", "RoadSegment", "laneId", "laneDirection", "reversedLane",
        "intensity", "occupancy", "averageVehicleSpeed", "averageVehicleLength", "averageHeadwayTime",
        "averageGapDistance", "congested", "vehicleType", "vehicleSubType", "speed", "heading", "bearing",
        "serviceStatus", "fleetVehicleId", "vehiclePlateIdentifier", "currentTripCount", "dateObservedFrom",
        "dateObservedTo", "refRoadSegment", "routeId", "tripId", "passengers"),
    "Environment": (
        "AirQualityObserved", "NoiseLevelObserved", "WaterQualityObserved", "pm25", "pm10", "no2", "o3", "co",
        "so2", "nox", "co2", "airQualityIndex", "airQualityLevel", "reliability", "LAeq", "LAmax", "LAS",
        "LAeq_d", "sonometerClass", "temperature", "relativeHumidity", "precipitation", "windSpeed",
        "windDirection", "typeOfLocation"),
    "WaterQuality": ("waterLevel", "flowRate", "conductivity", "turbidity"),
    "Weather": ("WeatherObserved", "FloodMonitoring", "rainfall", "precipitation", "illuminance",
                "atmosphericPressure", "currentLevel", "referenceLevel", "floodRisk"),
    "Alert": ("Alert", "category", "subCategory", "severity", "alertSource", "dateIssued", "validFrom",
              "validTo", "data"),
    "Device": ("Device", "DeviceModel", "controlledProperty", "deviceState", "batteryLevel", "rssi",
               "dateLastValueReported", "value", "refDeviceModel", "deviceCategory"),
}
COMMON_TERMS = ("name", "description", "address", "dateObserved", "dateCreated", "dateModified", "source",
                "dataProvider", "alternateName", "areaServed", "owner", "seeAlso", "refDevice")


def sdm_context_url(domain: str) -> str:
    return f"https://raw.githubusercontent.com/smart-data-models/dataModel.{domain}/master/context.jsonld"


def _sdm_context(domain: str) -> dict[str, str]:
    terms = {term: f"{SDM}dataModel.{domain}/{term}" for term in SDM_DOMAIN_TERMS[domain]}
    terms.update({term: SDM + term for term in COMMON_TERMS})
    return terms


KNOWN_CONTEXTS: dict[str, dict[str, str]] = {url: {} for url in CORE_CONTEXTS}
KNOWN_CONTEXTS.update({sdm_context_url(domain): _sdm_context(domain) for domain in SDM_DOMAIN_TERMS})
# All SDM domains in one: what the dashboard and the default rules use to name things.
ALL_SDM = [sdm_context_url(domain) for domain in SDM_DOMAIN_TERMS]


class ContextError(ValueError):
    """A malformed @context (400 BadRequestData / InvalidRequest)."""


class ContextNotAvailable(ContextError):
    """A remote context that cannot be retrieved (503 LdContextNotAvailable)."""


class Context:
    """A resolved, merged @context: term → IRI, prefixes, @vocab, and the reverse map for compacting."""

    __slots__ = ("terms", "vocab", "_reverse")

    def __init__(self, terms: Mapping[str, str], vocab: str | None = None):
        self.terms = dict(terms)
        self.vocab = vocab
        self._reverse: dict[str, str] = {}
        for term, iri in self.terms.items():
            self._reverse.setdefault(iri, term)

    def expand(self, term: str) -> str:
        """A type or attribute name as its IRI."""
        if term in CORE_TERMS:
            return CORE_TERMS[term]
        if term in self.terms:
            return self.terms[term]
        prefix, sep, suffix = term.partition(":")
        if sep:
            if prefix in self.terms:
                return self.terms[prefix] + suffix
            if suffix.startswith("//") or prefix in ("urn", "http", "https"):
                return term  # already an absolute IRI
        return (self.vocab or DEFAULT_VOCAB) + term

    def compact(self, iri: str) -> str:
        """An IRI as the shortest name this context gives it (the IRI itself when none does)."""
        if iri in self._reverse:
            return self._reverse[iri]
        for term, core_iri in CORE_TERMS.items():
            if iri == core_iri:
                return term
        for base in (self.vocab, DEFAULT_VOCAB):
            if base and iri.startswith(base) and ":" not in iri[len(base):]:
                return iri[len(base):]
        return iri


def resolve(context: Any) -> Context:
    """Resolve a @context value (URL, inline object, or a list of them; None means the core context)."""
    terms: dict[str, str] = {}
    vocab: str | None = None
    for item in _as_list(context):
        if isinstance(item, str):
            if item not in KNOWN_CONTEXTS:
                raise ContextNotAvailable(f"@context {item!r} cannot be retrieved (this IOC works offline and "
                                          f"knows: {', '.join(sorted(KNOWN_CONTEXTS))})")
            terms.update(KNOWN_CONTEXTS[item])
        elif isinstance(item, Mapping):
            inline_terms, inline_vocab = _inline_terms(item, terms)
            terms.update(inline_terms)
            vocab = inline_vocab or vocab
        else:
            raise ContextError(f"@context entries must be URLs or objects, got {type(item).__name__}")
    return Context(terms, vocab)


def _as_list(context: Any) -> list[Any]:
    if context is None:
        return []
    return list(context) if isinstance(context, list) else [context]


def _inline_terms(item: Mapping[str, Any], known: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    terms: dict[str, str] = {}
    vocab = item.get("@vocab")
    if vocab is not None and not isinstance(vocab, str):
        raise ContextError("@context @vocab must be a string IRI")
    for term, definition in item.items():
        if term.startswith("@"):
            continue
        iri = definition.get("@id") if isinstance(definition, Mapping) else definition
        if not isinstance(iri, str):
            raise ContextError(f"@context term {term!r} must map to an IRI string or an object with @id")
        prefix, sep, suffix = iri.partition(":")
        lookup = {**known, **terms}
        if sep and prefix in lookup and not suffix.startswith("//"):
            iri = lookup[prefix] + suffix
        terms[term] = iri
    return terms, vocab


def expand_entity(document: Mapping[str, Any], context: Context) -> dict[str, Any]:
    """An entity in compact form (NGSI-LD normalised) with its type and attribute names expanded."""
    out: dict[str, Any] = {}
    for key, value in document.items():
        if key == "@context":
            continue
        if key == "type":
            out["type"] = expand_types(value, context)
        elif key in CORE_KEYWORDS:
            out[key] = value
        else:
            out[context.expand(key)] = value
    return out


def compact_entity(document: Mapping[str, Any], context: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in document.items():
        if key == "type":
            out["type"] = ([context.compact(t) for t in value] if isinstance(value, list)
                           else context.compact(value))
        elif key in CORE_KEYWORDS:
            out[key] = value
        else:
            out[context.compact(key)] = value
    return out


def expand_types(value: Any, context: Context) -> str | list[str]:
    if isinstance(value, list):
        return [context.expand(t) for t in value]
    return context.expand(value)


def expand_names(names: Iterable[str], context: Context) -> tuple[str, ...]:
    return tuple(context.expand(name) for name in names)


DISPLAY = resolve(ALL_SDM)  # how the dashboard and the default rules name types and attributes
