"""Citizens at scale: a simulated 24 h day with 1,000,000 residents, their trips and their reporting.

Input: scenarios/danang_pilot.yaml (the Đà Nẵng field-reporting pilot on the Hải Châu OSM extract)
with 1,000,000 residents and a 24 h run. Four measurements, each in a fresh process:

1. `citytwin run` as a user runs it (the CLI, with the HTML report): wall time including start-up,
   and peak resident memory.
2. The same run without the report (`run_scenario(..., write_report=False)`): the work time and peak
   memory, with the network build timed apart. This run also dumps the vehicle platoons the residents
   put on the roads, for 4.
3. The same run under cProfile, summarised into phases (METHOD below says how); and once more with a
   higher reporting propensity (--stress-propensity), to show how the reporting side grows.
4. The peer on the same input: bare UXsim (C++ mode) running exactly the platoons of 2 on the same
   network with the same engine seed, without and with UXsim's default per-vehicle log. What citytwin
   costs beyond it is the people: population, trips, problems, reports, the IOC and the ledger.

Targets: ≤ 10 minutes and ≤ 12 GB for the CLI run on 2 cores.

    .venv/bin/python benchmarks/citizens_1m.py [--scenario scenarios/danang_pilot.yaml] [--residents 1000000]
                                               [--stress-propensity 0.02]
"""

from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import yaml

from _common import OUT, REPO, run_measured, write

PILOT = REPO / "scenarios" / "danang_pilot.yaml"
# Until the pilot scenario exists: its equivalent on the same OSM extract.
FALLBACK = {
    "name": "danang_pilot_equivalent", "seed": 11, "duration": "24h",
    "city": {"name": "Đà Nẵng (Hải Châu core)", "network": {
        "source": "osm_file", "path": str(REPO.parent / "shared" / "data" / "osm" / "danang_haichau.osm"),
        "consolidate_m": 15, "min_link_m": 25, "if_missing": "synthetic"}},
    "demand": {"kind": "agents", "network_share": 0.05},
    "population": {"residents": 1_000_000},
    "field_reporting": {},
}
TARGETS = {"wall_s": 600.0, "peak_rss_gb": 12.0}

CLI = """
import json
from citytwin.twin.cli import main
code = main(["run", {scenario!r}, "--out", {out!r}, "--quiet"])
print(json.dumps({{"exit_code": code}}))
"""

# Without the report; with `profile`, under cProfile (stats to `pstats_path`); otherwise the platoons the
# residents loaded are saved to `platoons` for bare UXsim.
CITYTWIN = """
import json, time
import numpy as np
import pyarrow.parquet as pq
from citytwin.twin import run as run_module
from citytwin.twin.scenario import load_scenario

sc = load_scenario({scenario!r}, overrides={overrides!r})
batches, city_s, engine_s = [], [], []
_add, _build = run_module.TrafficRecorder.add, run_module.build_city
_advance = run_module.UXsimEngine.advance_to

def add(self, trips):
    batches.append((trips.origin, trips.dest, trips.depart_t))
    _add(self, trips)

def build(spec):
    t0 = time.perf_counter()
    city = _build(spec)
    city_s.append(time.perf_counter() - t0)
    return city

def advance_to(self, t):
    t0 = time.perf_counter()
    _advance(self, t)
    engine_s.append(time.perf_counter() - t0)

run_module.TrafficRecorder.add, run_module.build_city, run_module.UXsimEngine.advance_to = add, build, advance_to
t, cpu = time.perf_counter(), time.process_time()
if {profile}:
    import cProfile
    profiler = cProfile.Profile()
    r = profiler.runcall(run_module.run_scenario, sc, {out!r}, write_report=False)
    work, cpu = time.perf_counter() - t, time.process_time() - cpu
    profiler.dump_stats({pstats_path!r})
else:
    r = run_module.run_scenario(sc, {out!r}, write_report=False)
    work, cpu = time.perf_counter() - t, time.process_time() - cpu
    origin, dest, depart = (np.concatenate(c) for c in zip(*batches))
    np.savez({platoons!r}, origin=origin, dest=dest, depart_t=depart)
kinds = pq.read_table(r.ledger_path, columns=["kind"])["kind"].value_counts().to_pylist()
kinds = {{k["values"]: k["counts"] for k in kinds}}
k, fr = r.kpis["kpis"], (r.kpis.get("field_reporting") or {{}}).get("kpis", {{}})
value = lambda d, key: d[key]["value"] if key in d else None
print(json.dumps({{
    "work_s": work, "work_cpu_s": cpu, "network_build_s": sum(city_s), "work_without_network_s": work - sum(city_s),
    "engine_stepping_s": sum(engine_s),
    "residents": sc.population.residents, "person_trips": value(k, "person_trips_per_day"),
    "platoons": int(sum(len(b[0]) for b in batches)),
    "platoons_completed": kinds.get("trip.end", 0), "platoons_unfinished": kinds.get("trip.unfinished", 0),
    "vehicle_trips_completed": value(k, "trips_completed"),
    "mean_travel_time_min": value(k, "mean_travel_time"),
    "problems": value(fr, "problems"), "reports": value(fr, "reports"), "calls": value(fr, "calls"),
    "crew_trips": value(fr, "crew_trips"),
    "ledger_rows": sum(kinds.values()), "ledger_mb": r.ledger_path.stat().st_size / 1e6,
    "links": len(r.city.links), "nodes": len(r.city.nodes)}}))
"""

