"""The traffic engine over UXsim in C++ mode (`World(cpp=True)`), advanced in chunks by the twin.

UXsim is mesoscopic: vehicles move in platoons of `platoon_pcu` passenger-car units on Newell's
simplified car-following model, junctions follow the incremental node model, and routes follow a
dynamic user optimum updated every `route_update` seconds. A trip given to this engine is one
platoon; the twin converts a Vietnamese vehicle mix into PCU before it gets here.

What this adapter adds to UXsim: time owned by the twin (`advance_to`), trips added while it runs,
results read back per chunk, and restrictions that compose (an incident on a flooded link).
"""

from __future__ import annotations

import ctypes
import gc

import numpy as np
from uxsim import World

from ..city.model import City
from .engine import LinkState, Restriction, TripBatch, TripResults

_STATE_END = 3
# A closed link still lets what is on it drain out slowly (people wade through or turn back); nothing
# new enters it, and UXsim routes around links with zero inflow capacity.
_CLOSED_OUTFLOW_FACTOR = 0.1
_SIGNAL_GREEN_S = 40.0  # two phases of 40 s: an 80 s cycle, typical of Vietnamese urban junctions


class UXsimEngine:
    def __init__(self, city: City, *, horizon_s: float, platoon_pcu: int = 5, reaction_time_s: float = 1.0,
                 route_update_s: float = 600.0, route_noise: float = 0.01, seed: int = 0, threads: int = 1):
        self.city = city
        self.step_s = platoon_pcu * reaction_time_s
        # One spare step beyond the horizon: UXsim's end-of-simulation analysis (which we do not use,
        # the ledger is our record) runs only when the last step is reached.
        self._tsize = int(np.ceil(horizon_s / self.step_s)) + 1
        self.W = World(name=city.name, deltan=platoon_pcu, reaction_time=reaction_time_s,
                       duo_update_time=route_update_s, duo_noise=route_noise, tmax=self._tsize * self.step_s,
                       print_mode=0, save_mode=0, show_mode=0, show_progress=0, random_seed=seed,
                       vehicle_logging_timestep_interval=0, threads=threads, cpp=True)
        # Skip UXsim's Python-side analyzer matrices: they cost memory per link per time bin and the
        # twin reads state directly from the engine instead.
        self.W._skip_analyzer_setup = True
        add_city(self.W, city)
        self._cpp = self.W._cpp_world
        self._links = [self.W.get_link(str(lid))._cpp_link for lid in city.links.ids]
        self._base_capacity_out = city.links.capacity_pcu_h / 3600.0
        self._base_speed = city.links.free_flow_mps.astype(float).copy()
        self._base_capacity_in = np.array([cl.capacity_in for cl in self._links])
        self._applied = np.ones((len(self._links), 2))  # capacity and speed factors in force
        self._restrictions: dict[str, Restriction] = {}
        self._speed_factor = 1.0
        self._ids = np.empty(0, object)
        self._origin = np.empty(0, np.int64)
        self._dest = np.empty(0, np.int64)
        self._depart = np.empty(0, float)
        self._done = np.empty(0, bool)
        self._arrive = np.empty(0, float)
        self._node_names = [str(n) for n in city.nodes.ids]
        self._started = False
        self._travel_times_at: tuple | None = None  # (time step, factors) the cached travel times are for
        self._travel_times = np.empty(0)

    # --- trips ---------------------------------------------------------------------------------------

    @property
    def time(self) -> float:
        return float(self._cpp.timestep * self.step_s) if self._started else 0.0

    def add_trips(self, trips: TripBatch) -> None:
        if len(trips) == 0:
            return
        depart = np.maximum(np.asarray(trips.depart_t, float), self.time)
        names = self._node_names
        vehicle = self._cpp.get_vehicle_by_index
        for o, d, t in zip(trips.origin.tolist(), trips.dest.tolist(), depart.tolist()):
            self.W.addVehicle(names[o], names[d], t)
            # Each C++ vehicle allocates a preference weight per link that the engine never reads
            # (routing uses the per-destination table): 40 KB a platoon on a 5,000-link city. Freed at
            # once, the next vehicle reuses the block, so a day of demand costs no more than one.
            vehicle(self._cpp.vehicle_count - 1).route_preference = []
        self._ids = np.concatenate([self._ids, np.asarray(trips.ids, dtype=object)])
        self._origin = np.concatenate([self._origin, trips.origin])
        self._dest = np.concatenate([self._dest, trips.dest])
        self._depart = np.concatenate([self._depart, depart])
        self._done = np.concatenate([self._done, np.zeros(len(trips), bool)])
        self._arrive = np.concatenate([self._arrive, np.full(len(trips), np.nan)])

    def advance_to(self, t: float) -> None:
        target = min(int(np.floor(t / self.step_s + 1e-9)), self._tsize - 1)
        if not self._started:
            self.W.finalize_scenario()
            self._started = True
        if target > self._cpp.timestep:
            # The C++ loop directly: UXsim's Python wrapper would re-sync every vehicle into Python
            # dictionaries on each call, which costs more than the simulation when called per chunk.
            # main_loop runs the steps up to and including the one starting at its second argument.
            self._cpp.main_loop(-1.0, float((target - 1) * self.step_s))

    def finished_trips(self) -> TripResults:
        now = self.time
        candidates = np.flatnonzero(~self._done & (self._depart < now))
        get = self._cpp.get_vehicle_by_index
        arrived = []
        for i in candidates.tolist():
            veh = get(i)
            if veh.state == _STATE_END and not veh.flag_trip_aborted:
                # The engine's own times: a platoon leaves at the step boundary after its request.
                self._depart[i] = veh.departure_time_in_second
                self._arrive[i] = veh.departure_time_in_second + veh.travel_time
                arrived.append(i)
        idx = np.asarray(arrived, dtype=np.int64)
        self._done[idx] = True
        return self._results(idx)

    def unfinished_trips(self) -> TripResults:
        return self._results(np.flatnonzero(~self._done))

    def _results(self, idx: np.ndarray) -> TripResults:
        return TripResults(ids=self._ids[idx], origin=self._origin[idx], dest=self._dest[idx],
                           depart_t=self._depart[idx], arrive_t=self._arrive[idx])

    # --- state ---------------------------------------------------------------------------------------

    def link_state(self, links: np.ndarray | None = None) -> LinkState:
        """State of the given links (all by default) now. Reading the cumulative counts copies each
        link's whole count curve out of the engine, so callers that need every link at every snapshot
        should take `counts_at` once at the end instead."""
        selected = np.arange(len(self._links)) if links is None else np.asarray(links)
        state = self.link_snapshot(selected)
        entries, exits = self.counts_at(np.array([self.time]), selected)
        return LinkState(t=state.t, entries=entries[0], exits=exits[0], on_link=state.on_link,
                         speed_mps=state.speed_mps, density_pcu_km=state.density_pcu_km, queue=state.queue)

    def link_snapshot(self, links: np.ndarray | None = None) -> LinkState:
        """Vehicles, speed, density and queue of the given links now, without the cumulative counts."""
        selected = np.arange(len(self._links)) if links is None else np.asarray(links)
        n = len(selected)
        on_link, queue = np.zeros(n), np.zeros(n)
        speed = self._base_speed[selected] * self._applied[selected, 1]
        if self._started:
            deltan = self.W.DELTAN
            for j, k in enumerate(selected.tolist()):
                cl = self._links[k]
                count = cl.vehicle_count
                if count:
                    on_link[j] = count * deltan
                    speed[j] = cl.avg_speed
                    queue[j] = cl.count_vehicles_in_queue() * deltan
        nan = np.full(n, np.nan)
        density = on_link / (self.city.links.length_m[selected] / 1000.0)
        return LinkState(t=self.time, entries=nan, exits=nan.copy(), on_link=on_link, speed_mps=speed,
                         density_pcu_km=density, queue=queue)

    def counts_at(self, times: np.ndarray, links: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative PCU that entered and left each link by each of `times` (all ≤ now): arrays of
        shape (len(times), len(links))."""
        selected = np.arange(len(self._links)) if links is None else np.asarray(links)
        entries = np.zeros((len(times), len(selected)))
        exits = np.zeros_like(entries)
        if not self._started:
            return entries, exits
        # The curves hold the count at the start of each step; a time's value is the last step before it.
        idx = np.clip(np.floor(np.asarray(times) / self.step_s + 1e-9).astype(int) - 1, 0, self._tsize - 1)
        for j, k in enumerate(selected.tolist()):
            cl = self._links[k]
            entries[:, j] = cl.get_cum_arrival_np()[idx]
            exits[:, j] = cl.get_cum_departure_np()[idx]
        return entries, exits

    def link_travel_times(self) -> np.ndarray:
        free = self.city.links.length_m / (self._base_speed * self._applied[:, 1])
        if not self._started:
            return free
        idx = max(self._cpp.timestep - 1, 0)
        key = (idx, self._applied.tobytes())
        if self._travel_times_at != key:  # each link's whole series is copied to read one value: once a step
            self._travel_times = np.array([max(cl.get_traveltime_instant_np()[idx], f)
                                           for cl, f in zip(self._links, free)])
            self._travel_times_at = key
        return self._travel_times.copy()

    # --- restrictions --------------------------------------------------------------------------------

    def restrict(self, key: str, restriction: Restriction) -> None:
        previous = self._restrictions.get(key)
        self._restrictions[key] = restriction
        self._apply({restriction.link} | ({previous.link} if previous else set()))

    def lift(self, key: str) -> None:
        restriction = self._restrictions.pop(key, None)
        if restriction is not None:
            self._apply({restriction.link})

    def set_speed_factor(self, factor: float) -> None:
        self._speed_factor = factor
        self._apply(set(range(len(self._links))))

    def _apply(self, links: set[int]) -> None:
        capacity = {k: 1.0 for k in links}
        speed = {k: self._speed_factor for k in links}
        for r in self._restrictions.values():
            if r.link in capacity:
                capacity[r.link] *= r.capacity_factor
                speed[r.link] *= r.speed_factor
        for k in sorted(links):
            self._set_link(k, capacity[k], speed[k])

    def _set_link(self, k: int, capacity_factor: float, speed_factor: float) -> None:
        cl = self._links[k]
        if speed_factor != self._applied[k, 1]:
            cl.change_free_flow_speed(float(self._base_speed[k] * speed_factor))
        if capacity_factor != self._applied[k, 0]:
            closed = capacity_factor <= 0.0
            out_factor = _CLOSED_OUTFLOW_FACTOR if closed else capacity_factor
            cl.capacity_out = float(self._base_capacity_out[k] * out_factor)
            cl.capacity_in = 0.0 if closed else float(self._base_capacity_in[k])
            if closed:
                cl.capacity_in_remain = 0.0
        self._applied[k] = (capacity_factor, speed_factor)

    def close(self) -> None:
        """Release the engine's memory now (UXsim's world refers to itself, so only a collection frees it)."""
        self._links, self._cpp, self.W = [], None, None
        gc.collect()
        _return_freed_heap()


def _return_freed_heap() -> None:
    """Give the engine's freed memory back to the OS: Arrow, which reads the ledger next, allocates from
    its own pool and cannot reuse glibc's free lists. Elsewhere than glibc there is nothing to do."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def add_city(W: World, city: City) -> None:
    """Nodes, signals and links of `city` into a UXsim world (links carry their capacity as outflow capacity)."""
    groups = _signal_groups(city)
    for i, nid in enumerate(city.nodes.ids):
        signal = [_SIGNAL_GREEN_S, _SIGNAL_GREEN_S] if i in groups else [0]
        W.addNode(str(nid), float(city.nodes.x[i]), float(city.nodes.y[i]), signal=signal)
    links = city.links
    for k, lid in enumerate(links.ids):
        group = groups.get(int(links.dst[k]), {}).get(k, 0)
        W.addLink(str(lid), str(city.nodes.ids[links.src[k]]), str(city.nodes.ids[links.dst[k]]),
                  length=float(links.length_m[k]), free_flow_speed=float(links.free_flow_mps[k]),
                  jam_density_per_lane=float(links.jam_density_pcu_m[k]), number_of_lanes=int(links.lanes[k]),
                  signal_group=[group], capacity_out=float(links.capacity_pcu_h[k] / 3600.0))


def _signal_groups(city: City) -> dict[int, dict[int, int]]:
    """Signal phase of each approach at signalised junctions: north-south approaches green in phase 0,
    east-west in phase 1. A junction whose approaches all fall in one phase is left unsignalised."""
    links, nodes = city.links, city.nodes
    groups: dict[int, dict[int, int]] = {}
    for node in np.flatnonzero(nodes.signalised):
        incoming = np.flatnonzero(links.dst == node)
        dx = nodes.x[node] - nodes.x[links.src[incoming]]
        dy = nodes.y[node] - nodes.y[links.src[incoming]]
        phase = (np.abs(dx) > np.abs(dy)).astype(int)
        if 0 < phase.sum() < len(phase):
            groups[int(node)] = {int(k): int(p) for k, p in zip(incoming, phase)}
    return groups
