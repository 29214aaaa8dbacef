"""The scenario: one typed, validated description of a run. Unknown keys are errors.

Every field has a default a planner can live with, so a scenario names only what it changes;
`extends:` (handled by the loader) makes variants a few lines long.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo, WrapValidator,
                      field_validator, model_validator)

from .units import ClockTime, Duration

Share = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- city -------------------------------------------------------------------------------------------

class SyntheticNetwork(Model):
    source: Literal["synthetic"]
    width_m: Annotated[float, Field(ge=500.0, le=50_000.0)] = 3000.0
    height_m: Annotated[float, Field(ge=500.0, le=50_000.0)] = 2000.0
    block_m: Annotated[float, Field(ge=80.0, le=2000.0)] = 250.0
    arterial_every: Annotated[int, Field(ge=1, le=20)] = 4
    alleys_per_block: Literal[0, 1, 2] = 1
    river: bool = True
    bridges: Annotated[int, Field(ge=1, le=50)] = 3
    depressions: Annotated[int, Field(ge=0, le=200)] = 4
    layout_seed: int = 0
    anchor_lon: Annotated[float, Field(ge=-180.0, le=180.0)] = 108.2165  # the district centre (Hải Châu)
    anchor_lat: Annotated[float, Field(ge=-85.0, le=85.0)] = 16.0650


class OsmFileNetwork(Model):
    source: Literal["osm_file"]
    path: str
    consolidate_m: Annotated[float, Field(ge=0.0, le=100.0)] = 15.0
    min_link_m: Annotated[float, Field(ge=0.0, le=200.0)] = 25.0
    # What to do when the file is not on this machine (e.g. ../shared absent): fail, or fall back to
    # the synthetic district so a scenario still runs out of the box.
    if_missing: Literal["error", "synthetic"] = "error"


class OsmPlaceNetwork(Model):
    source: Literal["osm_place"]
    place: str
    cache_dir: str = "~/.cache/citytwin/osm"
    consolidate_m: Annotated[float, Field(ge=0.0, le=100.0)] = 15.0
    min_link_m: Annotated[float, Field(ge=0.0, le=200.0)] = 25.0


class TntpNetwork(Model):
    source: Literal["tntp"]
    net: str
    nodes: str | None = None


Network = Annotated[Union[SyntheticNetwork, OsmFileNetwork, OsmPlaceNetwork, TntpNetwork],
                    Field(discriminator="source")]


class CitySpec(Model):
    name: str | None = None
    network: Network = SyntheticNetwork(source="synthetic")


# --- traffic ----------------------------------------------------------------------------------------

class VehicleClass(Model):
    share: Share
    pcu: Annotated[float, Field(gt=0.0, le=10.0)]


# Vehicle mix of a Vietnamese city street by count, with passenger-car-unit equivalents (urban values
# of TCVN 13592:2022: motorbike 0.3, car 1.0, bus and heavy truck 2.5).
VN_VEHICLE_MIX = {
    "motorbike": VehicleClass(share=0.80, pcu=0.3),
    "car": VehicleClass(share=0.14, pcu=1.0),
    "bus": VehicleClass(share=0.01, pcu=2.5),
    "truck": VehicleClass(share=0.05, pcu=2.5),
}


class TrafficSpec(Model):
    engine: Literal["uxsim"] = "uxsim"
    platoon_pcu: Annotated[int, Field(ge=1, le=50)] = 5  # UXsim's deltan: PCU moved as one platoon
    reaction_time_s: Annotated[float, Field(gt=0.0, le=5.0)] = 1.0
    chunk: Annotated[Duration, Field(gt=0.0)] = 300.0  # how often the twin reads the engine back
    snapshot: Annotated[Duration, Field(gt=0.0)] = 300.0  # link-state record interval in the ledger
    route_update: Annotated[Duration, Field(gt=0.0)] = 600.0
    route_noise: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    vehicle_mix: dict[str, VehicleClass] = Field(default_factory=lambda: dict(VN_VEHICLE_MIX))

    @field_validator("vehicle_mix")
    @classmethod
    def _shares_sum_to_one(cls, mix: dict[str, VehicleClass]) -> dict[str, VehicleClass]:
        if not mix:
            raise ValueError("expected at least one vehicle class")
        total = sum(v.share for v in mix.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"expected shares that sum to 1; they sum to {total:g}")
        return mix

    @field_validator("chunk")
    @classmethod
    def _chunk_fits_step(cls, chunk: float, info: ValidationInfo) -> float:
        step = info.data.get("platoon_pcu", 5) * info.data.get("reaction_time_s", 1.0)
        if chunk < step:
            raise ValueError(f"expected at least the engine step ({step:g} s); got {chunk:g} s")
        return chunk

    @property
    def step_s(self) -> float:
        """The engine's time step: one platoon crosses a point per reaction time per PCU."""
        return self.platoon_pcu * self.reaction_time_s

    @property
    def mean_pcu(self) -> float:
        return sum(v.share * v.pcu for v in self.vehicle_mix.values())


