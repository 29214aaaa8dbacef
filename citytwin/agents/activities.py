"""A clock day of the residents' activities as trips, on Vietnamese schedules; their vehicles as platoons.

Each resident's day is a short chain built from clock times, all as array arithmetic:

- Workers and students: home → work or school, timed to arrive for the start of the day (schools at
  07:00, state offices at 07:30, private offices at 08:00, shops and services spread over the morning);
  some go home for the long Vietnamese lunch break (11:30-13:30) and back; work → home at the end of the
  day (16:30-18:30). Departures subtract a rough door-to-door travel time from the arrival, so people
  who live far leave earlier, and the spread of the morning peak is the spread of the start times.
- Anyone but small children (spec.other_trip_share of them a day): one errand home → other → home — the
  morning market, an afternoon errand or an evening visit for those at home all day, an evening one
  after work for the others — to a place near home weighted by jobs (shops, markets, services).

Clock times are wrapped into the day, so a late return past midnight lands in the small hours of the
same clock day: a steady-state day, as one day of a week of such days would be.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citytwin.twin.scenario.schema import MODES, VN_VEHICLE_MIX, PopulationSpec
from citytwin.twin.traffic.engine import TripBatch

from .population import CHILD, STUDENT, WALK, WALK_DECAY_PER_KM, Population, _categorical

PURPOSES = ("work", "school", "home", "other")
WORK, SCHOOL, HOME, OTHER = range(len(PURPOSES))
VEHICLE_MODES = ("motorbike", "car")  # the trips that load the roads (bus riders ride the buses)

DAY = 86400.0
H, M = 3600.0, 60.0

# Rough door-to-door speeds for timing departures (the engine decides the real travel time): road
# distance is ~1.3 x straight line; buses add walking and waiting.
DETOUR = 1.3
SPEED_MPS = {"motorbike": 22 / 3.6, "car": 20 / 3.6, "bus": 12 / 3.6, "walk": 4.5 / 3.6}
ACCESS_S = {"motorbike": 120.0, "car": 240.0, "bus": 600.0, "walk": 0.0}
UNKNOWN_TRAVEL_S = 900.0  # a hand-built population without places

# Work days: (share of workers, arrival mean, sd, lower and upper clip, hours at work mean, sd, lower,
# upper clip). Start times cluster within minutes of the official hour, so the arrival spreads are narrow
# normals; the services group (shops, markets, restaurants, transport) is broad.
_Sched = tuple[float, float, float, float, float, float, float, float, float]
WORKER_SCHEDULES: tuple[_Sched, ...] = (
    (0.30, 7 * H + 20 * M, 8 * M, 6 * H + 50 * M, 7 * H + 45 * M, 9 * H + 45 * M, 15 * M, 9 * H, 10 * H + 30 * M),
    (0.40, 7 * H + 50 * M, 12 * M, 7 * H + 10 * M, 8 * H + 30 * M, 9 * H + 45 * M, 20 * M, 9 * H, 10 * H + 30 * M),
    (0.30, 8 * H + 30 * M, 90 * M, 4 * H + 30 * M, 13 * H, 9 * H, 90 * M, 5 * H, 13 * H),
)
# Schools begin at 07:00 (pupils arrive 06:40-07:00) and end about 16:45 (after the afternoon session).
SCHOOL_SCHEDULE: _Sched = (1.0, 6 * H + 50 * M, 8 * M, 6 * H + 20 * M, 7 * H + 15 * M,
                           9 * H + 55 * M, 20 * M, 8 * H + 30 * M, 11 * H)

LUNCH_LEAVE = (11 * H + 35 * M, 25 * M)  # clock mean, sd of leaving for lunch at home
LUNCH_BACK = (13 * H + 20 * M, 25 * M)  # and of being back at work
LUNCH_MAX_TRAVEL_S = 30 * M  # nobody crosses town twice for lunch

# Errands of those at home all day: (share, clock mean, sd) — the early market, late morning, the
# afternoon, the evening.
HOME_ERRANDS = ((0.35, 7 * H + 15 * M, 50 * M), (0.20, 9 * H + 45 * M, 60 * M), (0.30, 15 * H + 30 * M, 75 * M),
                (0.15, 19 * H + 30 * M, 60 * M))
AFTER_WORK_GAP = (2.0, 40 * M)  # gamma shape, scale: time at home before an evening errand (mean 80 min)
ERRAND_DWELL = (2.0, 25 * M)  # gamma shape, scale: time at the place (mean 50 min)
ERRAND_DECAY_PER_KM = 1.0  # errands are local: mean ~2 km by motorbike


@dataclass(frozen=True, eq=False)
class PersonTrips:
    """One clock day of the residents' trips, sorted by depart_t."""

    resident: np.ndarray  # int32
    origin: np.ndarray  # int32 node
    dest: np.ndarray  # int32 node
    depart_t: np.ndarray  # float64 virtual s
    mode: np.ndarray  # int8 index into MODES
    purpose: np.ndarray  # int8 index into PURPOSES

    def __len__(self) -> int:
        return len(self.resident)


