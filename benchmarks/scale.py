"""Scale: a synthetic city of 5,074 links with 500,000 vehicle trips over 24 h.

Three measurements, each in a fresh process: `citytwin run` exactly as a user runs it (wall time
including start-up, hazards and the report); then, side by side on the same input, citytwin's run
without report and hazards (the work only) and bare UXsim in C++ mode on the same network, demand
and engine seed. Bare UXsim runs without vehicle logs:
with its default per-vehicle logging this day would need about 37 GB (five arrays of one value per
time step reserved for each of 53,000 platoons). Targets: ≤ 2 minutes and ≤ 6 GB for citytwin.

    .venv/bin/python benchmarks/scale.py
"""

from __future__ import annotations

import tempfile

from _common import REPO, run_measured, write
from engine_parity import BARE, CITYTWIN, NO_HAZARDS

SCENARIO = str(REPO / "benchmarks" / "scenarios" / "scale_5k_links.yaml")

CLI = """
import json, sys
from citytwin.twin.cli import main
code = main(["run", {scenario!r}, "--out", {out!r}, "--quiet"])
print(json.dumps({{"exit_code": code}}))
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        cli = run_measured(CLI.format(scenario=SCENARIO, out=out))
    with tempfile.TemporaryDirectory() as out:
        work = run_measured(CITYTWIN.format(scenario=SCENARIO, overrides=NO_HAZARDS, out=out, seed=1))
    bare = run_measured(BARE.format(scenario=SCENARIO, overrides=NO_HAZARDS, seed=1, logging=0))
    print(f"citytwin run (CLI, with report): {cli['wall_s']:.1f} s, peak {cli['peak_rss_gb']:.2f} GB")
    for label, r in (("citytwin, no report, no hazards", work), ("bare UXsim, no vehicle log", bare)):
        print(f"{label}: work {r['work_s']:.1f} s, peak {r['peak_rss_gb']:.2f} GB, "
              f"mean travel time {r['mean_travel_time_min']:.3f} min")
    write("scale", {"scenario": "benchmarks/scenarios/scale_5k_links.yaml",
                    "city": {"links": 5074, "nodes": 1320, "road_km": 635.9},
                    "trips_per_day": 500_000, "targets": {"wall_s": "<= 120", "peak_rss_gb": "<= 6"},
                    "citytwin_cli": cli, "citytwin_no_report_no_hazards": work, "uxsim_no_vehicle_log": bare,
                    "time_ratio": work["work_s"] / bare["work_s"],
                    "travel_time_diff_pct": 100 * (work["mean_travel_time_min"] / bare["mean_travel_time_min"] - 1)})


if __name__ == "__main__":
    main()