# --- demand -----------------------------------------------------------------------------------------

# Share of the day's trips starting in each hour on a Vietnamese weekday: a sharp morning peak
# 06:30-08:00 (school and office hours start at 07:00-07:30), a midday return home, and a broader
# evening peak 16:30-18:30. The shape follows household travel surveys of Hà Nội and HCMC.
VN_WEEKDAY_PROFILE = (0.4, 0.2, 0.2, 0.3, 0.8, 2.5, 6.5, 9.5, 6.0, 4.0, 3.8, 5.0,
                      5.5, 4.2, 3.8, 4.5, 7.0, 9.0, 7.5, 4.5, 3.2, 2.5, 1.6, 0.8)


PROFILES = {"vn_weekday": VN_WEEKDAY_PROFILE, "flat": (1.0,) * 24}


class OdDemand(Model):
    kind: Literal["od"]
    trips_per_day: Annotated[int, Field(ge=0, le=50_000_000)] = 100_000
    profile: str | list[float] = "vn_weekday"  # a named profile or 24 hourly weights
    distance_decay_per_km: Annotated[float, Field(ge=0.0, le=10.0)] = 0.35
    # Share of trips in the morning peak that go home -> work/school (the evening mirrors it).
    peak_direction_share: Annotated[float, Field(ge=0.5, le=1.0)] = 0.8

    @field_validator("profile", mode="before")
    @classmethod
    def _profile(cls, value):
        if isinstance(value, str) and value in PROFILES:
            return value
        if (isinstance(value, list) and len(value) == 24 and all(isinstance(w, (int, float)) and w >= 0 for w in value)
                and sum(value) > 0):
            return [float(w) for w in value]
        raise ValueError(f"expected one of {', '.join(PROFILES)} or 24 non-negative hourly weights with a "
                         f"positive sum; got {value!r}")

    def hourly_weights(self) -> tuple[float, ...]:
        return PROFILES[self.profile] if isinstance(self.profile, str) else tuple(self.profile)


class TntpDemand(Model):
    kind: Literal["tntp"]
    trips: str
    start: Duration = 0.0  # offset from the scenario start
    period: Annotated[Duration, Field(gt=0.0)] = 3600.0  # the file's flows depart evenly over this
    scale: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0


class AgentDemand(Model):
    """The population's own trips (see `population`) drive the engine instead of an OD matrix."""

    kind: Literal["agents"]
    # Share of the residents' motorbike and car trips that load the modelled roads. 1 when the network
    # is the whole city; less when a district's streets stand for a city whose other trips run elsewhere.
    network_share: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0


Demand = Annotated[Union[OdDemand, TntpDemand, AgentDemand], Field(discriminator="kind")]


# --- population (agents/) ----------------------------------------------------------------------------

AGE_GROUPS = ("child", "student", "adult", "senior")  # under 6, 6-22 in school, 23-60, over 60
MODES = ("motorbike", "car", "bus", "walk")


def _shares(value: dict, keys: tuple[str, ...] | None = None) -> dict:
    if keys is not None:
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; expected some of {', '.join(keys)}")
    total = sum(value.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"expected shares that sum to 1; they sum to {total:g}")
    return value