BARE = """
import json, time
import numpy as np
from uxsim import World
from citytwin.twin.scenario import load_scenario
from citytwin.twin.city import build_city
from citytwin.twin.run import seed_streams
from citytwin.twin.traffic.uxsim_engine import add_city
sc = load_scenario({scenario!r}, overrides={overrides!r})
t = time.perf_counter()
city = build_city(sc.city)
city_s = time.perf_counter() - t
_, _, engine_seed = seed_streams(sc.seed)
p = np.load({platoons!r})
names = [str(n) for n in city.nodes.ids]
step = sc.traffic.platoon_pcu * sc.traffic.reaction_time_s
marks, cpu = [time.perf_counter()], time.process_time()
W = World(deltan=sc.traffic.platoon_pcu, reaction_time=sc.traffic.reaction_time_s, duo_update_time=sc.traffic.route_update,
          duo_noise=sc.traffic.route_noise, tmax=sc.duration + step, random_seed=engine_seed, print_mode=0,
          vehicle_logging_timestep_interval={logging}, cpp=True)
add_city(W, city)
marks.append(time.perf_counter())
for o, d, dep in zip(p["origin"].tolist(), p["dest"].tolist(), p["depart_t"].tolist()):
    W.addVehicle(names[o], names[d], dep)
marks.append(time.perf_counter())
W.exec_simulation()
marks.append(time.perf_counter())
tt = W.analyzer.average_travel_time
marks.append(time.perf_counter())
print(json.dumps({{"work_s": marks[-1] - marks[0], "work_cpu_s": time.process_time() - cpu, "network_build_s": city_s, "world_s": marks[1] - marks[0],
                  "add_vehicles_s": marks[2] - marks[1], "exec_simulation_s": marks[3] - marks[2],
                  "analysis_s": marks[4] - marks[3], "platoons": len(p["origin"]),
                  "platoons_completed": W.analyzer.trip_completed / W.DELTAN, "mean_travel_time_min": tt / 60.0}}))
"""

# --- where the time goes --------------------------------------------------------------------------------

PHASES = (
    "set-up: city network and engine",
    "population synthesis",
    "daily trips",
    "platoon loading",
    "traffic engine stepping",
    "traffic read-back (finished trips, link snapshots)",
    "problems (ground truth)",
    "hazards (incidents, rain, floods)",
    "exposure, noticing and reporting (citizens)",
    "organisation and IOC port",
    "ledger writing",
    "KPIs (ledger read-back and KPI functions)",
    "SimPy event loop",
    "imports during the run",
    "other (run glue)",
)

