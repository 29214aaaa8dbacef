"""Stationary sensor fleets: traffic detectors, air quality, noise, water level and rain gauges.

Every fleet samples all its devices at once from a `World` (columns, not an object per device) and returns
a `Batch` whose rows satisfy the encoders' bounds. The models are deliberately small, physically shaped
and calibrated to what such sensors read on Vietnamese streets; the constants below say where they come
from. Randomness (Poisson counts, sensor noise, unit-to-unit spread) comes only from the fleet's generator.

What each fleet keeps between samples, and why:
- air: a decaying record of recent rain (wet deposition lowers particle levels for hours after a shower);
- rain gauge: the last sample time (it integrates rain between readings) and the water left in each
  tipping bucket (a reading is a whole number of tips; what is short of a tip counts next time).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree

from citytwin.twin.city.model import City
from citytwin.twin.traffic.engine import LinkState

from .batch import Batch
from .encoders import FLOOD_RISK, AirQuality, Noise, Observation, RainGauge, TrafficFlow, WaterLevel

# -- detectors --------------------------------------------------------------------------------------------
# Speed error of a dual-loop or radar detector: a few per cent (FHWA Traffic Detector Handbook, 3rd ed.).
DETECTOR_SPEED_SD = 0.05

# -- air quality -------------------------------------------------------------------------------------------
# Diurnal shape of urban background pollution by clock hour (mean 1): rush-hour rises at 07-09 and 18-21,
# a mid-afternoon low when the mixed layer is deepest, and a shallow night-time boundary layer keeping
# levels up at night. The shape of hourly PM2.5 at Vietnamese urban stations (Hà Nội, Đà Nẵng) in the
# literature; it is applied to every pollutant's background.
_BACKGROUND_SHAPE = np.array([0.95, 0.90, 0.86, 0.85, 0.86, 0.92, 1.05, 1.25, 1.30, 1.15, 1.00, 0.90,
                              0.83, 0.79, 0.77, 0.79, 0.86, 1.00, 1.18, 1.28, 1.25, 1.15, 1.05, 1.00])
_BACKGROUND_SHAPE = _BACKGROUND_SHAPE / _BACKGROUND_SHAPE.mean()
# Urban-background NO2 and CO, by analogy with the PM2.5 background the scenario sets: Vietnamese city
# stations report annual NO2 of ~10-30 µg/m³ and CO of a few tenths of a mg/m³ away from roads.
NO2_BACKGROUND = 15.0   # µg/m³
CO_BACKGROUND = 0.5     # mg/m³
# Traffic increments per 1,000 veh/h of the motorbike-heavy mix at the reference distance. Chosen so a busy
# arterial junction (~25,000 distance-weighted veh/h) adds ~+12 µg/m³ PM2.5 (roadside PM2.5 in Hà Nội and
# Đà Nẵng runs ~1.3-1.6x the urban background), ~+35 µg/m³ NO2 (kerbside NO2 of 40-70 µg/m³) and ~+1 mg/m³
# CO (motorbikes are the main CO source; kerbside CO of 1-3 mg/m³); a quiet alley adds next to nothing.
PM25_PER_KVEH = 0.5      # µg/m³
NO2_PER_KVEH = 1.4       # µg/m³
CO_PER_KVEH = 0.04       # mg/m³
# PM2.5/PM10 ≈ 0.6 in Vietnamese cities (resuspended road dust adds the coarse part), so PM10 ≈ 1.6 x PM2.5.
PM10_PER_PM25 = 1.6
# Concentration near a road falls roughly as 1/distance (a line source's plume grows linearly with
# distance); inside the reference distance (the sensor on its pole at the kerb) it does not grow further.
AIR_REF_DISTANCE_M = 10.0
# Stop-and-go traffic emits more per vehicle-km (idling, acceleration): COPERT speed curves rise steeply
# below ~30 km/h. A square-root factor around 30 km/h, bounded, keeps the shape without a full inventory.
_EMISSION_REF_KMH = 30.0
# Wet deposition: rain scavenges particles efficiently, NO2 a little (weakly soluble), CO not at all.
# The memory of recent rain decays with this time constant: pollution builds back up over hours, so the
# evening after an afternoon downpour is still clean and the next morning is back to normal.
RAIN_MEMORY_S = 3 * 3600.0
NO2_WASHOUT_SHARE = 0.3
# Even a typhoon does not wash the air clean: secondary fine aerosol and fresh emissions remain, and PM2.5
# after heavy rain in Vietnamese cities settles at ~5-10 µg/m³, about a quarter of the usual background.
WASHOUT_FLOOR = 0.25
# Low-cost sensors: ~10 % reading-to-reading noise and a unit-to-unit calibration spread of a few per cent
# (US EPA Air Sensor Toolbox evaluations of PM and electrochemical gas sensors).
AIR_NOISE_CV = 0.10
AIR_UNIT_CV = 0.05

# -- noise ---------------------------------------------------------------------------------------------------
# LAeq of a link carrying Q veh/h at v km/h, at the reference distance, RLS-90 style:
#   L = NOISE_A + 10·log10(Q) + D_v(v),  D_v = 10·log10(1 + (0.02 v)^3) - 10·log10(2)   (0 dB at 50 km/h)
# RLS-90 holds the speed term constant below 30 km/h (propulsion, not rolling, noise dominates). NOISE_A is
# an average pass-by of the VN mix with a sound exposure level of ~72.6 dB(A) at 10 m at 50 km/h
# (10·log10(3600) = 35.6 dB turns one vehicle an hour into LAeq). That puts a two-way arterial of
# 2 x 4,000 veh/h at 30 km/h at ~74 dB(A), a busy junction at ~78-80 and a quiet street at night at
# ~50-55, the ranges measured on motorbike-heavy streets in Hà Nội and Hồ Chí Minh City.
NOISE_A = 37.0
NOISE_REF_DISTANCE_M = 10.0  # kerb to the lanes' centre; a line source loses 3 dB per doubling beyond it
_NOISE_MIN_KMH = 30.0
# Ambient sound that is not road traffic (people, shops, the distant city), dB(A) by clock hour.
_AMBIENT_DBA = np.array([45, 44, 43, 43, 44, 47, 51, 54, 55, 55, 55, 55, 54, 54, 55, 55, 55, 55, 55, 55, 54,
                         52, 49, 47], float)
# LAmax - LAeq: sparse traffic lets single pass-bys (and horns) stand out, ~15 dB; dense traffic is a steady
# roar, ~8 dB above its mean.
LAMAX_EXCESS_DB = (8.0, 15.0)
_LAMAX_FLOW_SCALE = 1000.0  # veh/h near the sensor at which the excess has fallen most of the way
NOISE_SD_DB = 1.0  # a class-2 sound level meter is good to ±1.4 dB

# -- water level and rain -------------------------------------------------------------------------------------
GAUGE_SD_M = 0.005  # ultrasonic/radar level gauges: a few mm
# Flood warning states by level / warning level: none < 0.5 ≤ low < 1 ≤ moderate < 1.5 ≤ high < 2.5 ≤ severe.
WARNING_RATIOS = np.array([0.5, 1.0, 1.5, 2.5])
BUCKET_MM = 0.2  # a tipping bucket's resolution, the usual for hydrological networks
# Wind makes gauges catch less than falls: 2-10 % for rain (WMO-No. 8, Guide to Instruments, ch. 6).
GAUGE_CATCH = (0.96, 0.02)  # mean, sd of each gauge's catch ratio


# -- shared pieces -------------------------------------------------------------------------------------------

def device_ids(name: str, n: int) -> np.ndarray:
    return np.array([f"{name}-{k:04d}" for k in range(n)], dtype=object)


def link_flow_veh_h(state: LinkState, vehicles_per_pcu: float, links: np.ndarray | None = None) -> np.ndarray:
    """Vehicles per hour through each link: the fundamental relation q = k·v, from PCU to vehicles."""
    density = state.density_pcu_km if links is None else state.density_pcu_km[links]
    speed = state.speed_mps if links is None else state.speed_mps[links]
    q = np.nan_to_num(density * speed * 3.6, nan=0.0, posinf=0.0)
    return np.maximum(q, 0.0) * vehicles_per_pcu


def clock_hour(start_s: float, t: float) -> float:
    """Fractional clock hour of virtual time t, for a run whose t = 0 is `start_s` seconds after midnight."""
    return ((start_s + t) / 3600.0) % 24.0


def by_hour(profile: np.ndarray, hour: float) -> float:
    """An hourly profile (values at whole hours) read at a fractional hour, interpolated around midnight."""
    h0 = int(hour) % 24
    f = hour - int(hour)
    return float(profile[h0] * (1 - f) + profile[(h0 + 1) % 24] * f)


def links_near(city: City, nodes: np.ndarray, radius_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(device, link, distance m) for every link whose segment passes within radius_m of a device's node.

    Links are straight segments between their nodes. Long links are found through points sampled along
    them, so one slow KD-tree query covers links of any length."""
    links = city.links
    nodes = np.asarray(nodes, np.int64)
    if not len(nodes) or not len(links):
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    ax, ay = city.nodes.x[links.src], city.nodes.y[links.src]
    bx, by = city.nodes.x[links.dst], city.nodes.y[links.dst]
    seg = np.hypot(bx - ax, by - ay)
    step = max(radius_m, 10.0)
    # Points every ≤ step along each link: any point of the segment lies within step/2 of one of them.
    per_link = np.ceil(seg / step).astype(np.int64) + 1
    owner = np.repeat(np.arange(len(links)), per_link)
    first = np.cumsum(per_link) - per_link
    frac = (np.arange(per_link.sum()) - first[owner]) / np.maximum(per_link[owner] - 1, 1)
    points = np.column_stack([ax[owner] + frac * (bx - ax)[owner], ay[owner] + frac * (by - ay)[owner]])
    px, py = city.nodes.x[nodes], city.nodes.y[nodes]
    hits = cKDTree(points).query_ball_point(np.column_stack([px, py]), radius_m + step / 2 + 1e-6)
    sizes = np.fromiter((len(h) for h in hits), np.int64, len(hits))
    device = np.repeat(np.arange(len(nodes)), sizes)
    link = owner[np.concatenate([np.asarray(h, np.int64) for h in hits])] if sizes.sum() else np.empty(0, np.int64)
    pair = np.sort(device * len(links) + link)  # a long link is hit through several of its points: once each
    pair = pair[np.r_[True, pair[1:] != pair[:-1]]] if len(pair) else pair
    device, link = pair // len(links), pair % len(links)
    dist = _point_segment_distance(px[device], py[device], ax[link], ay[link], bx[link], by[link])
    keep = dist <= radius_m
    return device[keep], link[keep], dist[keep]