class PopulationSpec(Model):
    """Residents as array columns: where they live and work or study, who they are, how they travel.

    The defaults describe Đà Nẵng: households of 3.5 (2019 census), a young population, most adults
    at work outside the home, smartphones in most pockets, and three trips in four by motorbike."""

    residents: Annotated[int, Field(ge=1, le=5_000_000)] = 100_000
    household_size: Annotated[float, Field(ge=1.0, le=10.0)] = 3.5
    age_groups: dict[str, Share] = Field(default_factory=lambda: {
        "child": 0.08, "student": 0.22, "adult": 0.58, "senior": 0.12})
    employed: Share = 0.78  # of adults, with a place of work outside the home
    smartphone: dict[str, Share] = Field(default_factory=lambda: {
        "child": 0.0, "student": 0.80, "adult": 0.88, "senior": 0.45})
    mode_share: dict[str, Share] = Field(default_factory=lambda: {
        "motorbike": 0.75, "car": 0.07, "bus": 0.03, "walk": 0.15})
    midday_home_share: Share = 0.30  # of workers and students, who go home for lunch and come back
    other_trip_share: Share = 0.35  # of residents, who make an errand (market, shop, visit) on a given day
    work_distance_decay_per_km: Annotated[float, Field(ge=0.0, le=10.0)] = 0.35

    @field_validator("age_groups")
    @classmethod
    def _age_groups(cls, value: dict) -> dict:
        return _shares(value, AGE_GROUPS) if set(value) == set(AGE_GROUPS) else _missing(value, AGE_GROUPS)

    @field_validator("smartphone")
    @classmethod
    def _smartphone(cls, value: dict) -> dict:
        return value if set(value) == set(AGE_GROUPS) else _missing(value, AGE_GROUPS)

    @field_validator("mode_share")
    @classmethod
    def _modes(cls, value: dict) -> dict:
        return _shares(value, MODES) if set(value) == set(MODES) else _missing(value, MODES)


def _missing(value: dict, keys: tuple[str, ...]) -> dict:
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; expected exactly {', '.join(keys)}")
    raise ValueError(f"expected a value for each of {', '.join(keys)}; missing {', '.join(k for k in keys if k not in value)}")


# --- field reporting (phản ánh hiện trường) -----------------------------------------------------------

def _catalog_codes() -> tuple[str, ...]:
    from citytwin.ioc.core.catalog import DEFAULT_CATALOG  # the categories the IOC accepts

    return tuple(DEFAULT_CATALOG)


def _known_category(code: str) -> str:
    codes = _catalog_codes()
    if code not in codes:
        raise ValueError(f"unknown category {code!r}; expected one of {', '.join(codes)}")
    return code


PROBLEM_SITES = ("roads", "homes", "signals", "floods")


class ProblemKind(Model):
    """One kind of urban problem: where it arises, how often, how bad, what fixing it takes."""

    category: str  # the IOC service code reports of it are filed under
    # roads: per road-km and day, on a link; homes: per 1,000 residents and day, at a home junction;
    # signals: per signalised junction and day; floods: every junction flood of the hazards becomes one.
    site: Literal["roads", "homes", "signals", "floods"]
    rate: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0
    severity: list[Share] = Field(default_factory=lambda: [0.5, 0.35, 0.15])  # shares of minor, serious, severe
    service_time: Annotated[Duration, Field(gt=0.0)] = 3600.0  # mean time on site to fix it (lognormal)
    capacity_factor: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0  # of its link's capacity left until fixed

    _category = field_validator("category")(classmethod(lambda cls, v: _known_category(v)))

    @field_validator("severity")
    @classmethod
    def _severity(cls, value: list[float]) -> list[float]:
        if len(value) != 3:
            raise ValueError(f"expected three shares (minor, serious, severe); got {len(value)}")
        return list(_shares(dict(enumerate(value))).values())


def _default_problems() -> dict[str, ProblemKind]:
    """Đà Nẵng's everyday problems. Rates: per km of one-way link, per 1,000 residents or per signal and
    day, chosen with the citizens' propensity so that the city's size gives the ~800 reports a month
    its plan reports. Service times are on site, from the crew's arrival: mobilising, the repair and
    clearing up (a pothole patch half a day, a bag of dumped waste an hour)."""
    P = ProblemKind
    return {
        "pothole": P(category="road-damage", site="roads", rate=0.010, service_time=4 * 3600.0),
        "garbage": P(category="waste", site="homes", rate=0.008, service_time=3600.0),
        "flooding": P(category="flooding", site="floods", service_time=2 * 3600.0, severity=[0.2, 0.5, 0.3]),
        "streetlight": P(category="streetlight", site="roads", rate=0.006, service_time=2 * 3600.0),
        "fallen_tree": P(category="fallen-tree", site="roads", rate=0.0015, service_time=3 * 3600.0,
                         capacity_factor=0.5, severity=[0.3, 0.4, 0.3]),
        "encroachment": P(category="sidewalk-encroachment", site="roads", rate=0.015, service_time=3600.0,
                          capacity_factor=0.85, severity=[0.6, 0.3, 0.1]),
        "traffic_signal": P(category="traffic-signal", site="signals", rate=0.004, service_time=5400.0,
                            severity=[0.3, 0.4, 0.3]),
        "noise": P(category="noise", site="homes", rate=0.004, service_time=2700.0, severity=[0.6, 0.3, 0.1]),
    }