METHOD = (
    "cProfile of run_scenario (no report). Every function defined in citytwin is given a phase by its module "
    "(and, in run.py, uxsim_engine.py, activities.py, model.py and ledger.py, by its name); SimPy's own "
    "functions are the 'SimPy event loop'; module bodies and importlib are 'imports during the run'. Every other "
    "function (NumPy, Arrow, pandas, SciPy, UXsim's wrapper and C++ core, builtins) takes the phase of its "
    "callers, in proportion to the cumulative time each caller spent in it (gprof's assumption), so the "
    "innermost citytwin function on the stack decides. A phase's seconds are the sum of its functions' own "
    "(tottime) seconds; the phases add up to the profiled run. cProfile slows Python-heavy phases more than "
    "the C++ engine, so shares of Python phases are upper bounds.")

# Functions named here (file suffix, function name) take this phase regardless of their module's.
_BY_NAME = {
    ("citytwin/twin/run.py", "add"): "platoon loading",
    ("citytwin/twin/traffic/uxsim_engine.py", "add_trips"): "platoon loading",
    ("citytwin/twin/city/paths.py", "od_free_flow"): "platoon loading",
    ("citytwin/agents/activities.py", "vehicle_platoons"): "platoon loading",
    ("citytwin/twin/traffic/uxsim_engine.py", "advance_to"): "traffic engine stepping",
    ("citytwin/twin/run.py", "compute_kpis"): "KPIs (ledger read-back and KPI functions)",
    ("citytwin/twin/ledger.py", "table"): "KPIs (ledger read-back and KPI functions)",
    ("citytwin/twin/ledger.py", "read_ledger"): "KPIs (ledger read-back and KPI functions)",
    ("citytwin/twin/ledger.py", "events"): "KPIs (ledger read-back and KPI functions)",
    ("citytwin/agents/model.py", "__init__"): "population synthesis",
    ("citytwin/agents/model.py", "_days"): "daily trips",
    ("citytwin/agents/model.py", "_load_day"): "daily trips",
}
_READ_BACK = {"process", "finish", "record_finished", "record_unfinished", "_trips", "record_links", "record_flows",
              "finished_trips", "unfinished_trips", "_results", "link_snapshot", "counts_at", "link_state"}
_SET_UP = {"__init__", "add_city", "_signal_groups", "close", "_return_freed_heap"}
# Module prefixes (relative to the repository) and their phase; the first that matches wins.
_BY_MODULE = (
    ("citytwin/twin/city/", "set-up: city network and engine"),
    ("citytwin/agents/population.py", "population synthesis"),
    ("citytwin/agents/activities.py", "daily trips"),
    ("citytwin/agents/problems.py", "problems (ground truth)"),
    ("citytwin/twin/hazards.py", "hazards (incidents, rain, floods)"),
    ("citytwin/agents/exposure.py", "exposure, noticing and reporting (citizens)"),
    ("citytwin/agents/citizens.py", "exposure, noticing and reporting (citizens)"),
    ("citytwin/agents/organisation.py", "organisation and IOC port"),
    ("citytwin/twin/ports/", "organisation and IOC port"),
    ("citytwin/ioc/", "organisation and IOC port"),
    ("citytwin/twin/ledger.py", "ledger writing"),
    ("citytwin/twin/kpi/", "KPIs (ledger read-back and KPI functions)"),
    ("citytwin/", "other (run glue)"),
)


def _where(filename: str) -> str:
    """A function's file relative to the repository or to site-packages ("" for builtins)."""
    for root in (sysconfig.get_paths()["purelib"] + "/", str(REPO) + "/"):  # the venv lies inside the repo
        if filename.startswith(root):
            return filename[len(root):]
    return filename


def classify(func: tuple[str, int, str]) -> str | None:
    """The phase of a function, or None when it takes its callers' phase."""
    filename, _, name = func
    where = _where(filename)
    if name == "<module>" or where.startswith("<frozen importlib"):
        return "imports during the run"
    if where.startswith("simpy/"):
        return "SimPy event loop"
    if not where.startswith("citytwin/"):
        return None
    for (suffix, fname), phase in _BY_NAME.items():
        if where == suffix and name == fname:
            return phase
    if where in ("citytwin/twin/run.py", "citytwin/twin/traffic/uxsim_engine.py") and name in _READ_BACK:
        return "traffic read-back (finished trips, link snapshots)"
    if where == "citytwin/twin/traffic/uxsim_engine.py":
        # restrictions and link travel times take the phase of whoever asked (hazards, problems, crews)
        return "set-up: city network and engine" if name in _SET_UP else None
    return next((phase for prefix, phase in _BY_MODULE if where.startswith(prefix)), "other (run glue)")


