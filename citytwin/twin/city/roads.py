"""Default link parameters by road class for a Vietnamese city, in PCU.

Speeds are what urban traffic achieves unimpeded, not the posted limit (50 km/h inside urban areas,
60 km/h on divided arterials, Circular 31/2019/TT-BGTVT). Capacities per lane follow the usual urban
saturation flows of about 1,600-1,800 PCU/h/lane for through lanes, lower for narrow streets; alleys
(kiệt/hẻm, 2-4 m wide) carry motorbikes almost only and are modelled as one slow, low-capacity lane.
Jam density 0.2 PCU/m/lane is one passenger car per 5 m, UXsim's default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoadClass:
    free_flow_kmh: float
    lanes: int  # per direction
    capacity_pcu_h_lane: float
    jam_density_pcu_m_lane: float = 0.2


ROAD_DEFAULTS: dict[str, RoadClass] = {
    "arterial": RoadClass(45.0, 2, 1800.0),
    "bridge": RoadClass(45.0, 2, 1800.0),
    "collector": RoadClass(35.0, 1, 1700.0),
    "local": RoadClass(25.0, 1, 1400.0),
    "alley": RoadClass(15.0, 1, 700.0),
    "connector": RoadClass(30.0, 1, 1500.0),
}