CHANNELS = ("app", "hotline", "web")


class CitizenReporting(Model):
    """How residents notice problems and report them, and how they follow up."""

    # Chance that one pass (a trip along the problem's link or through its junction) notices a minor
    # problem; serious and severe ones are noticed 2 and 4 times as readily.
    notice_per_pass: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    # Chance per day that a resident living within `home_radius_m` notices it.
    notice_at_home_per_day: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    home_radius_m: Annotated[float, Field(ge=0.0, le=5000.0)] = 200.0
    # Each resident's propensity to report what they noticed: Beta-distributed with this mean (most
    # people never report; a few always do) and this concentration (smaller: more unequal).
    propensity_mean: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.0003  # ~800 reports a month at Đà Nẵng's size
    propensity_concentration: Annotated[float, Field(gt=0.0, le=1000.0)] = 0.5
    channels: dict[str, Share] = Field(default_factory=lambda: {"app": 0.45, "hotline": 0.35, "web": 0.20})
    location_error_m: dict[str, Annotated[float, Field(ge=0.0, le=2000.0)]] = Field(default_factory=lambda: {
        "app": 15.0, "hotline": 120.0, "web": 60.0})  # GPS in the app; a described address otherwise
    check_interval: Annotated[Duration, Field(gt=0.0)] = 43200.0  # mean time between status checks
    give_up_after: Annotated[Duration, Field(gt=0.0)] = 14 * 86400.0  # stops checking an open report

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: dict) -> dict:
        return _shares(value, CHANNELS)

    @field_validator("location_error_m")
    @classmethod
    def _errors(cls, value: dict) -> dict:
        return value if set(value) == set(CHANNELS) else _missing(value, CHANNELS)


class Shift(Model):
    """A daily working window on the clock; an end at or before the start runs past midnight."""

    start: ClockTime
    end: ClockTime

    @property
    def length_s(self) -> float:
        return (self.end - self.start) % 86400.0 or 86400.0


class OperatorShift(Shift):
    operators: Annotated[int, Field(ge=1, le=1000)]


def _default_intake_shifts() -> list[OperatorShift]:
    return [OperatorShift(start="06:00", end="14:00", operators=2),
            OperatorShift(start="14:00", end="22:00", operators=2),
            OperatorShift(start="22:00", end="06:00", operators=1)]


class IntakeSpec(Model):
    """The IOC's intake desk: operators who answer hotline 1022 and triage reports from the app and web."""

    shifts: list[OperatorShift] = Field(default_factory=_default_intake_shifts, min_length=1)
    call_time: Annotated[Duration, Field(gt=0.0)] = 300.0  # mean talk and filing time of a call (exponential)
    triage_time: Annotated[Duration, Field(gt=0.0)] = 180.0  # mean review of an app or web report (exponential)
    caller_patience: Annotated[Duration, Field(gt=0.0)] | None = 240.0  # mean wait before hanging up; null: never
    # A live drive: how often the desk's screen refreshes the IOC's queue of new requests (app and web reports
    # are triaged as they show up there; in memory they are handed over as they are filed).
    queue_refresh: Annotated[Duration, Field(gt=0.0)] = 60.0


_DAY_SHIFT = Shift(start="07:00", end="17:00")
_ALL_DAY = Shift(start="00:00", end="00:00")


class CrewSpec(Model):
    crews: Annotated[int, Field(ge=0, le=10_000)]
    shift: Shift = _DAY_SHIFT


def _default_crews() -> dict[str, CrewSpec]:
    return {
        "road-damage": CrewSpec(crews=2), "waste": CrewSpec(crews=2), "flooding": CrewSpec(crews=2, shift=_ALL_DAY),
        "streetlight": CrewSpec(crews=1), "fallen-tree": CrewSpec(crews=1, shift=_ALL_DAY),
        "sidewalk-encroachment": CrewSpec(crews=2), "traffic-signal": CrewSpec(crews=1, shift=_ALL_DAY),
        "noise": CrewSpec(crews=1, shift=Shift(start="07:00", end="23:00")),
    }