def phase_summary(stats: dict) -> dict[str, float]:
    """Seconds per phase: each function's own time split over the phases of the stacks it ran in."""
    label = {f: classify(f) for f in stats}
    share: dict = {f: {label[f]: 1.0} for f in stats if label[f] is not None}
    open_ = [f for f in stats if label[f] is None]
    for f in open_:
        share[f] = {"other (run glue)": 1.0}
    for _ in range(200):  # a fixed point; recursion among library functions converges geometrically
        changed = 0.0
        for f in open_:
            callers = stats[f][4]
            weights = {c: (v[3] or v[1]) for c, v in callers.items() if c in share}
            total = sum(weights.values())
            if not total:
                continue
            mix: dict[str, float] = {}
            for c, w in weights.items():
                for phase, s in share[c].items():
                    mix[phase] = mix.get(phase, 0.0) + s * w / total
            changed = max(changed, sum(abs(mix.get(p, 0.0) - share[f].get(p, 0.0)) for p in set(mix) | set(share[f])))
            share[f] = mix
        if changed < 1e-9:
            break
    seconds = dict.fromkeys(PHASES, 0.0)
    for f, (_, _, tottime, _, _) in stats.items():
        for phase, s in share[f].items():
            seconds[phase] += tottime * s
    return seconds


def _name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    return name if filename == "~" else f"{_where(filename)}:{line}({name})"


def profile_figures(path: Path) -> dict:
    stats = pstats.Stats(str(path)).stats
    seconds = phase_summary(stats)
    total = sum(seconds.values())
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:20]
    return {
        "method": METHOD,
        "profiled_total_s": round(total, 2),
        "phases": [{"phase": p, "seconds": round(s, 2), "share_pct": round(100 * s / total, 1)}
                   for p, s in seconds.items()],
        "top_functions_by_own_time": [{"function": _name(f), "calls": v[1], "own_s": round(v[2], 3),
                                       "cumulative_s": round(v[3], 3)} for f, v in top],
    }


# --- the benchmark ------------------------------------------------------------------------------------

PEOPLE = ("population synthesis", "daily trips", "platoon loading", "problems (ground truth)",
          "exposure, noticing and reporting (citizens)", "organisation and IOC port")


def _code_version() -> dict:
    """The commit measured, and the files that differed from it."""
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.rstrip()
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "modified": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]}