class _Legs:
    """Trips collected leg by leg before they are sorted into PersonTrips."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, who, origin, dest, clock, purpose) -> None:
        self.parts.append((who, origin, dest, clock, np.full(len(who), purpose, np.int8)))

    def trips(self, pop: Population, day_start_t: float) -> PersonTrips:
        if not self.parts:
            e = np.empty(0, np.int32)
            return PersonTrips(e, e, e, np.empty(0), np.empty(0, np.int8), np.empty(0, np.int8))
        who, origin, dest, clock, purpose = (np.concatenate(c) for c in zip(*self.parts))
        depart = day_start_t + np.mod(clock, DAY)
        order = np.argsort(depart, kind="stable")
        who = who[order]
        return PersonTrips(resident=who.astype(np.int32), origin=origin[order].astype(np.int32),
                           dest=dest[order].astype(np.int32), depart_t=depart[order],
                           mode=pop.mode[who].astype(np.int8), purpose=purpose[order])


def day_trips(pop: Population, spec: PopulationSpec, *, day_start_t: float, rng) -> PersonTrips:
    """The trips of the clock day that starts (its midnight) at virtual time day_start_t."""
    legs = _Legs()
    commuters = np.flatnonzero(pop.work >= 0)
    back = _commutes(pop, commuters, spec, rng, legs)
    # Small children ride along; the others go a little more often so the share of all residents holds.
    grown = pop.age_group != CHILD
    errands = np.flatnonzero(grown & (rng.random(len(pop)) < _boosted(spec.other_trip_share, len(pop), grown.sum())))
    _errands(pop, errands, back, rng, legs)
    return legs.trips(pop, day_start_t)


def _commutes(pop: Population, who: np.ndarray, spec: PopulationSpec, rng, legs: _Legs) -> np.ndarray:
    """Commuters' legs; returns, per resident, the clock time they are back home (NaN if not commuting)."""
    home, work = pop.home[who], pop.work[who]
    travel = _travel_s(pop, who, home, work)
    student = pop.age_group[who] == STUDENT
    kind = np.where(student, len(WORKER_SCHEDULES), _categorical(rng, len(who), [s[0] for s in WORKER_SCHEDULES]))
    arrive, span = _schedule(kind, (*WORKER_SCHEDULES, SCHOOL_SCHEDULE), rng)
    leave = arrive + span
    legs.add(who, home, work, arrive - travel, np.where(student, SCHOOL, WORK))
    legs.add(who, work, home, leave, HOME)

    # Only those near enough, on a day with a lunch break, go home for it; they go more often so that
    # the spec's share of all commuters holds while enough of them can.
    can = (travel <= LUNCH_MAX_TRAVEL_S) & (arrive <= 9.5 * H) & (leave >= 15.5 * H)
    i = np.flatnonzero(can & (rng.random(len(who)) < _boosted(spec.midday_home_share, len(who), can.sum())))
    out = np.clip(_normal(rng, *LUNCH_LEAVE, len(i)), arrive[i] + H, 12.5 * H)
    back_at = np.clip(_normal(rng, *LUNCH_BACK, len(i)), 12.5 * H, 14.25 * H)
    back_to_work = np.maximum(back_at - travel[i], out + 2 * travel[i] + 30 * M)
    legs.add(who[i], work[i], home[i], out, HOME)
    legs.add(who[i], home[i], work[i], back_to_work, np.where(student[i], SCHOOL, WORK))

    at_home = np.full(len(pop), np.nan)
    at_home[who] = leave + travel
    return at_home


def _errands(pop: Population, who: np.ndarray, back_home: np.ndarray, rng, legs: _Legs) -> None:
    home = pop.home[who]
    place = _errand_places(pop, who, rng)
    travel = _travel_s(pop, who, home, place)
    after_work = back_home[who]
    worked = np.isfinite(after_work)
    share, mean, sd = (np.array(c) for c in zip(*HOME_ERRANDS))
    slot = _categorical(rng, len(who), share)
    at_home_start = np.clip(_normal(rng, mean[slot], sd[slot], len(who)), 5 * H, 22 * H)
    evening_start = after_work + rng.gamma(AFTER_WORK_GAP[0], AFTER_WORK_GAP[1], len(who))
    go = np.where(worked, evening_start, at_home_start)
    back = go + travel + rng.gamma(ERRAND_DWELL[0], ERRAND_DWELL[1], len(who))
    legs.add(who, home, place, go, OTHER)
    legs.add(who, place, home, back, HOME)