class OrganisationSpec(Model):
    """Who answers, who decides, who fixes: the intake desk and each category's field crews."""

    intake: IntakeSpec = IntakeSpec()
    crews: dict[str, CrewSpec] = Field(default_factory=_default_crews)
    deadlines: dict[str, Annotated[Duration, Field(gt=0.0)]] = Field(default_factory=dict)  # over the catalog's
    publish_results: Share = 1.0  # share of closed requests whose result the agency publishes to the reporter

    @field_validator("crews", "deadlines")
    @classmethod
    def _categories(cls, value: dict) -> dict:
        for code in value:
            _known_category(code)
        return value


class FieldReportingSpec(Model):
    problems: dict[str, ProblemKind] = Field(default_factory=_default_problems)
    citizens: CitizenReporting = CitizenReporting()
    organisation: OrganisationSpec = OrganisationSpec()

    @model_validator(mode="after")
    def _every_category_has_crews(self) -> "FieldReportingSpec":
        missing = sorted({p.category for p in self.problems.values()} - set(self.organisation.crews))
        if missing:
            raise ValueError(f"organisation.crews: expected crews for every problem category; none for "
                             f"{', '.join(missing)}")
        return self


# --- hazards ----------------------------------------------------------------------------------------

class IncidentKind(Model):
    share: Share
    capacity_factor: Annotated[float, Field(ge=0.0, le=1.0)]  # of the link's capacity left while it lasts
    mean_duration: Annotated[Duration, Field(gt=0.0)]


class IncidentsSpec(Model):
    # Incidents per lane-km per day of road (crashes and breakdowns that block part of a link).
    rate_per_lane_km_day: Annotated[float, Field(ge=0.0, le=10.0)] = 0.02
    kinds: dict[str, IncidentKind] = Field(default_factory=lambda: {
        "crash": IncidentKind(share=0.35, capacity_factor=0.35, mean_duration=2700.0),
        "breakdown": IncidentKind(share=0.65, capacity_factor=0.6, mean_duration=1500.0),
    })

    @field_validator("kinds")
    @classmethod
    def _shares(cls, kinds: dict[str, IncidentKind]) -> dict[str, IncidentKind]:
        total = sum(k.share for k in kinds.values())
        if kinds and abs(total - 1.0) > 1e-6:
            raise ValueError(f"expected shares that sum to 1; they sum to {total:g}")
        return kinds


class RainEpisode(Model):
    start: ClockTime
    duration: Annotated[Duration, Field(gt=0.0)]
    intensity_mm_h: Annotated[float, Field(gt=0.0, le=300.0)]


class RainSpec(Model):
    episodes_per_day: Annotated[float, Field(ge=0.0, le=24.0)] = 0.3
    episodes: list[RainEpisode] = Field(default_factory=list)  # fixed episodes, on top of random ones
    mean_intensity_mm_h: Annotated[float, Field(gt=0.0, le=300.0)] = 25.0
    mean_duration: Annotated[Duration, Field(gt=0.0)] = 5400.0
    low_node_share: Share = 0.05  # the lowest-lying share of junctions that can flood
    drainage_mm_h: Annotated[float, Field(ge=0.0, le=300.0)] = 30.0
    flood_depth_m: Annotated[float, Field(gt=0.0, le=2.0)] = 0.2  # motorbikes stall about here
    speed_factor: Annotated[float, Field(gt=0.0, le=1.0)] = 0.85  # free-flow speeds while it rains


class HazardsSpec(Model):
    incidents: IncidentsSpec = IncidentsSpec()
    rain: RainSpec = RainSpec()


# --- devices (devices_sim/) ---------------------------------------------------------------------------

