"""What every agent component of a run shares: the clock, the city, the engine, the ledger, the port."""

from __future__ import annotations

from dataclasses import dataclass

import mesa
import simpy

from citytwin.twin.city.model import City
from citytwin.twin.ledger import Ledger
from citytwin.twin.ports.base import FieldReportPort
from citytwin.twin.traffic.engine import TrafficEngine


@dataclass
class AgentContext:
    env: simpy.Environment  # virtual seconds since the scenario start
    model: mesa.Model  # owns the individual agents (operators, crews)
    city: City
    engine: TrafficEngine
    ledger: Ledger
    port: FieldReportPort
    start_s: float  # clock time (seconds after midnight) of virtual t = 0
    duration_s: float

    def clock(self, t: float | None = None) -> float:
        """Seconds after midnight at virtual time t (now by default)."""
        return (self.start_s + (self.env.now if t is None else t)) % 86400.0
