"""Engine parity and overhead: the same network and OD demand in bare UXsim (C++ mode) and through citytwin.

Both sides get the same synthetic district, the same platoons (same origins, destinations and
departure times, drawn once by citytwin's demand model with the run's seed) and the same engine seed.
Bare UXsim is what a UXsim user writes: build the World, add the vehicles, `exec_simulation()`, read
the analyzer's average travel time. citytwin is `citytwin run` without the HTML report: scenario,
city, demand, engine stepped in chunks by the SimPy clock, every trip and link snapshot into the
Parquet ledger, KPIs from the ledger. Each side runs in its own fresh process; the time is the work,
not the imports. Targets: wall-time ratio ≤ 1.3, mean travel time within 2 %.

    .venv/bin/python benchmarks/engine_parity.py [--seeds 1 2 3] [--scenario scenarios/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from _common import REPO, run_measured, write

CITYTWIN = """
import json, time
from citytwin.twin.scenario import load_scenario
from citytwin.twin.run import run_scenario
sc = load_scenario({scenario!r}, overrides={overrides!r})
t = time.perf_counter()
r = run_scenario(sc, {out!r}, seed={seed}, write_report=False)
k = r.kpis["kpis"]
print(json.dumps({{"work_s": time.perf_counter() - t, "mean_travel_time_min": k["mean_travel_time"]["value"],
                  "trips_completed_veh": k["trips_completed"]["value"]}}))
"""

BARE = """
import json, time
import numpy as np
from uxsim import World
from citytwin.twin.scenario import load_scenario
from citytwin.twin.city import build_city
from citytwin.twin.run import seed_streams, scenario_demand
from citytwin.twin.traffic.uxsim_engine import add_city
sc = load_scenario({scenario!r}, overrides={overrides!r})
city = build_city(sc.city)
demand_rng, _, engine_seed = seed_streams({seed})
trips = scenario_demand(sc, city, demand_rng)
names = [str(n) for n in city.nodes.ids]
step = sc.traffic.platoon_pcu * sc.traffic.reaction_time_s
t = time.perf_counter()
W = World(deltan=sc.traffic.platoon_pcu, reaction_time=sc.traffic.reaction_time_s, duo_update_time=sc.traffic.route_update,
          duo_noise=sc.traffic.route_noise, tmax=sc.duration + step, random_seed=engine_seed, print_mode=0,
          vehicle_logging_timestep_interval={logging}, cpp=True)
add_city(W, city)
for o, d, dep in zip(trips.origin.tolist(), trips.dest.tolist(), trips.depart_t.tolist()):
    W.addVehicle(names[o], names[d], dep)
W.exec_simulation()
tt = W.analyzer.average_travel_time
print(json.dumps({{"work_s": time.perf_counter() - t, "mean_travel_time_min": tt / 60.0,
                  "trips_completed_veh": W.analyzer.trip_completed / sc.traffic.mean_pcu}}))  # UXsim counts PCU
"""

NO_HAZARDS = {"hazards": {"incidents": {"rate_per_lane_km_day": 0.0}, "rain": {"episodes_per_day": 0.0, "episodes": []}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default=str(REPO / "scenarios" / "quickstart.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as out:
            ours = run_measured(CITYTWIN.format(scenario=args.scenario, overrides=NO_HAZARDS, out=out, seed=seed))
        lean = run_measured(BARE.format(scenario=args.scenario, overrides=NO_HAZARDS, seed=seed, logging=0))
        default = run_measured(BARE.format(scenario=args.scenario, overrides=NO_HAZARDS, seed=seed, logging=1))
        runs.append({"seed": seed, "citytwin": ours, "uxsim_no_vehicle_log": lean, "uxsim_default": default,
                     "time_ratio": ours["work_s"] / lean["work_s"],
                     "travel_time_diff_pct": 100 * (ours["mean_travel_time_min"] / lean["mean_travel_time_min"] - 1)})
        print(f"seed {seed}: citytwin {ours['work_s']:.2f} s, bare UXsim {lean['work_s']:.2f} s "
              f"(with vehicle logs {default['work_s']:.2f} s), ratio {runs[-1]['time_ratio']:.2f}, "
              f"mean travel time {ours['mean_travel_time_min']:.3f} vs {lean['mean_travel_time_min']:.3f} min")
    write("engine_parity", {
        "scenario": args.scenario.replace(str(REPO) + "/", ""), "hazards": "off (bare UXsim has none)",
        "median_time_ratio": statistics.median(r["time_ratio"] for r in runs),
        "max_abs_travel_time_diff_pct": max(abs(r["travel_time_diff_pct"]) for r in runs),
        "targets": {"time_ratio": "<= 1.3", "travel_time_diff_pct": "within 2"},
        "runs": runs})


if __name__ == "__main__":
    main()