def _point_segment_distance(px, py, ax, ay, bx, by) -> np.ndarray:
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    s = np.clip(((px - ax) * dx + (py - ay) * dy) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    return np.hypot(px - (ax + s * dx), py - (ay + s * dy))


class _Neighbourhood:
    """Each device's nearby links as a sparse (device x link) matrix of distance weights, over only the
    links some device sees, so a sample is one sparse product."""

    def __init__(self, city: City, nodes: np.ndarray, radius_m: float, weight):
        device, link, dist = links_near(city, nodes, radius_m)
        self.links, column = np.unique(link, return_inverse=True)
        self.matrix = csr_matrix((weight(dist), (device, column)), shape=(len(nodes), len(self.links)))
        self.flags = csr_matrix((np.ones(len(dist)), (device, column)), shape=self.matrix.shape)


class _Fleet:
    """What every stationary fleet has: its spec, devices, sites and sampling interval."""

    device_type: ClassVar[str] = ""
    kind: ClassVar[type[Observation]] = Observation

    def __init__(self, spec: Any, city: City, sites: Any, rng: np.random.Generator, *, start_s: float = 0.0):
        self.spec, self.city, self.sites, self.rng = spec, city, sites, rng
        self.start_s = float(start_s)
        self.interval_s = float(spec.interval)
        if not self.interval_s > 0:
            raise ValueError(f"{spec.name}: the sampling interval must be positive, got {self.interval_s}")
        self.n = len(sites.lon)
        self.device_ids = device_ids(spec.name, self.n)

    def _nodes(self) -> np.ndarray:
        """Node-sited fleets: each device's junction."""
        nodes = np.asarray(self.sites.nodes, np.int64)
        if (nodes < 0).any() or (nodes >= len(self.city.nodes)).any():
            raise ValueError(f"{self.spec.name}: a {self.device_type} device needs a junction (node) site")
        return nodes

    def _span(self, t: float) -> tuple[float, float]:
        """The interval a reading at t covers: the sampling interval, not before the run began."""
        return max(t - self.interval_s, 0.0), t

    def _batch(self, t: float, values: dict[str, np.ndarray], meta: dict[str, np.ndarray]) -> Batch:
        return Batch(self.kind, np.arange(self.n), np.full(self.n, float(t)), values, meta)


def _rain_over(world: Any, t0: float, t1: float) -> float:
    """mm of rain over [t0, t1]: exact where the world knows its rain schedule, else at today's rate."""
    if t1 <= t0:
        return 0.0
    exact = getattr(world, "rain_mm", None)
    if exact is not None:
        return float(exact(t0, t1))
    return float(world.rain_mm_h()) * (t1 - t0) / 3600.0


# -- traffic detectors ----------------------------------------------------------------------------------------

def detector_readings(links: np.ndarray, t: float, interval_s: float, world: Any,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """TrafficFlow columns (by field name) of detectors on `links` (indices, all ≥ 0) for [t - interval, t].

    Vehicles counted ~ Poisson(q·Δt), q = k·v (the fundamental relation) turned from PCU into vehicles: the
    engine moves platoons, a detector counts vehicles passing one at a time. Occupancy is the share of the
    link's lane length that vehicles fill, on_link / (length · lanes · jam density), i.e. the share of time
    a loop is covered. Speed is the link's mean speed with a few per cent of measurement error; an empty link
    reads its free-flow speed (the engine reports that) and counts nothing."""
    links = np.asarray(links, np.int64)
    n = len(links)
    state = world.traffic()
    t0 = max(t - interval_s, 0.0)
    q = link_flow_veh_h(state, world.vehicles_per_pcu, links)
    counts = rng.poisson(q * (t - t0) / 3600.0).astype(np.int64)
    city_links = world.city.links
    lane_capacity = city_links.length_m[links] * city_links.lanes[links] * city_links.jam_density_pcu_m[links]
    occupancy = np.clip(np.nan_to_num(state.on_link[links] / lane_capacity), 0.0, 1.0)
    speed = np.nan_to_num(state.speed_mps[links] * 3.6) * (1.0 + DETECTOR_SPEED_SD * rng.standard_normal(n))
    return {"intensity": counts, "occupancy": np.round(occupancy, 4),
            "average_vehicle_speed": np.round(np.maximum(speed, 0.0), 1),
            "date_observed_from": np.full(n, t0), "date_observed_to": np.full(n, float(t))}


class DetectorFleet(_Fleet):
    """Loop or radar detectors on links: vehicles, occupancy and mean speed over each interval."""

    device_type = "detector"
    kind = TrafficFlow

    def __init__(self, spec: Any, city: City, sites: Any, rng: np.random.Generator, *, start_s: float = 0.0):
        super().__init__(spec, city, sites, rng, start_s=start_s)
        self.links = np.asarray(sites.links, np.int64)
        if (self.links < 0).any() or (self.links >= len(city.links)).any():
            raise ValueError(f"{spec.name}: expected links for a detector (every detector sits on a link)")

    def sample(self, t: float, world: Any) -> Batch:
        values = detector_readings(self.links, t, self.interval_s, world, self.rng)
        return self._batch(t, values, {"link": self.links, "value": values["average_vehicle_speed"]})


# -- air quality ----------------------------------------------------------------------------------------------

class AirFleet(_Fleet):
    """Low-cost air-quality stations (PM2.5, PM10, NO2, CO) at junctions.

    Level = diurnal urban background + the traffic on links within traffic_radius_m (vehicle flow weighted
    by 1/distance, more per vehicle in stop-and-go), times a wet-deposition factor exp(-washout_per_mm ·
    recent rain) above WASHOUT_FLOOR (particles fully, NO2 in part, CO not), with each unit's calibration
    spread and reading noise."""

    device_type = "air"
    kind = AirQuality

    def __init__(self, spec: Any, city: City, sites: Any, rng: np.random.Generator, *, start_s: float = 0.0):
        super().__init__(spec, city, sites, rng, start_s=start_s)
        self._near = _Neighbourhood(city, self._nodes(), float(spec.traffic_radius_m),
                                    lambda d: AIR_REF_DISTANCE_M / np.maximum(d, AIR_REF_DISTANCE_M))
        self._gain = np.clip(1.0 + AIR_UNIT_CV * rng.standard_normal((4, self.n)), 0.5, 1.5)
        self.recent_rain_mm = 0.0
        self._last_t: float | None = None

    def traffic_kveh(self, world: Any) -> np.ndarray:
        """Distance-weighted traffic near each station, in thousands of vehicles an hour at 10 m."""
        links = self._near.links
        if not len(links):
            return np.zeros(self.n)
        state = world.traffic()
        kmh = state.speed_mps[links] * 3.6
        stop_and_go = np.clip(np.sqrt(_EMISSION_REF_KMH / np.maximum(np.nan_to_num(kmh), 1.0)), 0.8, 2.0)
        emission = link_flow_veh_h(state, world.vehicles_per_pcu, links) * stop_and_go
        return self._near.matrix @ emission / 1000.0

    def _update_rain(self, t: float, world: Any) -> float:
        """Recent rain (mm, decaying with RAIN_MEMORY_S) as of t, counting the rain since the last sample as
        fallen at the middle of the gap."""
        t0 = self._span(t)[0] if self._last_t is None else self._last_t
        gap = max(t - t0, 0.0)
        fresh = _rain_over(world, t0, t)
        self.recent_rain_mm = self.recent_rain_mm * np.exp(-gap / RAIN_MEMORY_S) + \
            fresh * np.exp(-gap / (2 * RAIN_MEMORY_S))
        self._last_t = t if self._last_t is None else max(t, self._last_t)
        return self.recent_rain_mm

    def sample(self, t: float, world: Any) -> Batch:
        background = by_hour(_BACKGROUND_SHAPE, clock_hour(self.start_s, t))
        traffic = self.traffic_kveh(world)
        washout = float(self.spec.washout_per_mm) * self._update_rain(t, world)
        pm25 = (float(self.spec.background_pm25) * background + PM25_PER_KVEH * traffic) * _washed(washout)
        no2 = (NO2_BACKGROUND * background + NO2_PER_KVEH * traffic) * _washed(NO2_WASHOUT_SHARE * washout)
        co = CO_BACKGROUND * background + CO_PER_KVEH * traffic
        noise = 1.0 + AIR_NOISE_CV * self.rng.standard_normal((4, self.n))
        true = (pm25, PM10_PER_PM25 * pm25, no2, co)
        pm25, pm10, no2, co = (np.maximum(x * self._gain[k] * noise[k], 0.0) for k, x in enumerate(true))
        values = {"pm25": np.round(pm25, 1), "pm10": np.round(pm10, 1), "no2": np.round(no2, 1),
                  "co": np.round(co, 3)}
        return self._batch(t, values, {"node": self.sites.nodes, "value": values["pm25"]})


def _washed(exponent: float) -> float:
    """What is left after wet deposition: exp(-washout_per_mm · recent mm), above the floor rain leaves."""
    return WASHOUT_FLOOR + (1.0 - WASHOUT_FLOOR) * float(np.exp(-exponent))


# -- noise ----------------------------------------------------------------------------------------------------

def speed_correction_db(kmh: np.ndarray) -> np.ndarray:
    """RLS-90's speed term for light vehicles relative to 50 km/h (constant below 30 km/h)."""
    v = np.maximum(np.nan_to_num(kmh), _NOISE_MIN_KMH)
    return 10.0 * np.log10(1.0 + (0.02 * v) ** 3) - 10.0 * np.log10(2.0)


class NoiseFleet(_Fleet):
    """Sound level meters at junctions: LAeq and LAmax over each interval from the road traffic nearby.

    The vehicles passing on each link within traffic_radius_m in the interval are drawn (Poisson), each
    contributing sound energy by its speed (RLS-90) and its distance (line source, -3 dB per doubling beyond
    10 m); energies add, with the ambient sound of the hour."""

    device_type = "noise"
    kind = Noise

    def __init__(self, spec: Any, city: City, sites: Any, rng: np.random.Generator, *, start_s: float = 0.0):
        super().__init__(spec, city, sites, rng, start_s=start_s)
        self._near = _Neighbourhood(city, self._nodes(), float(spec.traffic_radius_m),
                                    lambda d: NOISE_REF_DISTANCE_M / np.maximum(d, NOISE_REF_DISTANCE_M))

    def sample(self, t: float, world: Any) -> Batch:
        t0, t1 = self._span(t)
        hours = max(t1 - t0, 1.0) / 3600.0
        ambient = 10.0 ** (by_hour(_AMBIENT_DBA, clock_hour(self.start_s, t)) / 10.0)
        energy, flow = np.zeros(self.n), np.zeros(self.n)
        links = self._near.links
        if len(links):
            state = world.traffic()
            q = link_flow_veh_h(state, world.vehicles_per_pcu, links)
            passing = self.rng.poisson(q * hours)
            per_vehicle = 10.0 ** ((NOISE_A + speed_correction_db(state.speed_mps[links] * 3.6)) / 10.0)
            energy = self._near.matrix @ (passing * per_vehicle) / hours
            flow = self._near.flags @ q
        laeq = 10.0 * np.log10(energy + ambient) + NOISE_SD_DB * self.rng.standard_normal(self.n)
        lo, hi = LAMAX_EXCESS_DB
        excess = lo + (hi - lo) * np.exp(-flow / _LAMAX_FLOW_SCALE) + self.rng.standard_normal(self.n)
        laeq = np.round(np.clip(laeq, 0.0, 240.0), 1)
        lamax = np.round(np.clip(laeq + np.clip(excess, lo, hi), 0.0, 250.0), 1)
        return self._batch(t, {"laeq": laeq, "lamax": lamax}, {"node": self.sites.nodes, "value": laeq})


# -- water level and rain --------------------------------------------------------------------------------------

def warning_states(level_m: np.ndarray, warning_level_m: float) -> np.ndarray:
    """FLOOD_RISK state of each level against the warning level (object array of str)."""
    band = np.searchsorted(WARNING_RATIOS, np.asarray(level_m, float) / warning_level_m, side="right")
    return np.asarray(FLOOD_RISK, dtype=object)[band]


class WaterLevelFleet(_Fleet):
    """Level gauges at junctions (drains, low streets): standing water plus a few mm of gauge noise, and the
    warning state against the fleet's warning level."""

    device_type = "water_level"
    kind = WaterLevel

    def __init__(self, spec: Any, city: City, sites: Any, rng: np.random.Generator, *, start_s: float = 0.0):
        super().__init__(spec, city, sites, rng, start_s=start_s)
        self._at = self._nodes()
        self.warning_level_m = float(spec.warning_level_m)
        if not self.warning_level_m > 0:
            raise ValueError(f"{spec.name}: warning_level_m must be positive, got {self.warning_level_m}")

    def sample(self, t: float, world: Any) -> Batch:
        depth = np.nan_to_num(np.asarray(world.water_depth_m(), float)[self._at])
        level = np.round(np.maximum(depth + GAUGE_SD_M * self.rng.standard_normal(self.n), 0.0), 3)
        values = {"level_m": level, "warning_level_m": np.full(self.n, self.warning_level_m),
                  "warning_state": warning_states(level, self.warning_level_m)}
        return self._batch(t, values, {"node": self.sites.nodes, "value": level})


class RainGaugeFleet(_Fleet):
    """Tipping-bucket rain gauges: the rain since the last reading, in whole tips of BUCKET_MM, each gauge
    catching a little less than falls (wind)."""

    device_type = "rain_gauge"
    kind = RainGauge

    def __init__(self, spec: Any, city: City, sites: Any, rng: np.random.Generator, *, start_s: float = 0.0):
        super().__init__(spec, city, sites, rng, start_s=start_s)
        self._nodes()
        mean, sd = GAUGE_CATCH
        self._catch = np.clip(mean + sd * rng.standard_normal(self.n), 0.8, 1.0)
        self._bucket = np.zeros(self.n)  # mm collected short of the next tip
        self._last_t: float | None = None

    def sample(self, t: float, world: Any) -> Batch:
        t0 = self._span(t)[0] if self._last_t is None else min(self._last_t, t)
        self._last_t = max(t, self._last_t if self._last_t is not None else t)
        collected = self._bucket + self._catch * _rain_over(world, t0, t)
        tips = np.floor(collected / BUCKET_MM + 1e-9)
        self._bucket = np.maximum(collected - tips * BUCKET_MM, 0.0)
        mm = np.round(tips * BUCKET_MM, 1)
        rate = mm * 3600.0 / (t - t0) if t > t0 else np.zeros(self.n)
        return self._batch(t, {"precipitation": mm}, {"node": self.sites.nodes, "value": rate})


SENSOR_FLEETS: dict[str, type[_Fleet]] = {
    fleet.device_type: fleet for fleet in (DetectorFleet, AirFleet, NoiseFleet, WaterLevelFleet, RainGaugeFleet)}

__all__ = ["DetectorFleet", "AirFleet", "NoiseFleet", "WaterLevelFleet", "RainGaugeFleet", "SENSOR_FLEETS",
           "detector_readings", "link_flow_veh_h", "links_near", "warning_states", "speed_correction_db"]