def _people_s(profile: dict) -> float:
    return round(sum(r["seconds"] for r in profile["phases"] if r["phase"] in PEOPLE), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", type=Path, default=PILOT)
    parser.add_argument("--residents", type=int, default=1_000_000)
    parser.add_argument("--stress-propensity", type=float, default=0.02, metavar="P",
                        help="also profile the day with this mean reporting propensity (default: the schema's "
                             "default, tens of times the pilot's); 0 to skip")
    args = parser.parse_args()
    overrides = {"population": {"residents": args.residents}, "duration": "24h"}
    stress = {**overrides, "field_reporting": {"citizens": {"propensity_mean": args.stress_propensity}}}
    OUT.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]  # other work on the machine shows in the wall times
    stats_path, stress_path = OUT / "citizens_1m.pstats", OUT / "citizens_1m_stress.pstats"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scenario = args.scenario.resolve()
        if not scenario.is_file():
            print(f"{scenario} not found: using its equivalent on the same OSM extract", file=sys.stderr)
            scenario = tmp / "pilot_equivalent.yaml"
            scenario.write_text(yaml.safe_dump(FALLBACK, allow_unicode=True), encoding="utf-8")
        # The CLI reads a file: the overrides as a scenario that extends the input.
        cli_scenario = tmp / "citizens_1m.yaml"
        cli_scenario.write_text(yaml.safe_dump({"extends": str(scenario), **overrides}), encoding="utf-8")
        platoons = tmp / "platoons.npz"
        common = {"scenario": str(scenario), "platoons": str(platoons)}

        cli = run_measured(CLI.format(scenario=str(cli_scenario), out=str(tmp / "cli")))
        print(f"citytwin run (CLI, with report): {cli['wall_s']:.1f} s wall, peak {cli['peak_rss_gb']:.2f} GB")
        work = run_measured(CITYTWIN.format(**common, overrides=overrides, out=str(tmp / "work"), profile=False,
                                            pstats_path=""))
        print(f"citytwin, no report: work {work['work_s']:.1f} s (network {work['network_build_s']:.1f} s, engine "
              f"{work['engine_stepping_s']:.1f} s), peak {work['peak_rss_gb']:.2f} GB; {work['platoons']:,} "
              f"platoons, {work['reports']} reports")
        profiled = run_measured(CITYTWIN.format(**common, overrides=overrides, out=str(tmp / "profiled"), profile=True,
                                                pstats_path=str(stats_path)))
        print(f"citytwin under cProfile: {profiled['work_s']:.1f} s")
        stressed = None
        if args.stress_propensity > 0:
            stressed = run_measured(CITYTWIN.format(**common, overrides=stress, out=str(tmp / "stress"), profile=True,
                                                    pstats_path=str(stress_path)))
            print(f"citytwin under cProfile, propensity {args.stress_propensity}: {stressed['work_s']:.1f} s, "
                  f"{stressed['reports']} reports")
        bare = run_measured(BARE.format(**common, overrides=overrides, logging=0))
        bare_log = run_measured(BARE.format(**common, overrides=overrides, logging=1))
        for label, r in (("bare UXsim, no vehicle log", bare), ("bare UXsim, default vehicle log", bare_log)):
            print(f"{label}: work {r['work_s']:.1f} s (simulation {r['exec_simulation_s']:.1f} s), peak "
                  f"{r['peak_rss_gb']:.2f} GB, mean travel time {r['mean_travel_time_min']:.4f} min")

    profile = profile_figures(stats_path)
    profile["profiled_work_s"] = round(profiled["work_s"], 2)
    heavy = profile_figures(stress_path) if stressed is not None else None
    print(f"where the time goes (cProfile): pilot ({profile['profiled_total_s']:.1f} s)"
          + (f", propensity {args.stress_propensity} ({heavy['profiled_total_s']:.1f} s)" if heavy else ""))
    for k, row in enumerate(profile["phases"]):
        other = heavy["phases"][k] if heavy else None
        print(f"  {row['phase']:<52} {row['seconds']:7.2f} s {row['share_pct']:5.1f} %"
              + (f"   {other['seconds']:7.2f} s {other['share_pct']:5.1f} %" if other else ""))
    figures = {
        "scenario": str(scenario).replace(str(REPO) + "/", "") if args.scenario.resolve().is_file()
        else "equivalent of scenarios/danang_pilot.yaml (not found)",
        "overrides": overrides,
        "command": "python benchmarks/citizens_1m.py" + ("" if args.residents == 1_000_000 else
                                                          f" --residents {args.residents}"),
        "targets": {"wall_s": "<= 600", "peak_rss_gb": "<= 12", "applies_to": "citytwin_cli"},
        "targets_met": {"wall_s": cli["wall_s"] <= TARGETS["wall_s"],
                        "peak_rss_gb": cli["peak_rss_gb"] <= TARGETS["peak_rss_gb"]},
        "citytwin_cli": cli, "citytwin_no_report": work, "uxsim_no_vehicle_log": bare, "uxsim_default": bare_log,
        # like for like: both sides without building the network from OSM (the same loader on both)
        "time_ratio_to_uxsim_no_log": work["work_without_network_s"] / bare["work_s"],
        "people_side_phases": list(PEOPLE), "people_side_profiled_s": _people_s(profile),
        "profile": profile, "pstats": str(stats_path.relative_to(REPO)),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "code": _code_version(),
    }
    if heavy is not None:
        heavy["profiled_work_s"] = round(stressed["work_s"], 2)
        figures["reporting_stress"] = {"overrides": stress, "run": stressed, "people_side_profiled_s": _people_s(heavy),
                                       "profile": heavy, "pstats": str(stress_path.relative_to(REPO))}
    write("citizens_1m", figures)


if __name__ == "__main__":
    main()