def _fail(loc: tuple, message: str, value: object) -> None:
    """Raise a validation error at `loc` below the field being validated, so the scenario's own path
    (e.g. `placement.nodes`, `routes[1].via`) reaches the user, not just the enclosing model's."""
    raise ValidationError.from_exception_data("devices", [
        {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": ValueError(message)}}])


_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _id_part(value: str) -> str:
    """A name that becomes part of device ids (and so of MQTT topics and NGSI-LD entity ids)."""
    if not _NAME.fullmatch(value):
        raise ValueError(f"expected 1 to 40 letters, digits, '_' or '-' (it becomes part of device ids); got {value!r}")
    return value


def _unique(values: list[str], what: str) -> list[str]:
    seen: dict[str, int] = {}
    for k, value in enumerate(values):
        if value in seen:
            _fail((k,), f"expected each {what} once; got {value!r} again (also at [{seen[value]}])", value)
        seen[value] = k
    return values


PositiveDuration = Annotated[Duration, Field(gt=0.0)]
NonNegativeDuration = Annotated[Duration, Field(ge=0.0)]
Radius = Annotated[float, Field(gt=0.0, le=20_000.0)]  # metres


class FaultSpec(Model):
    """How devices fail: each rate is a chance per reading, or (drift, battery) a share of the devices."""

    dropout: Share = 0.0  # the device goes offline ...
    dropout_duration: PositiveDuration = 1800.0  # ... for an exponential time with this mean, then recovers
    stuck: Share = 0.0  # the measured values freeze ...
    stuck_duration: PositiveDuration = 7200.0
    drift: Share = 0.0  # share of devices whose measured values drift
    drift_per_day: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.05  # relative drift per day of a drifting device
    burst: Share = 0.0  # a burst of measurement noise starts ...
    burst_duration: PositiveDuration = 600.0
    burst_scale: Annotated[float, Field(ge=0.0, le=10.0)] = 0.5  # relative noise (sd) during a burst
    duplicate: Share = 0.0  # a message is sent twice
    late: Share = 0.0  # a message is held back and arrives out of order ...
    late_delay: PositiveDuration = 300.0  # ... after this mean extra delay (exponential)
    clock_skew: NonNegativeDuration = 0.0  # sd of each device's fixed clock offset (normal)
    battery: Share = 0.0  # share of devices on battery ...
    battery_life: PositiveDuration = 5 * 86400.0  # ... which die for good after this mean life (normal, cv 0.2)
    network_delay: NonNegativeDuration = 1.0  # mean transmission delay (exponential)


class Placement(Model):
    """Where a fleet's devices go: explicit sites, or a budget and a strategy that chooses them."""

    nodes: list[str] | None = None  # junction ids (cameras, environmental sensors)
    links: list[str] | None = None  # link ids (detectors)
    budget: Annotated[int, Field(ge=0, le=100_000)] | None = None
    strategy: Literal["random", "major_roads", "max_coverage", "hotspots"] = "max_coverage"

    @field_validator("nodes")
    @classmethod
    def _unique_nodes(cls, value: list[str] | None) -> list[str] | None:
        return value if value is None else _unique(value, "node")

    @field_validator("links")
    @classmethod
    def _unique_links(cls, value: list[str] | None) -> list[str] | None:
        return value if value is None else _unique(value, "link")

    @model_validator(mode="after")
    def _one_way_to_place(self) -> "Placement":
        given = [key for key in ("nodes", "links", "budget") if getattr(self, key) is not None]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise ValueError(f"expected exactly one of nodes, links or budget; got {got}")
        return self


LINK_SITED = ("detector",)  # placed on links; every other placed device type at a junction


def site_problem(fleet_type: str, placement: Placement) -> tuple[str, str] | None:
    """(field, message) when explicit sites are of the wrong kind for the fleet: detectors sit on links,
    every other placed device at a junction."""
    wanted = "links" if fleet_type in LINK_SITED else "nodes"
    wrong = "nodes" if wanted == "links" else "links"
    if getattr(placement, wrong) is None:
        return None
    what = "link ids" if wanted == "links" else "junction ids"
    return wrong, f"expected {wanted} ({what}) for a {fleet_type.replace('_', ' ')}; got {wrong}"


class _Fleet(Model):
    name: str  # prefix of the device ids: "<name>-0001"
    faults: FaultSpec = FaultSpec()

    _name = field_validator("name")(classmethod(lambda cls, v: _id_part(v)))


class _PlacedFleet(_Fleet):
    placement: Placement

    @model_validator(mode="after")
    def _sites_of_the_right_kind(self):
        wrong = site_problem(self.type, self.placement)
        if wrong:
            _fail(("placement", wrong[0]), wrong[1], getattr(self.placement, wrong[0]))
        return self


class DetectorFleet(_PlacedFleet):
    """Loop or radar detectors on links: counts, occupancy and mean speed per interval."""

    type: Literal["detector"] = "detector"
    interval: PositiveDuration = 300.0


class CameraDetect(Model):
    """Chance per evaluation that a camera's analytics recognise an event of each kind in view."""

    incident: Share = 0.5
    congestion: Share = 0.4
    violation: Share = 0.3
    flood: Share = 0.5


class CameraFleet(_PlacedFleet):
    """Cameras at junctions with video analytics: alerts on incidents, congestion, violations, floods."""

    type: Literal["camera"] = "camera"
    interval: PositiveDuration = 60.0  # how often the analytics evaluate the view
    range_m: Annotated[float, Field(gt=0.0, le=2000.0)] = 150.0
    detect: CameraDetect = CameraDetect()
    delay: NonNegativeDuration = 30.0  # mean analytics delay (exponential)
    congestion_speed_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3
    violations_per_1000_vehicles: Annotated[float, Field(ge=0.0, le=100.0)] = 0.5
    counts: bool = True  # each camera also counts traffic on the busiest link in view ("<id>-flow")
    count_interval: PositiveDuration = 300.0


class AirFleet(_PlacedFleet):
    """Air-quality stations: PM2.5, PM10, NO2, CO from a diurnal background, nearby traffic and rain."""

    type: Literal["air"] = "air"
    interval: PositiveDuration = 900.0
    background_pm25: Annotated[float, Field(gt=0.0, le=500.0)] = 22.0  # µg/m³
    traffic_radius_m: Radius = 300.0
    washout_per_mm: Annotated[float, Field(ge=0.0, le=1.0)] = 0.08
    coverage_radius_m: Radius = 1000.0


class NoiseFleet(_PlacedFleet):
    """Noise meters: LAeq and LAmax from the volume and speed of traffic on nearby links."""

    type: Literal["noise"] = "noise"
    interval: PositiveDuration = 300.0
    traffic_radius_m: Radius = 60.0
    coverage_radius_m: Radius = 300.0


class WaterLevelFleet(_PlacedFleet):
    """Flood gauges at junctions: water level and a warning state against `warning_level_m`."""

    type: Literal["water_level"] = "water_level"
    interval: PositiveDuration = 300.0
    warning_level_m: Annotated[float, Field(gt=0.0, le=5.0)] = 0.10
    coverage_radius_m: Radius = 300.0


class RainGaugeFleet(_PlacedFleet):
    type: Literal["rain_gauge"] = "rain_gauge"
    interval: PositiveDuration = 300.0
    coverage_radius_m: Radius = 2000.0


class BusRoute(Model):
    name: str
    via: list[str]  # junction ids the line passes, in order, joined by shortest paths

    _name = field_validator("name")(classmethod(lambda cls, v: _id_part(v)))

    @field_validator("via")
    @classmethod
    def _two_ends(cls, value: list[str]) -> list[str]:
        if len(value) < 2:
            raise ValueError(f"expected at least 2 junction ids (the ends of the line); got {value!r}")
        return value


def _routes_tag(value: object) -> str:
    return "routes" if isinstance(value, list) else "count"


class BusFleet(_Fleet):
    """Buses with GPS running lines out and back at a headway within service hours."""

    type: Literal["bus"] = "bus"
    interval: PositiveDuration = 30.0  # GPS fix
    # A number of lines generated between distant junctions on major roads, or the lines themselves.
    routes: Annotated[Union[Annotated[Annotated[int, Field(ge=0, le=200)], Tag("count")],
                            Annotated[list[BusRoute], Tag("routes")]],
                      Discriminator(_routes_tag)] = 4
    headway: PositiveDuration = 900.0
    service: Shift = Shift(start="05:30", end="21:00")
    dwell: NonNegativeDuration = 20.0  # at each stop
    stop_spacing_m: Annotated[float, Field(gt=0.0, le=10_000.0)] = 400.0

    @field_validator("routes")
    @classmethod
    def _unique_route_names(cls, value):
        if isinstance(value, list):
            seen: dict[str, int] = {}
            for k, route in enumerate(value):
                if route.name in seen:
                    _fail((k, "name"), f"expected unique route names; got {route.name!r} again (also "
                          f"routes[{seen[route.name]}])", route.name)
                seen[route.name] = k
        return value


FLEETS = (DetectorFleet, CameraFleet, AirFleet, NoiseFleet, WaterLevelFleet, RainGaugeFleet, BusFleet)
DEVICE_TYPES = tuple(f.model_fields["type"].default for f in FLEETS)
_INTERNAL_TAGS = {"count", "routes"}  # the routes union's member tags, never written by people


def _untag_fleet(value: object, handler):
    """Validate one fleet, then take pydantic's union-member tags out of error locations: the error in
    `fleets[0]` is at `fleets[0].interval`, not `fleets[0].detector.interval`. (The loader strips tags
    only after a named field; in a list of fleets the tag follows the index.)"""
    try:
        return handler(value)
    except ValidationError as err:
        tag = value.get("type") if isinstance(value, dict) else None
        errors = []
        for e in err.errors():
            loc = list(e["loc"])
            if loc and loc[0] == tag:
                loc = loc[1:]
            if len(loc) > 1 and loc[0] == "routes" and loc[1] in _INTERNAL_TAGS:
                del loc[1]
            error = {key: e[key] for key in ("type", "input", "ctx") if key in e}
            if e["type"] == "union_tag_not_found":  # name the types a person may write
                error["ctx"] = {**e.get("ctx", {}), "expected_tags": ", ".join(map(repr, DEVICE_TYPES))}
            errors.append({**error, "loc": tuple(loc)})
        raise ValidationError.from_exception_data(err.title, errors) from None


Fleet = Annotated[Union[DetectorFleet, CameraFleet, AirFleet, NoiseFleet, WaterLevelFleet, RainGaugeFleet, BusFleet],
                  Field(discriminator="type"), WrapValidator(_untag_fleet)]

_MQTT_URL = re.compile(r"mqtt://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})")


class DevicesSpec(Model):
    """The device fleets observing the twin and how their messages reach the IOC."""

    fleets: list[Fleet] = Field(default_factory=list)
    transport: Literal["inprocess", "mqtt", "http"] = "inprocess"
    mqtt_url: str = "embedded"  # an in-process broker, or mqtt://host:port
    http_url: str | None = None  # NGSI-LD base URL; required for transport http (API key: $CITYTWIN_IOC_KEY)
    qos: Literal[0, 1] = 1
    freshness: PositiveDuration = 600.0  # age under which a link's traffic information counts as real-time

    @field_validator("fleets")
    @classmethod
    def _unique_names(cls, fleets: list) -> list:
        seen: dict[str, int] = {}
        for k, fleet in enumerate(fleets):
            if fleet.name in seen:
                _fail((k, "name"), f"expected unique fleet names (they prefix the device ids); got "
                      f"{fleet.name!r} again (also fleets[{seen[fleet.name]}])", fleet.name)
            seen[fleet.name] = k
        return fleets

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        m = _MQTT_URL.fullmatch(value)
        if value != "embedded" and not (m and 1 <= int(m[2]) <= 65535):
            raise ValueError(f"expected 'embedded' or mqtt://host:port (e.g. mqtt://127.0.0.1:1883); got {value!r}")
        return value

    @field_validator("http_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"expected an http:// or https:// base URL (e.g. http://127.0.0.1:1026); got {value!r}")
        return value

    @model_validator(mode="after")
    def _http_needs_url(self) -> "DevicesSpec":
        if self.transport == "http" and self.http_url is None:
            _fail(("http_url",), "required when transport is http: the NGSI-LD base URL, e.g. "
                  "http://127.0.0.1:1026; got none", None)
        return self


# --- KPIs and the scenario ---------------------------------------------------------------------------

class KpiSpec(Model):
    congested_speed_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5  # a link below this share of free flow is congested


class Scenario(Model):
    name: str
    description: str = ""
    seed: int = 0
    start: ClockTime = 0.0  # the clock time of virtual t = 0
    duration: Annotated[Duration, Field(gt=0.0, le=7 * 86400.0)] = 86400.0
    city: CitySpec = CitySpec()
    traffic: TrafficSpec = TrafficSpec()
    demand: Demand = OdDemand(kind="od")
    hazards: HazardsSpec = HazardsSpec()
    kpi: KpiSpec = KpiSpec()
    population: PopulationSpec | None = None  # residents as agents; needed by `demand: agents` and field reporting
    field_reporting: FieldReportingSpec | None = None
    devices: DevicesSpec | None = None

    @model_validator(mode="after")
    def _population_where_needed(self) -> "Scenario":
        if self.population is None and isinstance(self.demand, AgentDemand):
            raise ValueError("population: required when demand.kind is agents")
        if self.population is None and self.field_reporting is not None:
            raise ValueError("population: required for field_reporting")
        return self