def _errand_places(pop: Population, who: np.ndarray, rng) -> np.ndarray:
    """Near home, weighted by jobs; walkers nearer. Without places (a population built by hand), the
    work or school place of a random commuter stands in."""
    home = pop.home[who]
    if pop.places is None:
        pool = pop.work[pop.work >= 0]
        pool = pool if len(pool) else pop.home
        return pool[rng.integers(0, len(pool), len(who))] if len(who) else np.empty(0, np.int64)
    place = np.empty(len(who), np.int64)
    walks = pop.mode[who] == WALK
    for sel, decay in ((~walks, ERRAND_DECAY_PER_KM), (walks, max(ERRAND_DECAY_PER_KM, WALK_DECAY_PER_KM))):
        idx = np.flatnonzero(sel)
        if len(idx):
            place[idx] = pop.places.near(home[idx], "jobs", decay, rng)
    return place


def _travel_s(pop: Population, who: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rough door-to-door time of each resident's trip a -> b by their usual mode."""
    if pop.places is None:
        return np.full(len(who), UNKNOWN_TRAVEL_S)
    speed = np.array([SPEED_MPS[m] for m in MODES])
    access = np.array([ACCESS_S[m] for m in MODES])
    mode = pop.mode[who]
    return access[mode] + DETOUR * pop.places.distance_m(a, b) / speed[mode]


def _boosted(share: float, everyone: int, able: int) -> float:
    """The chance among those able that gives `share` of everyone (as far as there are enough able)."""
    return min(1.0, share * everyone / able) if able else 0.0


def _schedule(kind: np.ndarray, table, rng) -> tuple[np.ndarray, np.ndarray]:
    """Arrival clock time and hours at work (s) per person, from each person's schedule row."""
    t = np.array(table, float)[kind]
    arrive = np.clip(_normal(rng, t[:, 1], t[:, 2], len(kind)), t[:, 3], t[:, 4])
    span = np.clip(_normal(rng, t[:, 5], t[:, 6], len(kind)), t[:, 7], t[:, 8])
    return arrive, span


def _normal(rng, mean, sd, n: int) -> np.ndarray:
    return mean + sd * rng.standard_normal(n)


# --- to the engine and the ledger --------------------------------------------------------------------

def vehicle_platoons(trips: PersonTrips, *, mode_pcu: dict[str, float], platoon_pcu: int, network_share: float,
                     rng, id_prefix: str) -> tuple[TripBatch, float]:
    """The motorbike and car trips (origin != dest) as engine platoons of platoon_pcu PCU.

    Each vehicle trip becomes floor(p) platoons plus one more with probability frac(p), where
    p = pcu × network_share / platoon_pcu (below 1 in practice: a kept trip with probability p), so the
    expected PCU on the roads is exactly the trips' PCU × network_share. Returns the batch (sorted by
    departure) and the vehicles one platoon stands for (platoon_pcu / mean PCU of the vehicle trips; 0
    when there are none). A mode missing from mode_pcu takes the Vietnamese mix's PCU."""
    pcu_of = np.zeros(len(MODES))
    for m in VEHICLE_MODES:
        pcu_of[MODES.index(m)] = mode_pcu.get(m, VN_VEHICLE_MIX[m].pcu)
    vehicle = np.isin(trips.mode, [MODES.index(m) for m in VEHICLE_MODES]) & (trips.origin != trips.dest)
    sel = np.flatnonzero(vehicle)
    pcu = pcu_of[trips.mode[sel]]
    expected = pcu * network_share / platoon_pcu
    whole = np.floor(expected)
    count = (whole + (rng.random(len(sel)) < expected - whole)).astype(np.int64)
    keep = np.repeat(sel, count)
    keep = keep[np.argsort(trips.depart_t[keep], kind="stable")]
    ids = np.array([f"{id_prefix}{k}" for k in range(len(keep))], dtype=object)
    batch = TripBatch(ids=ids, origin=trips.origin[keep].astype(np.int64), dest=trips.dest[keep].astype(np.int64),
                      depart_t=trips.depart_t[keep].astype(float))
    return batch, float(platoon_pcu / pcu.mean()) if len(pcu) else 0.0


def hourly_mode_counts(trips: PersonTrips, start_s: float) -> list[tuple[float, str, int]]:
    """(virtual t of the clock-hour start, mode name, count) for the `persons.trips` ledger kind, in time
    then MODES order, non-zero counts only."""
    if len(trips) == 0:
        return []
    hour = np.floor((start_s + trips.depart_t) / H).astype(np.int64)
    first = int(hour.min())
    counts = np.bincount((hour - first) * len(MODES) + trips.mode, minlength=0)
    cells = np.flatnonzero(counts)
    return [(float((first + c // len(MODES)) * H - start_s), MODES[c % len(MODES)], int(counts[c])) for c in cells]
