"""The scenario: one typed, validated description of a run. Unknown keys are errors.

Every field has a default a planner can live with, so a scenario names only what it changes;
`extends:` (handled by the loader) makes variants a few lines long.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

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


Demand = Annotated[Union[OdDemand, TntpDemand], Field(discriminator="kind")]


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
