"""The Mesa model of a run's people: residents as array columns, operators and crews as agents.

Time is the run's SimPy clock, shared with the traffic engine and the hazards. Each clock day the
residents' schedules give that day's trips: they are counted into the ledger, loaded onto the roads
when `demand: agents`, and tell the citizens which problems they pass. Problems, noticing, reporting,
intake, triage and crews are SimPy processes that act through the port to the IOC.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Callable

import mesa
import numpy as np

from citytwin.twin.scenario.schema import MODES, AgentDemand, Scenario
from citytwin.twin.traffic.engine import TripBatch

from .activities import PersonTrips, day_trips, hourly_mode_counts, vehicle_platoons
from .citizens import Citizens
from .context import AgentContext
from .organisation import Organisation
from .population import synthesize_population
from .problems import Problems

STREAMS = ("population", "activities", "platoons", "problems", "citizens", "organisation", "ioc")


def agent_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per concern, after the three the traffic side uses (see run.seed_streams),
    so adding residents never changes the traffic demand, the hazards or the engine of a run."""
    children = np.random.SeedSequence(seed).spawn(3 + len(STREAMS))[3:]
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, children)}


class CityModel(mesa.Model):
    """Residents, and — when the scenario has field reporting — problems, citizens' reports and the IOC
    organisation that handles them."""

    def __init__(self, scenario: Scenario, ctx: AgentContext, streams: dict[str, np.random.Generator], *,
                 add_platoons: Callable[[TripBatch], None] | None = None):
        super().__init__(seed=scenario.seed)
        ctx.model = self
        self.scenario, self.ctx, self.streams = scenario, ctx, streams
        self.add_platoons = add_platoons
        fr = scenario.field_reporting
        citizens_spec = fr.citizens if fr is not None else None
        self.population = synthesize_population(
            ctx.city, scenario.population, streams["population"],
            propensity_mean=citizens_spec.propensity_mean if citizens_spec else 0.0,
            propensity_concentration=citizens_spec.propensity_concentration if citizens_spec else 1.0)
        self.problems = self.organisation = self.citizens = None
        if fr is not None:
            self.problems = Problems(ctx, fr, self.population, streams["problems"])
            self.organisation = Organisation(ctx, fr.organisation, self.problems, streams["organisation"],
                                             problem_kinds=fr.problems)
            self.citizens = Citizens(ctx, self.population, fr.citizens, self.problems, self.organisation,
                                     streams["citizens"])

    @property
    def vehicles_per_platoon(self) -> float:
        """The vehicles one engine platoon stands for, from the mode shares and the classes' PCU."""
        share = self.scenario.population.mode_share
        mix = self.scenario.traffic.vehicle_mix
        shares = {m: share[m] for m in ("motorbike", "car")}
        mean_pcu = sum(s * mix[m].pcu for m, s in shares.items()) / max(sum(shares.values()), 1e-12)
        return self.scenario.traffic.platoon_pcu / mean_pcu

    def start(self) -> None:
        self.ctx.env.process(self._days())
        for part in (self.problems, self.organisation, self.citizens):
            if part is not None:
                part.start()

    def on_flood(self, node: int, t: float) -> None:
        if self.problems is not None:
            self.problems.on_flood(node, t)

    def _days(self):
        """Each clock day the run touches: its trips, from the moment the day (or the run) begins."""
        env, ctx = self.ctx.env, self.ctx
        first_midnight = -(ctx.start_s % 86400.0)
        day = 0
        while first_midnight + day * 86400.0 < ctx.duration_s:
            day_start = first_midnight + day * 86400.0
            if day_start > env.now:
                yield env.timeout(day_start - env.now)
            self._load_day(day, day_trips(self.population, self.scenario.population, day_start_t=day_start,
                                          rng=self.streams["activities"]))
            day += 1

    def _load_day(self, day: int, trips: PersonTrips) -> None:
        ctx = self.ctx
        keep = (trips.depart_t >= ctx.env.now) & (trips.depart_t < ctx.duration_s)
        trips = PersonTrips(**{f.name: getattr(trips, f.name)[keep] for f in fields(trips)})
        rows = hourly_mode_counts(trips, ctx.start_s)
        if rows:
            t, mode, count = zip(*rows)
            ctx.ledger.append_many("persons.trips", t, [""] * len(t), mode=mode, count=[float(c) for c in count])
        if isinstance(self.scenario.demand, AgentDemand) and self.add_platoons is not None:
            traffic = self.scenario.traffic
            mode_pcu = {m: traffic.vehicle_mix[m].pcu for m in MODES if m in traffic.vehicle_mix}
            platoons, _ = vehicle_platoons(trips, mode_pcu=mode_pcu, platoon_pcu=traffic.platoon_pcu,
                                           network_share=self.scenario.demand.network_share,
                                           rng=self.streams["platoons"], id_prefix=f"d{day}-")
            self.add_platoons(platoons)
        if self.citizens is not None:
            self.citizens.set_day(trips)
